"""Shared plumbing for the process-level benchmarks: /proc readings, the herd driver as a
subprocess, gateway configs and counters, markdown tables.

Nothing here asserts on timings: benchmarks report, they do not pass or fail.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

CLK_TCK = os.sysconf("SC_CLK_TCK")
CLIENT_NOTE = (
    "The load driver (one Python/Twisted process: clients.herd, or benchmarks.loadgen in the"
    " cluster benchmark) runs on the same cores as the processes it measures, so on a 2-core"
    " box every figure is also capped by the client; compare rows with each other, not with"
    " other machines."
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


# ---------------------------------------------------------------------------------------------
# The herd driver, run as its own process (as a real client would be)
# ---------------------------------------------------------------------------------------------


@dataclass
class HerdRun:
    """One ``python -m clients.herd --json`` run and the process CPU spent while it ran."""

    command: str  # as printed in the reports, with <names> for the ephemeral ports
    summary: dict[str, Any]
    cpu_s: dict[str, float]  # name -> CPU seconds used by that watched process during the run
    backend_calls: int | None = None  # alertSupervisor calls the backend received in the run

    @property
    def calls(self) -> int:
        return int(self.summary["client_calls"])

    def cpu_per_1k(self, name: str) -> float:
        return 1000 * self.cpu_s[name] / self.calls if self.calls else 0.0

    def row(self) -> dict[str, Any]:
        """The figures the reports show for one run."""
        s = self.summary
        out: dict[str, Any] = {
            "command": self.command,
            "client_calls": s["client_calls"],
            "ok": s["ok"],
            "errors": s["errors"] + s["wrong_replies"],
            "calls_per_s": s["calls_per_s"],
            "p50_ms": s["latency_ms"]["p50"],
            "p99_ms": s["latency_ms"]["p99"],
            "elapsed_s": s["elapsed_s"],
        }
        for name in self.cpu_s:
            out[f"{name}_cpu_s_per_1k"] = round(self.cpu_per_1k(name), 4)
        if self.backend_calls is not None:
            out["backend_calls"] = self.backend_calls
        return out


def herd_command(
    target_names: Sequence[str], clients: int, keys: int, rounds: int, timeout: float = 30.0
) -> list[str]:
    args = ["--targets", ",".join(target_names), "--clients", str(clients)]
    args += ["--keys", str(keys), "--rounds", str(rounds), "--timeout", str(timeout), "--json"]
    return ["python", "-m", "clients.herd", *args]


def run_herd(
    targets: Mapping[str, str],
    clients: int,
    keys: int,
    rounds: int,
    *,
    watch: Mapping[str, int] | None = None,
    backend: str | None = None,
    timeout: float = 30.0,
    limit: float = 120.0,
) -> HerdRun:
    """Run the herd against ``targets`` (display name -> HOST:PORT) in a child process.

    ``watch`` maps names to PIDs whose CPU time is read before and after; ``backend``
    (HOST:PORT of an example backend) adds the backend calls made during the run.
    ``timeout`` is the herd's per-call timeout, ``limit`` bounds the whole run (seconds).
    """
    shown = herd_command(list(targets), clients, keys, rounds, timeout)
    argv = [
        sys.executable,
        *herd_command(list(targets.values()), clients, keys, rounds, timeout)[1:],
    ]
    watch = dict(watch or {})
    stats_before = backend_stats(backend) if backend else None
    cpu_before = {name: cpu_seconds(pid) for name, pid in watch.items()}
    done = subprocess.run(argv, capture_output=True, text=True, timeout=limit)
    cpu_after = {name: cpu_seconds(pid) for name, pid in watch.items()}
    if not done.stdout.strip():
        raise RuntimeError(f"herd printed nothing (exit {done.returncode}): {done.stderr[-2000:]}")
    run = HerdRun(
        command=" ".join(shown),
        summary=json.loads(done.stdout),
        cpu_s={name: cpu_after[name] - cpu_before[name] for name in watch},
    )
    if backend and stats_before is not None:
        after = backend_stats(backend)
        run.backend_calls = after["alertSupervisor"] - stats_before["alertSupervisor"]
    return run


def median_run(runs: Sequence[HerdRun]) -> HerdRun:
    """The run with the median throughput (the middle one of an odd count)."""
    ordered = sorted(runs, key=lambda r: r.summary["calls_per_s"])
    return ordered[(len(ordered) - 1) // 2]


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


def write_method_config(directory: Path, name: str, **policy: str | float) -> Path:
    """A config file holding only ``[methods.alertSupervisor]`` (listen, backend and node id
    come from the command line)."""
    lines = ["[methods.alertSupervisor]"]
    for key, value in policy.items():
        lines.append(f"{key} = {json.dumps(value)}")
    path = directory / f"{name}.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


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


def spread(values: Sequence[float]) -> str:
    """Every run's throughput, in run order: how much to trust the median."""
    return " ".join(f"{v:,.0f}" for v in values)


def ratio(numerator: float, denominator: float) -> float | None:
    return round(numerator / denominator, 3) if denominator else None


def load_main(
    module: str,
    doc: str | None,
    run: Any,
    render: Any,
    argv: Sequence[str] | None,
    repeat_help: str = "runs per side (median shown)",
) -> int:
    """The shared command line of the load benchmarks (proxy, nginx baseline)."""
    import argparse

    parser = argparse.ArgumentParser(prog=f"python -m {module}", description=doc)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--clients", type=int, default=100, help="concurrent connections")
    parser.add_argument("--rounds", type=int, default=50, help="calls per client per run")
    parser.add_argument("--repeat", type=int, default=5, help=repeat_help)
    args = parser.parse_args(argv)
    stop_children_on_sigterm()
    if args.clients < 1 or args.rounds < 1 or args.repeat < 1:
        parser.error("need --clients, --rounds and --repeat >= 1")
    command = f"python -m {module}" + "".join(
        f" --{name} {getattr(args, name)}" for name in ("clients", "rounds", "repeat")
    )
    result = run(args.clients, args.rounds, args.repeat, command)
    print(json.dumps(result, sort_keys=True) if args.json else render(result), flush=True)
    return 0
