"""Shared fixtures: a real redis-server per test that asks for one."""

from __future__ import annotations

import gc
import os
import signal
from collections.abc import Iterator
from typing import Any

import pytest
from twisted.logger import globalLogPublisher

from gateway.localredis import RedisServer
from gateway.processes import GatewayProcess


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


@pytest.fixture
def nodes() -> Iterator[list[GatewayProcess]]:
    """Gateway processes a test starts (appended to this list); stopped afterwards by PID."""
    started: list[GatewayProcess] = []
    yield started
    for node in started:
        if node.process.returncode is None:
            os.kill(node.pid, signal.SIGCONT)  # a test may have stopped (paused) it
        node.stop()
