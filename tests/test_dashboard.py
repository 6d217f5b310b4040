"""``gateway dashboard``: the server side (the page itself is tested in Chromium, in
tests/test_ops_live.py)."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.defer import gatherResults
from twisted.internet.task import Clock

from gateway.cli import main
from gateway.dashboard.site import ASSETS, ReportCache, asset
from gateway.localredis import free_port
from gateway.processes import gateway_cli, start_process


class Reads:
    """A report source that counts its (blocking, slow) reads."""

    def __init__(self, fail: bool = False) -> None:
        self.count = 0
        self.fail = fail

    def __call__(self) -> dict[str, Any]:
        self.count += 1
        time.sleep(0.05)  # runs in a thread: long enough for requests to pile up
        if self.fail:
            raise RuntimeError("redis said no")
        return {"read": self.count}


@pytest_twisted.ensureDeferred
async def test_polls_share_one_read_per_interval() -> None:
    """Concurrent requests join one read; requests within min_interval get its bytes; the
    next read happens once the interval has passed."""
    reads, clock = Reads(), Clock()
    cache = ReportCache(reads, clock, min_interval=1.0)
    bodies = await gatherResults([cache.get() for _ in range(5)])
    assert reads.count == 1 and set(bodies) == {b'{"read": 1}'}
    clock.advance(0.5)
    assert await cache.get() == b'{"read": 1}' and reads.count == 1
    clock.advance(0.6)
    assert await cache.get() == b'{"read": 2}'


@pytest_twisted.ensureDeferred
async def test_failed_reads_are_not_cached() -> None:
    """A read that fails reaches every waiting request, and the next request reads again."""
    reads, clock = Reads(fail=True), Clock()
    cache = ReportCache(reads, clock, min_interval=10.0)
    with pytest.raises(RuntimeError):
        await cache.get()
    reads.fail = False
    assert await cache.get() == b'{"read": 2}'


def test_assets_are_packaged_and_self_contained() -> None:
    """The page and its assets ship in the package and reference nothing off the gateway
    (no http(s):// URL, no CDN), and the page uses no inline script (CSP 'self')."""
    for name in ASSETS:
        text = asset(name).decode()
        assert "http://" not in text.replace("http://www.w3.org/2000/svg", "")
        assert "https://" not in text and "//cdn" not in text
    page = asset("index.html").decode()
    assert '<script src="dashboard.js"' in page and "<script>" not in page


def test_unreachable_redis_is_a_503_with_one_line_and_no_password() -> None:
    """The page is served whatever Redis does; api/status answers 503 with the reason (never
    the password); /healthz is 200 while the dashboard serves."""
    url = f"redis://:hunter2@127.0.0.1:{free_port()}/0"
    with start_process(gateway_cli("dashboard", "--redis", url, "--listen", "127.0.0.1:0")) as p:
        base = p.wait_for_line(r"listening on (http://\S+)", timeout=20)[1]
        assert "hunter2" not in "\n".join(p.stdout_lines)
        with urllib.request.urlopen(base, timeout=5) as page:
            assert page.headers["content-security-policy"].startswith("default-src 'self'")
            assert b"<title>Gateway cluster</title>" in page.read()
        with pytest.raises(urllib.error.HTTPError) as failed:
            urllib.request.urlopen(base + "api/status", timeout=10)
        assert failed.value.code == 503
        error = json.loads(failed.value.read())["error"]
        assert (
            error.startswith("cannot read cluster state from redis://") and "hunter2" not in error
        )
        with urllib.request.urlopen(base + "healthz", timeout=5) as health:
            assert health.status == 200


def test_bad_arguments_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    """An unparsable --listen or Redis URL is one line on stderr and exit code 2."""
    for args in (["--listen", "nope"], ["--redis", "http://x"]):
        assert main(["dashboard", "--redis", "redis://127.0.0.1:1/0", *args]) == 2
        lines = capsys.readouterr().err.splitlines()
        assert len(lines) == 1 and lines[0].startswith("gateway dashboard: ")
