"""``gateway demo``: start a local cluster, drive a herd through it, show what coalescing did.

Order of events: cluster up (:mod:`gateway.demo.processes`) -> herd subprocess with a live
progress line -> backend counts, final heartbeats -> summary -> (``--keep-running``: wait for
Ctrl-C) -> teardown of every process by PID, whatever happened before.
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from types import FrameType
from typing import Any, TextIO

import redis

from clients.sync_client import ExampleClient
from gateway.demo.probe import progress_counts
from gateway.demo.processes import DemoCluster, DemoError, Settings
from gateway.demo.progress import Progress
from gateway.demo.summary import build_summary, render_summary
from gateway.ops.status import collect
from gateway.processes import ManagedProcess

PREFIX = "gw:"


class Interrupted(Exception):
    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class SignalGuard:
    """SIGINT/SIGTERM raise :class:`Interrupted` in the main thread, except inside
    ``critical()`` blocks (raised at their end instead) and after ``disarm()`` (teardown
    must run to the end however often Ctrl-C is pressed)."""

    def __init__(self) -> None:
        self.pending: int | None = None
        self._depth = 0
        self._armed = True
        self._previous: dict[int, Any] = {}

    def install(self) -> None:
        for signum in (signal.SIGINT, signal.SIGTERM):
            self._previous[signum] = signal.signal(signum, self._handle)

    def restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
        if self.pending is None:
            self.pending = signum
        self.check()

    def check(self) -> None:
        if self.pending is not None and self._armed and not self._depth:
            raise Interrupted(self.pending)

    @contextmanager
    def critical(self) -> Iterator[None]:
        self._depth += 1
        try:
            yield
        finally:
            self._depth -= 1
        self.check()

    def disarm(self) -> None:
        self._armed = False


def settings_from(args: argparse.Namespace) -> Settings:
    return Settings(
        nodes=args.nodes,
        clients=args.clients,
        keys=args.keys,
        poems=args.poems,
        rounds=args.rounds,
        delay=args.delay,
        timeout=args.timeout,
    )


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def run_demo(args: argparse.Namespace) -> int:
    """Entry point of ``gateway demo``: exit 0 when every client call got its right answer,
    1 on wrong replies, errors or a failed step, 2 on bad flags, 128+N on signal N."""
    settings = settings_from(args)
    if problems := settings.problems():
        say(f"gateway demo: {'; '.join(problems)}")
        return 2
    guard = SignalGuard()
    guard.install()
    cluster = DemoCluster(settings, critical=guard.critical)
    try:
        say(f"gateway demo: starting redis-server, 2 backends and {settings.nodes} gateway nodes")
        cluster.start(lambda line: say(f"  {line}"))
        summary = drive(cluster, settings)
        print(json.dumps(summary) if args.json else render_summary(summary), flush=True)
        if args.keep_running:
            keep_running(cluster, to=sys.stderr if args.json else sys.stdout)
        return 0 if summary["ok"] else 1
    except DemoError as exc:
        say(f"gateway demo: {exc}")
        return 1
    except Interrupted as exc:
        say(f"\ngateway demo: {exc} during the run, stopping everything")
        return 128 + exc.signum
    finally:
        guard.disarm()
        cluster.stop()
        guard.restore()


def drive(cluster: DemoCluster, settings: Settings) -> dict[str, Any]:
    """Run the herd with a progress display, then gather the numbers for the summary."""
    per_round = settings.clients * (2 if settings.poems else 1)
    progress = Progress(sys.stderr, rounds=settings.rounds, calls_per_round=per_round)
    say(
        f"herd: {settings.clients} clients x {settings.rounds} rounds, {per_round} calls a round"
        f" (alertSupervisor{' + getPoem' if settings.poems else ''})"
    )
    herd = cluster.start_herd()
    # The herd bounds every connect and call by --timeout and runs rounds one after another.
    deadline = time.monotonic() + (settings.rounds + 1) * settings.timeout + 30
    while herd.returncode is None:
        progress.update(*live_counts(cluster))
        if time.monotonic() > deadline:
            raise DemoError("the herd (python -m clients.herd) did not finish in time")
        with suppress(subprocess.TimeoutExpired):
            herd.proc.wait(timeout=0.2)
    finished_at = time.time()
    herd.stop()  # already exited: reaps it and lets the readers reach EOF
    result = herd_result(herd)
    progress.finish(*live_counts(cluster))
    return build_summary(
        settings,
        result,
        read_backend_stats(cluster),
        final_report(cluster, finished_at),
        cluster.pids(),
        cluster.redis_url,
    )


def live_counts(cluster: DemoCluster) -> tuple[int, int]:
    """(client calls answered, backend calls) summed over the nodes' /metrics right now."""
    counts = [progress_counts(node) for node in cluster.nodes]
    return sum(answered for answered, _ in counts), sum(backend for _, backend in counts)


def herd_result(herd: ManagedProcess) -> dict[str, Any]:
    """The herd's --json object (its exit code only says whether every reply was right)."""
    for line in reversed(herd.stdout_lines):
        if line.startswith("{"):
            with suppress(ValueError):
                parsed: dict[str, Any] = json.loads(line)
                return parsed
    last = next((line for line in reversed(herd.stderr_lines) if line.strip()), "no output")
    raise DemoError(f"the herd (python -m clients.herd) exited with {herd.returncode}: {last}")


def read_backend_stats(cluster: DemoCluster) -> dict[str, dict[str, int]]:
    """Each backend's own ``backendStats()``, asked directly (not through a gateway node)."""
    stats = {}
    for service, backend in cluster.backends.items():
        try:
            with ExampleClient(backend.host, backend.port, timeout=5.0) as client:
                stats[service] = client.backend_stats(service)
        except Exception as exc:  # thrift's transport, protocol and application errors
            raise DemoError(
                f"could not read backendStats() of the {service} backend: {exc}"
            ) from None
    return stats


def final_report(cluster: DemoCluster, finished_at: float, wait: float = 4.0) -> dict[str, Any]:
    """``gateway status`` data once every node has sent a heartbeat taken after the herd
    finished (beats come every second), so the per-node counters are the final ones."""
    client = redis.Redis.from_url(
        cluster.redis_url, decode_responses=True, socket_connect_timeout=2.0, socket_timeout=2.0
    )
    try:
        deadline = time.monotonic() + wait
        while True:
            report = collect(client, PREFIX)
            fresh = [n for n in report["nodes"] if n["last_seen"] >= finished_at]
            if len(fresh) >= len(cluster.nodes) or time.monotonic() > deadline:
                return report
            time.sleep(0.1)
    except redis.RedisError as exc:
        raise DemoError(f"could not read node counters from Redis: {exc}") from None
    finally:
        client.close()


def keep_running(cluster: DemoCluster, to: TextIO) -> None:
    """Print where everything listens, then wait for Ctrl-C/SIGTERM (raised as Interrupted,
    which ends the wait; the caller's ``finally`` tears down)."""
    python = _shown(sys.executable)
    script = Path(sys.executable).with_name("gateway")  # the venv's console script
    if shutil.which("gateway") == str(script):
        gateway_cmd = "gateway"
    elif script.exists():
        gateway_cmd = _shown(str(script))
    else:
        gateway_cmd = f"{python} -m gateway.cli"
    first = cluster.nodes[0].address
    lines = ["", "The cluster keeps running; press Ctrl-C to stop it."]
    for node in cluster.nodes:
        lines.append(
            f"  {node.node_id:<12} thrift {node.address}  metrics {node.admin_url}/metrics"
        )
    for service, backend in cluster.backends.items():
        lines.append(f"  {service:<12} backend {backend.address}")
    lines += [
        f"  {'redis':<12} {cluster.redis_url}",
        f"  try:   {python} -m clients.alert --gateway {first} 'disk full'",
        f"  watch: {gateway_cmd} status --redis {cluster.redis_url} --watch",
    ]
    reported: set[str] = set()
    try:
        # Printed inside the try: a Ctrl-C right after the hint must still end here.
        print("\n".join(lines), file=to, flush=True)
        while True:
            time.sleep(1.0)
            for name, process in cluster.children():
                if name != "herd" and name not in reported and process.returncode is not None:
                    reported.add(name)
                    say(f"gateway demo: {name} exited with code {process.returncode}")
    except Interrupted:
        say("gateway demo: stopping everything")


def _shown(path: str) -> str:
    """``path`` relative to the working directory when it lies below it (``.venv/bin/...``)."""
    with suppress(ValueError):
        return str(Path(path).relative_to(Path.cwd()))
    return path
