"""Shared fixtures: a real redis-server per test that asks for one."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from typing import Any

import pytest
from twisted.logger import globalLogPublisher

from gateway.localredis import RedisServer


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    """A fresh redis-server on a free loopback port, killed by PID afterwards."""
    server = RedisServer().start()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def no_unhandled_deferred_errors() -> Iterator[None]:
    """Fails the test if a Deferred with an unhandled failure is garbage-collected in it."""
    errors: list[dict[str, Any]] = []

    def observe(event: dict[str, Any]) -> None:
        if event.get("isError") or "log_failure" in event:
            errors.append(event)

    globalLogPublisher.addObserver(observe)
    try:
        yield
        gc.collect()
    finally:
        globalLogPublisher.removeObserver(observe)
    assert errors == []
