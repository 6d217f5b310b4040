"""One gateway node against the backend it fronts: the same herd load, direct and through it.

    python -m benchmarks.proxy [--json] [--clients N] [--rounds R] [--repeat K]

Scenarios (every one against a fresh ``gateway example-backend``):

* passthrough, distinct keys (backend delay 0): the proxying cost alone.
* coalesce, distinct keys (delay 0): no call can join another, so this is coalescing's
  overhead (call key hashing, coordinator bookkeeping) on top of passthrough.
* hot key, coalesce (delay 50 ms): every client sends the same message each round, so all
  but one per round join the call in flight (the join path).
* hot key, cache ttl 60 (delay 0): after one unmeasured warm-up run fills the cache, every
  call is a cache hit (the cache-hit path).

Each scenario runs the direct and the gateway herd alternately ``--repeat`` times and
reports the run with the median throughput of each side; ratios compare those two. Gateway
CPU is utime+stime from /proc/<pid>/stat around the run, per 1000 client calls.
"""

from __future__ import annotations

import json
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.common import (
    CLIENT_NOTE,
    HerdRun,
    counters_delta,
    gateway_counters,
    load_main,
    machine_info,
    markdown_table,
    median_run,
    raise_fd_limit,
    ratio,
    run_herd,
    spread,
    write_method_config,
)
from gateway.testing import ExampleBackend, start_example_backend, start_gateway


@dataclass(frozen=True)
class Scenario:
    slug: str
    title: str
    backend_delay: float
    policy: dict[str, Any]  # [methods.alertSupervisor] of the gateway's config
    hot: bool  # True: one message per round for every client; False: one per client
    warm_up: bool = False  # one unmeasured gateway run first (fills the cache)
    notes: list[str] = field(default_factory=list)


SCENARIOS = (
    Scenario("passthrough", "passthrough, distinct keys", 0.0, {"mode": "passthrough"}, False),
    Scenario("coalesce_distinct", "coalesce, distinct keys", 0.0, {"mode": "coalesce"}, False),
    Scenario("hot_join", "hot key, coalesce (join path)", 0.05, {"mode": "coalesce"}, True),
    Scenario(
        "hot_cache",
        "hot key, cache ttl 60 (cache-hit path)",
        0.0,
        {"mode": "cache", "ttl": 60},
        True,
        warm_up=True,
    ),
)


def backend_command(delay: float) -> str:
    return (
        "gateway example-backend --listen 127.0.0.1:0 --service supervisor"
        f" --delay {delay:g}  # <backend>"
    )


def gateway_command(config_name: str) -> str:
    return (
        "gateway serve --listen 127.0.0.1:0 --backend <backend> --admin 127.0.0.1:0"
        f" --config {config_name}  # <gateway>"
    )


def config_text(policy: dict[str, Any]) -> str:
    items = ", ".join(f"{k} = {json.dumps(v)}" for k, v in policy.items())
    return f"[methods.alertSupervisor] {items}"


def run_scenario(
    scenario: Scenario,
    backend: ExampleBackend,
    workdir: Path,
    clients: int,
    rounds: int,
    repeat: int,
) -> dict[str, Any]:
    keys = 1 if scenario.hot else clients
    config = write_method_config(workdir, scenario.slug, **scenario.policy)
    gateway = start_gateway(
        backend=backend.address, config=config, node_id=f"bench-{scenario.slug}", admin=True
    )
    try:
        assert gateway.admin_port is not None
        direct_runs: list[HerdRun] = []
        gateway_runs: list[tuple[HerdRun, dict[str, int]]] = []

        def through_gateway() -> tuple[HerdRun, dict[str, int]]:
            before = gateway_counters(gateway.admin_port or 0)
            run = run_herd(
                {"<gateway>": gateway.address},
                clients,
                keys,
                rounds,
                watch={"gateway": gateway.pid, "backend": backend.process.pid},
                backend=backend.address,
            )
            return run, counters_delta(before, gateway_counters(gateway.admin_port or 0))

        if scenario.warm_up:
            through_gateway()
        for _ in range(repeat):
            direct_runs.append(
                run_herd(
                    {"<backend>": backend.address},
                    clients,
                    keys,
                    rounds,
                    watch={"backend": backend.process.pid},
                    backend=backend.address,
                )
            )
            gateway_runs.append(through_gateway())
    finally:
        gateway.stop()

    direct = median_run(direct_runs)
    via = median_run([run for run, _ in gateway_runs])
    counters = next(c for run, c in gateway_runs if run is via)
    calls = counters.get("calls", 0)
    gateway_row = via.row()
    gateway_row.update(
        gateway_counters=counters,
        join_rate=ratio(counters.get("coalesced_local", 0), calls),
        cache_hit_rate=ratio(counters.get("cache_hits", 0), calls),
    )
    return {
        "slug": scenario.slug,
        "title": scenario.title,
        "backend_delay_s": scenario.backend_delay,
        "keys_per_round": keys,
        "backend_command": backend_command(scenario.backend_delay),
        "gateway_command": gateway_command(config.name),
        "gateway_config": config_text(scenario.policy),
        "warm_up_runs": 1 if scenario.warm_up else 0,
        "direct": direct.row(),
        "gateway": gateway_row,
        "gateway_vs_direct": {
            "throughput": ratio(via.summary["calls_per_s"], direct.summary["calls_per_s"]),
            "p50": ratio(via.summary["latency_ms"]["p50"], direct.summary["latency_ms"]["p50"]),
        },
        "calls_per_s_all_runs": {
            "direct": [r.summary["calls_per_s"] for r in direct_runs],
            "gateway": [r.summary["calls_per_s"] for r, _ in gateway_runs],
        },
    }


def run(clients: int, rounds: int, repeat: int, command: str) -> dict[str, Any]:
    raise_fd_limit()
    results = []
    with tempfile.TemporaryDirectory(prefix="gw-bench-proxy-") as tmp:
        for scenario in SCENARIOS:
            print(f"proxy: {scenario.title} ...", file=sys.stderr, flush=True)
            with start_example_backend(delay=scenario.backend_delay) as backend:
                results.append(run_scenario(scenario, backend, Path(tmp), clients, rounds, repeat))
    return {
        "benchmark": "proxy",
        "command": command,
        "clients": clients,
        "rounds": rounds,
        "repeat": repeat,
        "note": CLIENT_NOTE,
        "machine": machine_info(),
        "scenarios": results,
    }


def render(result: dict[str, Any]) -> str:
    """The markdown tables (also what ``run`` copies into results.md)."""
    rows = []
    for s in result["scenarios"]:
        for side in ("direct", "gateway"):
            r = s[side]
            rows.append(
                [
                    s["title"] if side == "direct" else "",
                    side,
                    r["calls_per_s"],
                    r["p50_ms"],
                    r["p99_ms"],
                    r.get("gateway_cpu_s_per_1k"),
                    r.get("backend_cpu_s_per_1k"),
                    r.get("backend_calls"),
                    r["client_calls"],
                    r["errors"],
                    spread(s["calls_per_s_all_runs"][side]),
                ]
            )
    table = markdown_table(
        [
            "scenario",
            "path",
            "calls/s",
            "p50 ms",
            "p99 ms",
            "gateway CPU s/1k calls",
            "backend CPU s/1k calls",
            "backend calls",
            "client calls",
            "errors",
            "calls/s of every run",
        ],
        rows,
    )
    ratios = markdown_table(
        [
            "scenario",
            "throughput gateway/direct",
            "p50 gateway/direct",
            "join rate",
            "cache-hit rate",
        ],
        [
            [
                s["title"],
                s["gateway_vs_direct"]["throughput"],
                s["gateway_vs_direct"]["p50"],
                s["gateway"]["join_rate"],
                s["gateway"]["cache_hit_rate"],
            ]
            for s in result["scenarios"]
        ],
    )
    commands = []
    for s in result["scenarios"]:
        warm = " (after 1 unmeasured warm-up run of the same command)" if s["warm_up_runs"] else ""
        commands += [
            f"* {s['title']}: `{s['backend_command']}`; `{s['gateway_command']}` with"
            f" `{s['gateway_config']}`",
            f"  * direct: `{s['direct']['command']}`",
            f"  * gateway{warm}: `{s['gateway']['command']}`",
        ]
    return "\n".join(
        [
            f"Produced by `{result['command']}`: {result['clients']} clients x"
            f" {result['rounds']} rounds per run; each side run {result['repeat']} times"
            " alternately, the median-throughput run shown. Join rate = calls that joined an"
            " in-flight call / client calls; cache-hit rate = calls answered from the cache /"
            " client calls (from the gateway's /metrics counters).",
            "",
            table,
            "",
            ratios,
            "",
            result["note"],
            "",
            "Commands (`<backend>`, `<gateway>`: the ports each process printed):",
            "",
            *commands,
        ]
    )


def main(argv: Sequence[str] | None = None) -> int:
    return load_main("benchmarks.proxy", __doc__, run, render, argv)


if __name__ == "__main__":
    sys.exit(main())
