"""Shared plumbing for the process-level benchmarks: /proc readings, machine facts, gateway
counters, markdown tables.

Nothing here asserts on timings: benchmarks report, they do not pass or fail.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import signal
import time
import urllib.request
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

CLK_TCK = os.sysconf("SC_CLK_TCK")
CLIENT_NOTE = (
    "The load driver (benchmarks.loadgen, Python/Twisted, in the benchmark's own process) runs"
    " on the same cores as the processes it measures, so on a 2-core box every figure is also"
    " capped by the client; compare rows with each other, not with other machines."
)


def raise_fd_limit(wanted: int = 16_384) -> None:
    """Lift the soft open-files limit towards ``wanted`` (children inherit it): a herd of
    2000 clients needs one socket each, on the client and on the gateway side."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def stop_children_on_sigterm() -> None:
    """Turn SIGTERM (``benchmarks.run``'s time limit) into SystemExit, so the ``finally``
    blocks that stop this benchmark's redis, backends and gateways still run."""

    def handler(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, handler)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of ``pid`` so far (fields 14 and 15 of /proc/<pid>/stat)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    # The command name (field 2) may hold spaces or parentheses; fields restart after ")".
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def rss_kib(pid: int) -> int:
    """Resident set size of ``pid`` in KiB (VmRSS of /proc/<pid>/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_info() -> dict[str, Any]:
    """What the numbers were measured on."""
    import twisted

    return {
        "date_utc": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)),
        "cpu": cpu_model(),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "os": f"{platform.system()} {platform.release()}",
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "twisted": twisted.__version__,
        "load_avg_1m": round(os.getloadavg()[0], 2),  # other work on the box skews the figures
    }


def backend_stats(address: str) -> dict[str, int]:
    """The example backend's per-method arrival counters (its ``backendStats()`` call)."""
    from clients.calls import parse_target
    from clients.sync_client import ExampleClient

    host, port = parse_target(address, "backend")
    with ExampleClient(host, port, timeout=10.0) as client:
        return dict(client.backend_stats())


# ---------------------------------------------------------------------------------------------
# Gateway side
# ---------------------------------------------------------------------------------------------


def gateway_counters(admin_port: int) -> dict[str, float]:
    """The node's ``gateway_*`` counters and gauges from its admin /metrics page (no
    histograms), e.g. ``{"calls": 2000.0, "backend_calls": 1.0, "in_flight": 0.0, ...}``."""
    url = f"http://127.0.0.1:{admin_port}/metrics"
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    counters: dict[str, float] = {}
    for line in text.splitlines():
        if not line.startswith("gateway_") or "latency" in line or "redis_mode" in line:
            continue
        name, _, value = line.rpartition(" ")
        name = name.split("{", 1)[0].removeprefix("gateway_").removesuffix("_total")
        counters[name] = float(value)
    return counters


def gateway_health(admin_port: int) -> dict[str, Any]:
    """The node's /healthz JSON: listening, node_id, redis ("cluster"/"local"/...), in_flight."""
    with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/healthz", timeout=10) as response:
        health: dict[str, Any] = json.loads(response.read())
    return health


def counters_delta(before: Mapping[str, float], after: Mapping[str, float]) -> dict[str, int]:
    return {k: int(after[k] - before.get(k, 0.0)) for k in after if k != "in_flight"}


def wait_until(predicate: Any, timeout: float, interval: float = 0.05) -> bool:
    """Poll ``predicate()`` until true or ``timeout`` seconds passed; returns the last value."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


# ---------------------------------------------------------------------------------------------
# Output
# ---------------------------------------------------------------------------------------------


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub markdown table; numbers right-aligned."""

    def cell(value: Any) -> str:
        if value is None:
            return "-"
        if isinstance(value, float):
            return f"{value:,.3f}" if abs(value) < 10 else f"{value:,.1f}"
        if isinstance(value, int):
            return f"{value:,}"
        return str(value)

    cells = [[cell(v) for v in row] for row in rows]
    numeric = [
        all(isinstance(row[i], int | float) or row[i] is None for row in rows)
        for i in range(len(headers))
    ]
    lines = ["| " + " | ".join(headers) + " |"]
    lines.append("|" + "|".join("---:" if n else "---" for n in numeric) + "|")
    lines += ["| " + " | ".join(row) + " |" for row in cells]
    return "\n".join(lines)


def ratio(numerator: float, denominator: float) -> float | None:
    return round(numerator / denominator, 3) if denominator else None
