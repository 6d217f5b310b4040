"""``gateway demo``: a local cluster, a herd through it, a summary, and a clean teardown."""

from __future__ import annotations

import io
import json
import os
import re
import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from gateway.demo.processes import spread
from gateway.demo.progress import Progress
from gateway.demo.summary import backend_calls
from gateway.processes import REPO_ROOT, gateway_cli, start_process

NODES, CLIENTS, KEYS, ROUNDS, POEMS = 3, 60, 3, 2, 3
SMALL = ["--nodes", str(NODES), "--clients", str(CLIENTS), "--keys", str(KEYS),
         "--rounds", str(ROUNDS), "--poems", str(POEMS)]  # fmt: skip
HINT = r"status --redis \S+ --watch"


def run_cli(args: Sequence[str], timeout: float = 90.0) -> subprocess.CompletedProcess[str]:
    """Run ``gateway demo ARGS``; on a timeout SIGTERM it (so it tears down) before failing."""
    proc = subprocess.Popen(
        gateway_cli("demo", *args),
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
        pytest.fail(f"gateway demo took over {timeout}s; stderr:\n{err}")
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def alive(pid: int) -> bool:
    """True while ``pid`` exists (a zombie counts: nobody reaped it)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def children_of(pid: int) -> set[int]:
    """PIDs whose parent is ``pid`` (Linux /proc)."""
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # exited while we looked
        if int(fields[1]) == pid:
            found.add(int(stat.parent.name))
    return found


@pytest.fixture(scope="module")
def json_run() -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    """One small ``gateway demo --json`` run shared by the tests that check its summary."""
    done = run_cli([*SMALL, "--json"])
    assert done.returncode == 0, done.stderr
    return done, json.loads(done.stdout)


@pytest.mark.integration
def test_json_stdout_is_one_object(
    json_run: tuple[subprocess.CompletedProcess[str], dict[str, Any]],
) -> None:
    """With --json, stdout holds exactly one JSON object and nothing else."""
    done, _ = json_run
    assert done.stdout.strip().count("\n") == 0
    assert isinstance(json.loads(done.stdout), dict)


@pytest.mark.integration
def test_no_wrong_replies_or_errors(
    json_run: tuple[subprocess.CompletedProcess[str], dict[str, Any]],
) -> None:
    """Every client call gets its own right answer."""
    _, summary = json_run
    assert summary["client_calls"] == CLIENTS * ROUNDS * 2
    assert (summary["wrong_replies"], summary["errors"], summary["ok"]) == (0, 0, True)


@pytest.mark.integration
def test_alert_reaches_backend_once_per_key_and_round(
    json_run: tuple[subprocess.CompletedProcess[str], dict[str, Any]],
) -> None:
    """Coalesce mode: each round's K distinct messages reach the backend once each, across nodes."""
    _, summary = json_run
    assert summary["backend_calls"]["alertSupervisor"] == KEYS * ROUNDS


@pytest.mark.integration
def test_poems_reach_backend_once_per_title(
    json_run: tuple[subprocess.CompletedProcess[str], dict[str, Any]],
) -> None:
    """Cache mode: each distinct poem reaches the backend once; later rounds hit the cache."""
    _, summary = json_run
    assert summary["backend_calls"]["getPoem"] == POEMS
    assert summary["backend_calls"]["total"] == KEYS * ROUNDS + POEMS
    assert summary["cache_hits"] > 0


@pytest.mark.integration
def test_per_node_breakdown_lists_every_node(
    json_run: tuple[subprocess.CompletedProcess[str], dict[str, Any]],
) -> None:
    """The summary has one Redis-heartbeat entry per node whose calls add up to the herd's."""
    _, summary = json_run
    assert [n["node_id"] for n in summary["nodes"]] == ["node-1", "node-2", "node-3"]
    assert sum(n["calls"] for n in summary["nodes"]) == summary["client_calls"]
    assert summary["coalescing_ratio"] == round(
        summary["client_calls"] / summary["backend_calls"]["total"], 2
    )


@pytest.mark.integration
def test_every_started_process_is_gone_after_exit(
    json_run: tuple[subprocess.CompletedProcess[str], dict[str, Any]],
) -> None:
    """After the demo exits, no process it started (Redis, backends, nodes, herd) is left."""
    _, summary = json_run
    pids = summary["pids"]
    assert {"redis-server", "supervisor", "poetry", "node-1", "herd"} <= set(pids)
    assert [name for name, pid in pids.items() if alive(pid)] == []


@pytest.mark.integration
def test_human_output_has_summary_tables() -> None:
    """Without --json, stdout shows the summary table and the per-node table with headers."""
    done = run_cli(["--nodes", "2", "--clients", "20", "--keys", "2", "--rounds", "1"])
    assert done.returncode == 0, done.stderr
    for header in ("METRIC", "client calls", "backend calls", "coalescing ratio",
                   "joined remotely", "cache hits", "latency p99",
                   "NODE", "CALLS", "BACKEND", "LOCAL", "REMOTE"):  # fmt: skip
        assert header in done.stdout
    assert re.search(r"round 1/1: 40/40 calls answered", done.stderr)


@pytest.mark.integration
def test_sigint_with_keep_running_tears_everything_down() -> None:
    """--keep-running waits after the summary; SIGINT then stops every process, exit 0."""
    demo = start_process(gateway_cli("demo", "--nodes", "2", "--clients", "20", "--keys", "2",
                                     "--rounds", "1", "--json", "--keep-running"))  # fmt: skip
    try:
        demo.wait_for_line(HINT, timeout=60, stream="stderr")
        # stdout and stderr are read by separate threads: the summary printed before the
        # hint may still be on its way.
        pids = json.loads(demo.wait_for_line(r'^\{.*"pids"', timeout=10).string)["pids"]
        assert all(alive(pid) for name, pid in pids.items() if name != "herd")
        os.kill(demo.pid, signal.SIGINT)
        assert demo.proc.wait(timeout=30) == 0
    finally:
        demo.stop()
    assert [name for name, pid in pids.items() if alive(pid)] == []


@pytest.mark.integration
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads children from /proc")
def test_sigterm_during_the_herd_tears_everything_down() -> None:
    """SIGTERM while the herd runs stops every child and exits with 128 + SIGTERM."""
    demo = start_process(gateway_cli("demo", "--nodes", "2", "--clients", "20", "--keys", "2",
                                     "--rounds", "50", "--delay", "0.5"))  # fmt: skip
    try:
        demo.wait_for_line(r"^herd: ", timeout=60, stream="stderr")
        deadline = time.monotonic() + 10
        while len(children := children_of(demo.pid)) < 6 and time.monotonic() < deadline:
            time.sleep(0.05)  # redis, 2 backends, 2 nodes and the herd
        assert len(children) == 6
        os.kill(demo.pid, signal.SIGTERM)
        assert demo.proc.wait(timeout=30) == 128 + signal.SIGTERM
    finally:
        demo.stop()
    assert sorted(pid for pid in children if alive(pid)) == []


def test_spread_gives_every_node_every_key() -> None:
    """The herd's target list is even per node yet not tied to the client's key index."""
    targets = spread(["a", "b", "c"], 60)
    assert sorted(targets.count(node) for node in "abc") == [20, 20, 20]
    seen = {(targets[i % len(targets)], i % 3) for i in range(60)}
    assert len(seen) == 9


def test_spread_caps_the_target_list() -> None:
    """A huge herd still gets a bounded --targets argument."""
    assert len(spread(["a", "b"], 100_000, limit=1000)) == 1000


def test_backend_calls_leave_out_the_stats_probe() -> None:
    """backendStats (the demo's own probe) and never-called methods are not backend calls."""
    stats = {
        "supervisor": {"alertSupervisor": 6, "notify": 0, "backendStats": 1},
        "poetry": {"getPoem": 3, "backendStats": 1},
    }
    assert backend_calls(stats) == {"total": 9, "alertSupervisor": 6, "getPoem": 3}


def test_plain_progress_prints_a_line_per_round() -> None:
    """Off a terminal, progress is plain lines naming the round and answered calls."""
    out = io.StringIO()
    progress = Progress(out, rounds=3, calls_per_round=10, live=False)
    for answered in (0, 4, 10, 25):
        progress.update(answered, 2)
    progress.finish(30, 2)
    assert out.getvalue().splitlines() == [
        "round 1/3: 0/30 calls answered, 2 backend calls",
        "round 2/3: 10/30 calls answered, 2 backend calls",
        "round 3/3: 25/30 calls answered, 2 backend calls",
        "round 3/3: 30/30 calls answered, 2 backend calls",
    ]


def test_live_progress_redraws_one_line() -> None:
    """On a terminal, progress redraws a single line with a bar and ends it with a newline."""
    out = io.StringIO()
    progress = Progress(out, rounds=2, calls_per_round=5, live=True)
    progress.update(5, 1)
    progress.finish(10, 1)
    text = out.getvalue()
    assert text.count("\r") == 2 and text.endswith("\n") and "\n" not in text[:-1]
    assert "round 2/2: 10/10 calls answered" in text
