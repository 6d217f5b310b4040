"""The redis-server fixture really starts and stops a server."""

from __future__ import annotations

import os

import pytest
import redis

from gateway.localredis import RedisServer


@pytest.mark.integration
def test_fixture_serves_and_stops_by_pid(redis_server: RedisServer) -> None:
    """The fixture's server answers PING, and stop() leaves no process behind."""
    client = redis.Redis.from_url(redis_server.url)
    assert client.ping()
    client.close()
    assert redis_server.proc is not None
    pid = redis_server.proc.pid
    redis_server.stop()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


@pytest.mark.integration
def test_server_restarts_on_the_same_port(redis_server: RedisServer) -> None:
    """stop() then start() brings the same address back, as outage tests need."""
    redis_server.stop()
    redis_server.start()
    client = redis.Redis.from_url(redis_server.url)
    assert client.ping()
    client.close()
