"""Test helpers for the Sentinel and Cluster end-to-end tests: gateway nodes started side
by side, a herd running in the background, the time until every node is in a mode."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack
from typing import Any

from gateway.processes import (
    ExampleBackend,
    GatewayProcess,
    ManagedProcess,
    call_once,
    example_backend_argv,
    gateway_argv,
    gateway_cli,
    herd_argv,
    start_process,
    wait_for_redis_mode,
)

STARTUP_TIMEOUT = 30.0  # several children importing Twisted at once on 2 busy cores


def spawn_backend(stack: ExitStack, delay: float) -> ManagedProcess:
    """Start an example backend without waiting (:func:`backend_ready` waits)."""
    return stack.enter_context(start_process(example_backend_argv(delay=delay)))


def backend_ready(process: ManagedProcess) -> ExampleBackend:
    return ExampleBackend.from_process(process, timeout=STARTUP_TIMEOUT)


def start_gateways(
    stack: ExitStack, count: int, *, backend: str, redis: str, prefix: str
) -> list[GatewayProcess]:
    """``count`` ``gateway serve`` nodes started side by side; ``stack`` stops them by PID."""
    processes = [
        stack.enter_context(
            start_process(
                gateway_argv(backend=backend, redis=redis, node_id=f"{prefix}-{i}", admin=True)
            )
        )
        for i in range(count)
    ]
    nodes = [GatewayProcess.from_process(p, timeout=STARTUP_TIMEOUT) for p in processes]
    for node in nodes:  # a GatewayProcess stops its process with the longer drain timeout
        stack.callback(node.stop)
    return nodes


def start_herd(stack: ExitStack, nodes: Sequence[GatewayProcess], *args: str) -> ManagedProcess:
    """``python -m clients.herd ... --json`` against ``nodes``, running in the background."""
    return stack.enter_context(start_process(herd_argv([n.address for n in nodes], *args)))


def herd_summary(herd: ManagedProcess, timeout: float = 60.0) -> dict[str, Any]:
    """Wait for a background herd to finish; its --json summary."""
    herd.proc.wait(timeout=timeout)
    herd.stop()  # joins the output readers
    assert herd.stdout_lines, f"the herd printed nothing: {herd.describe_output()}"
    summary: dict[str, Any] = json.loads(herd.stdout_lines[-1])
    return summary


def alerts_in_background(
    stack: ExitStack, nodes: Sequence[GatewayProcess], message: str
) -> list[Future[str]]:
    """One ``alert(message-i)`` per node, sent now from threads; futures of the replies."""
    pool = stack.enter_context(ThreadPoolExecutor(len(nodes)))
    return [
        pool.submit(call_once, node, lambda c, i=i: c.alert(f"{message}-{i}"))
        for i, node in enumerate(nodes)
    ]


def seconds_until_mode(
    nodes: Sequence[GatewayProcess], mode: str, since: float, timeout: float
) -> float:
    """Wait until every node's /healthz says ``mode``; seconds from ``since`` (monotonic)."""
    wait_for_redis_mode(nodes, mode, timeout=timeout)
    return time.monotonic() - since


def wait_for_status(
    url: str, accept: Callable[[dict[str, Any]], bool], timeout: float = 10.0
) -> dict[str, Any]:
    """``gateway status --redis URL --json --watch`` until a report ``accept`` takes."""
    argv = gateway_cli("status", "--redis", url, "--json", "--watch")
    with start_process(argv) as status:
        deadline = time.monotonic() + timeout
        seen = 0
        while time.monotonic() < deadline:
            lines = status.stdout_lines[seen:]
            seen += len(lines)
            for line in lines:
                report: dict[str, Any] = json.loads(line)
                if accept(report):
                    return report
            if status.returncode is not None:
                raise AssertionError(f"gateway status exited: {status.describe_output()}")
            time.sleep(0.05)
        raise AssertionError(f"no accepted status in {timeout}s: {status.describe_output()}")
