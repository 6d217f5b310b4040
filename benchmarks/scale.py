"""Distinct-key coalescing vs Redis shards and gateway nodes: flights/s and CPU per call.

    python -m benchmarks.scale [--shards 1,3,6] [--nodes 1,2,4] [--seconds 3] [--repeat 1]
        [--connections 64] [--single] [--baseline-rev REV] [--json] [--out FILE] [--plot PNG]

Setup per row: a Redis Cluster of ``--shards`` primaries on loopback (no replicas; a 1-shard
cluster is still a cluster), one example backend (no delay) and ``--nodes`` gateway nodes
in cluster mode (``alertSupervisor``: coalesce). ``--single`` adds the rows of one plain
redis-server (not a cluster) and the local-only reference (one node, no Redis).

Load: :mod:`benchmarks.rawload` in one process per node, ``--connections`` in all split over
the nodes, one call in flight each, closed loop, every slot its own argument and every
process its own tag: every call is a flight of its own, no two alike in flight.

Readings per row: flights/s (calls answered in the recorded windows, summed over nodes);
CPU per call of the gateway nodes, of the Redis processes and of the backend, each from
``/proc/PID/stat`` (utime + stime) over the whole load run divided by every call answered in
it. Redis CPU per flight is read from the redis-server processes themselves, gross and net
of their idle rate (cluster bus, heartbeats: read over 2 quiet seconds before the load).

``--baseline-rev REV`` runs every row a second time with the gateway of that git revision
(a temporary worktree on PYTHONPATH), so before and after are measured side by side;
``--repeat N`` runs each row N times (the trees interleaved) and keeps each figure's median.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from benchmarks.common import cpu_seconds, gateway_health, raise_fd_limit, wait_until
from benchmarks.loadspec import LoadSpec
from benchmarks.rawload import run_load
from gateway.localredis import LocalCluster, RedisServer
from gateway.processes import GatewayProcess, gateway_argv, start_example_backend, start_process

REPO_ROOT = Path(__file__).resolve().parent.parent


def _load(host: str, port: int, spec: LoadSpec) -> dict[str, Any]:
    return run_load(host, port, spec).to_dict()


def start_nodes(
    count: int, backend: str, redis: str | None, tree: Path | None, tag: str
) -> list[GatewayProcess]:
    """``count`` gateway nodes (from ``tree`` if given), up in cluster mode (if ``redis``)."""
    nodes: list[GatewayProcess] = []
    env = {"PYTHONPATH": str(tree)} if tree else None
    try:
        for i in range(count):
            argv = gateway_argv(
                backend=backend, redis=redis, node_id=f"scale-{tag}-{i}", admin=True
            )
            process = start_process(argv, env=env, cwd=tree or REPO_ROOT)
            try:
                nodes.append(GatewayProcess.from_process(process, timeout=60.0))
            except BaseException:
                process.stop()
                raise
        if redis is not None:

            def all_up() -> bool:
                return all(gateway_health(n.admin_port or 0)["redis"] == "cluster" for n in nodes)

            if not wait_until(all_up, 30.0, interval=0.1):
                raise RuntimeError("nodes not in cluster mode after 30 s")
        return nodes
    except BaseException:
        for node in nodes:
            node.stop()
        raise


def measure(
    nodes: Sequence[GatewayProcess],
    redis_pids: Sequence[int],
    backend_pid: int,
    args: argparse.Namespace,
    tag: str,
) -> dict[str, Any]:
    """One load run over ``nodes``: flights/s and CPU per call of each process group."""
    per_node = max(1, args.connections // len(nodes))
    specs = [
        LoadSpec(connections=per_node, seconds=args.seconds, warmup=args.warmup, tag=f"{tag}n{i}")
        for i in range(len(nodes))
    ]
    groups = {
        "gateway": [n.pid for n in nodes],
        "redis": list(redis_pids),
        "backend": [backend_pid],
    }
    # Redis's own background (cluster bus, the nodes' heartbeats and sessions) over quiet
    # seconds first (CPU times tick in 10 ms): the per-flight figure is net of it.
    idle_from, idle_start = sum(cpu_seconds(p) for p in redis_pids), time.monotonic()
    time.sleep(2.0)
    idle_rate = (sum(cpu_seconds(p) for p in redis_pids) - idle_from) / (
        time.monotonic() - idle_start
    )
    before = {g: sum(cpu_seconds(p) for p in pids) for g, pids in groups.items()}
    started = time.monotonic()
    context = multiprocessing.get_context("spawn")  # no reactor or sockets inherited
    with ProcessPoolExecutor(max_workers=len(nodes), mp_context=context) as pool:
        futures = [pool.submit(_load, n.host, n.port, s) for n, s in zip(nodes, specs, strict=True)]
        results = [f.result() for f in futures]
    after = {g: sum(cpu_seconds(p) for p in pids) for g, pids in groups.items()}
    elapsed = time.monotonic() - started
    calls = sum(r["all_ok"] for r in results)
    errors = sum(r["errors"] for r in results)
    row: dict[str, Any] = {
        "flights_per_s": round(sum(r["calls_per_s"] for r in results)),
        "calls": calls,
        "errors": errors,
        "connections": per_node * len(nodes),
    }
    for group in groups:
        used = after[group] - before[group]
        row[f"{group}_cpu_us_per_call"] = round(used / calls * 1e6, 1) if calls else None
    if calls:
        net = after["redis"] - before["redis"] - idle_rate * elapsed
        row["redis_net_cpu_us_per_flight"] = round(max(0.0, net) / calls * 1e6, 1)
    row["redis_idle_cpu_pct"] = round(idle_rate * 100, 2)
    return row


@contextmanager
def redis_setup(kind: str, shards: int) -> Iterator[tuple[str | None, list[int]]]:
    """``(url, pids of the redis-server processes)`` for a row kind."""
    if kind == "local":
        yield None, []
    elif kind == "single":
        with RedisServer() as server:
            yield server.url, [server.pid or 0]
    else:
        cluster = LocalCluster(primaries=shards, replicas=0).start()
        try:
            yield cluster.url, [s.pid or 0 for s in cluster.primaries]
        finally:
            cluster.close()


def checkout(rev: str, stack: ExitStack) -> Path:
    """A temporary detached worktree of ``rev``, removed when ``stack`` closes."""
    path = Path(tempfile.mkdtemp(prefix="gw-scale-baseline-"))
    path.rmdir()  # git worktree add wants to create it
    git = ["git", "-C", str(REPO_ROOT), "worktree"]
    subprocess.run([*git, "add", "--detach", str(path), rev], check=True, capture_output=True)
    stack.callback(subprocess.run, [*git, "remove", "--force", str(path)], check=False)
    return path


def rows_wanted(args: argparse.Namespace) -> list[tuple[str, int, int]]:
    """(kind, shards, nodes) of every row, grouped by Redis setup."""
    rows = [("cluster", s, n) for s in args.shards for n in args.nodes]
    if args.single:
        rows = [("local", 0, 1)] + [("single", 1, n) for n in args.nodes] + rows
    return rows


def run(args: argparse.Namespace) -> dict[str, Any]:
    raise_fd_limit()
    trees: list[tuple[str, Path | None]] = [("this", None)]
    out: list[dict[str, Any]] = []
    with ExitStack() as stack:
        if args.baseline_rev:
            trees.append((f"base {args.baseline_rev}", checkout(args.baseline_rev, stack)))
        backend = start_example_backend(delay=0.0)
        stack.callback(backend.stop)
        setups: dict[tuple[str, int], list[int]] = {}
        for kind, shards, count in rows_wanted(args):
            setups.setdefault((kind, shards), []).append(count)
        for (kind, shards), counts in setups.items():
            with redis_setup(kind, shards) as (url, redis_pids):
                for count in counts:
                    runs: dict[str, list[dict[str, Any]]] = {label: [] for label, _ in trees}
                    for attempt in range(args.repeat):  # the trees interleaved, run by run
                        for label, tree in trees:
                            tag = f"{kind[0]}{shards}x{count}{label[0]}{attempt}"
                            tag += str(int(time.time()) % 10000)
                            print(f"scale: {kind} {shards} shards, {count} nodes, {label} ...",
                                  file=sys.stderr, flush=True)  # fmt: skip
                            nodes = start_nodes(count, backend.address, url, tree, tag)
                            try:
                                time.sleep(0.5)  # the nodes' scripts loaded, sessions up
                                runs[label].append(
                                    measure(nodes, redis_pids, backend.pid, args, tag)
                                )
                            finally:
                                for node in nodes:
                                    node.stop()
                    for label, measured in runs.items():
                        row = median_row(measured)
                        row.update(kind=kind, shards=shards, nodes=count, gateway=label)
                        out.append(row)
    return {
        "rows": out,
        "seconds": args.seconds,
        "cores": os.cpu_count(),
        "baseline_rev": args.baseline_rev,
        "repeat": args.repeat,
    }


def median_row(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Each figure's median over the runs of one row (errors: their sum)."""
    row: dict[str, Any] = {}
    for key in runs[0]:
        values = [r[key] for r in runs if r.get(key) is not None]
        if key == "errors":
            row[key] = sum(values)
        elif values:
            row[key] = statistics.median_low(values)
        else:
            row[key] = None
    return row


def table(result: dict[str, Any]) -> str:
    """A markdown table of the rows."""
    lines = [
        "| redis | shards | nodes | gateway | flights/s | gateway µs/call | redis µs/flight"
        " | redis net µs/flight | backend µs/call | errors |",
        "| --- | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['kind']} | {r['shards'] or '-'} | {r['nodes']} | {r['gateway']} |"
            f" {r['flights_per_s']:,} | {r['gateway_cpu_us_per_call']} |"
            f" {r['redis_cpu_us_per_call'] if r['kind'] != 'local' else '-'} |"
            f" {r.get('redis_net_cpu_us_per_flight', '-') if r['kind'] != 'local' else '-'} |"
            f" {r['backend_cpu_us_per_call']} | {r['errors']} |"
        )
    return "\n".join(lines)


def plot(result: dict[str, Any], path: Path) -> None:
    """flights/s and Redis CPU per flight vs shards, one line per node count (and tree)."""
    import matplotlib

    matplotlib.use("Agg")  # no display
    import matplotlib.pyplot as plt

    rows = [r for r in result["rows"] if r["kind"] == "cluster"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    series = sorted({(r["gateway"], r["nodes"]) for r in rows})
    for label, count in series:
        mine = sorted((r for r in rows if (r["gateway"], r["nodes"]) == (label, count)),
                      key=lambda r: r["shards"])  # fmt: skip
        shards = [r["shards"] for r in mine]
        # One colour per node count; this tree solid, the baseline dashed.
        look = {"linestyle": "-" if label == "this" else "--", "marker": "o",
                "color": f"C{sorted({c for _, c in series}).index(count)}",
                "label": f"{count} node{'s' if count > 1 else ''} ({label})"}  # fmt: skip
        left.plot(shards, [r["flights_per_s"] for r in mine], **look)
        right.plot(shards, [r["redis_net_cpu_us_per_flight"] for r in mine], **look)
    left.set(xlabel="Redis Cluster primaries", ylabel="distinct-key flights/s",
             title="Throughput (2 shared cores: bound by the machine)")  # fmt: skip
    right.set(xlabel="Redis Cluster primaries", ylabel="Redis CPU µs per flight",
              title="Redis CPU per flight (all primaries, net of idle)")  # fmt: skip
    for ax in (left, right):
        ax.set_xticks(sorted({r["shards"] for r in rows}))
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def _ints(value: str) -> list[int]:
    return [int(v) for v in value.split(",") if v]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.scale",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--shards", type=_ints, default=[1, 3, 6])
    parser.add_argument("--nodes", type=_ints, default=[1, 2, 4])
    parser.add_argument("--seconds", type=float, default=3.0, help="recorded window per row")
    parser.add_argument("--warmup", type=float, default=0.5)
    parser.add_argument("--connections", type=int, default=64, help="over all nodes")
    parser.add_argument("--repeat", type=int, default=1, help="runs per row (median)")
    parser.add_argument("--single", action="store_true", help="also one redis-server, local")
    parser.add_argument("--baseline-rev", metavar="REV", help="also the gateway of REV")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--out", type=Path, help="write the JSON result here")
    parser.add_argument("--plot", type=Path, help="write the PNG plot here")
    args = parser.parse_args(argv)
    result = run(args)
    result["command"] = "python -m benchmarks.scale " + " ".join(argv or sys.argv[1:])
    if args.out:
        args.out.write_text(json.dumps(result, indent=1, sort_keys=True) + "\n")
    if args.plot:
        plot(result, args.plot)
    print(json.dumps(result, sort_keys=True) if args.json else table(result))
    return 0 if all(r["errors"] == 0 for r in result["rows"]) else 1


if __name__ == "__main__":
    sys.exit(main())
