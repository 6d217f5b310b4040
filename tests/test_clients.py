"""The example client programs (``clients.alert``, ``clients.twisted_alert``) end to end."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.processes import ExampleBackend, start_example_backend

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def supervisor() -> Iterator[ExampleBackend]:
    backend = start_example_backend("supervisor")
    try:
        yield backend
    finally:
        backend.stop()


def run_client(module: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.integration
def test_alert_prints_the_reply(supervisor: ExampleBackend) -> None:
    """``clients.alert`` prints the ack and exits 0."""
    done = run_client("clients.alert", "--gateway", supervisor.address, "disk full")
    assert done.returncode == 0, done.stderr
    assert done.stdout == "ack:disk full\n"


@pytest.mark.integration
def test_alert_reports_busy_on_stderr_and_exits_1(supervisor: ExampleBackend) -> None:
    """A SupervisorBusy answer goes to stderr with exit status 1."""
    done = run_client("clients.alert", "--gateway", supervisor.address, "busy:x")
    assert done.returncode == 1
    assert done.stdout == ""
    assert "SupervisorBusy: busy:x" in done.stderr


@pytest.mark.integration
def test_twisted_alert_prints_every_reply(supervisor: ExampleBackend) -> None:
    """``clients.twisted_alert`` prints one line per message, in argument order, and exits 0."""
    done = run_client("clients.twisted_alert", "--gateway", supervisor.address, "a", "b")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["a -> ack:a", "b -> ack:b"]


def test_alert_rejects_a_bad_address() -> None:
    """An unparsable --gateway is a usage error (exit 2) naming the option."""
    done = run_client("clients.alert", "--gateway", "nowhere", "x")
    assert done.returncode == 2
    assert "--gateway" in done.stderr
