"""Shared fixtures: a real redis-server per test that asks for one."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from gateway.localredis import RedisServer


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    """A fresh redis-server on a free loopback port, killed by PID afterwards."""
    server = RedisServer().start()
    try:
        yield server
    finally:
        server.stop()
