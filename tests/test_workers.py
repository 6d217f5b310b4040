"""Multi-worker nodes without processes: config and flags, the supervisor's sums, restarts.

The end-to-end behaviour (real workers, signals, herds) is in test_workers_e2e.py.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.task import Clock
from twisted.python.failure import Failure

from gateway.cli import build_parser
from gateway.config import ConfigError, build_config, usable_cores
from gateway.observe import Observations
from gateway.proxy.metrics import Metrics
from gateway.proxy.node import DrainSummary
from gateway.stats import NodeStats
from gateway.workers.aggregate import NodeView, Reading, parse_drain_line, worst_mode
from gateway.workers.pool import WorkerPool
from gateway.workers.role import WorkerRole
from gateway.workers.supervisor import worker_argv

FLAGS: dict[str, str | None] = {"listen": "127.0.0.1:0", "backend": "127.0.0.1:1"}


# -- config and flags -----------------------------------------------------------------------


def test_workers_default_to_one() -> None:
    """Without the key or flag a node is one process."""
    assert build_config({}, FLAGS).workers == 1


def test_workers_from_file_and_flag() -> None:
    """`workers` in [gateway] is read, and --workers (text) overrides it."""
    assert build_config({"gateway": {"workers": 3}}, FLAGS).workers == 3
    assert build_config({"gateway": {"workers": 3}}, {**FLAGS, "workers": "5"}).workers == 5


def test_workers_auto_is_the_usable_cores() -> None:
    """`auto` means one worker per core this process may run on (its CPU affinity)."""
    assert build_config({}, {**FLAGS, "workers": "auto"}).workers == usable_cores()
    assert build_config({"gateway": {"workers": "auto"}}, FLAGS).workers == usable_cores()


@pytest.mark.parametrize("bad", [0, -1, 1025, True, 2.5, "two", "", [2]])
def test_bad_workers_is_a_one_line_config_error(bad: object) -> None:
    """Anything but 1..1024 or "auto" is refused, naming the key."""
    with pytest.raises(
        ConfigError, match=r'^gateway\.workers: expected a number 1\.\.1024 or "auto"'
    ):
        build_config({"gateway": {"workers": bad}}, FLAGS)


def test_bad_workers_flag_is_a_config_error_too() -> None:
    """--workers 0 fails as the key would (one line, not an argparse usage error)."""
    with pytest.raises(ConfigError, match=r"^gateway\.workers: "):
        build_config({}, {**FLAGS, "workers": "0"})


def test_serve_and_check_config_take_workers() -> None:
    """`serve --workers N` and `check-config --workers auto` parse; the worker flags are
    hidden from --help."""
    parser = build_parser()
    assert parser.parse_args(["serve", "--workers", "4"]).workers == "4"
    assert parser.parse_args(["check-config", "x.toml", "--workers", "auto"]).workers == "auto"
    serve_help = parser._subparsers._group_actions[0].choices["serve"].format_help()  # type: ignore[union-attr]  # argparse internals
    assert "--workers" in serve_help and "--worker-fd" not in serve_help


def test_worker_config_has_no_admin_one_process_and_the_private_redis() -> None:
    """A worker runs the node's config without an admin port, as one process, and on the
    private Redis (replies of any size shared) when the node has no [redis]."""
    config = build_config({"gateway": {"workers": 4, "admin": "127.0.0.1:0"}}, FLAGS)
    role = WorkerRole(1, 3, "/tmp/w1.sock", "unix:///tmp/r.sock")

    mine = role.configure(config)

    assert (mine.admin, mine.workers) == (None, 1)
    assert mine.redis is not None and mine.redis.url == "unix:///tmp/r.sock"
    assert mine.redis.max_shared_bytes == config.max_frame_size
    assert role.node_mode(lambda: "cluster")() == "private"
    assert role.node_mode(lambda: "local")() == "local"
    assert WorkerRole(0, 3, "/tmp/w0.sock").node_mode(lambda: "cluster")() == "cluster"


def test_worker_argv_carries_the_node_flags_and_the_role() -> None:
    """A worker is started with the supervisor's own node flags plus its hidden role flags,
    which parse back into the same role."""
    args = build_parser().parse_args(
        ["serve", "--listen", "127.0.0.1:0", "--backend", "127.0.0.1:9", "--workers", "2",
         "--node-id", "gw-1", "--admin", "127.0.0.1:0"]
    )  # fmt: skip
    role = WorkerRole(1, 3, "/tmp/w1.sock", "unix:///tmp/r.sock")

    argv = worker_argv(args, role)

    parsed = build_parser().parse_args(argv[3:])  # after "python -m gateway.cli"
    assert WorkerRole.from_args(parsed) == role
    assert (parsed.listen, parsed.backend, parsed.node_id) == ("127.0.0.1:0", "127.0.0.1:9", "gw-1")
    assert parsed.workers is None  # the role makes it one process anyway


# -- the supervisor's sums ------------------------------------------------------------------


def reading(pid: int, calls: int, in_flight: int = 0, **extra: Any) -> Reading:
    """A worker's /state with ``calls`` calls, one latency observation per call."""
    stats = NodeStats(calls=calls, backend_calls=calls // 2, in_flight=in_flight)
    observations = Observations()
    for _ in range(calls):
        observations.errors.count("overloaded")
    metrics = Metrics(stats, "gw-1", lambda: extra.get("mode", "cluster"), observations)
    for _ in range(calls):
        metrics.observe("alert", "backend", 0.002)
    return Reading.parse(
        {
            "pid": pid,
            "health": {
                "listening": True,
                "redis": extra.get("mode", "cluster"),
                "in_flight": in_flight,
            },
            "stats": stats.snapshot(),
            "extra": {
                "hmac_rejects": 1.0,
                "redis_mode": extra.get("mode", "cluster"),
                "session": f"gw-1.{pid}",
            },
            "errors": observations.errors.snapshot(),
            "metrics": metrics.render().decode(),
        }
    )


def samples(view: NodeView) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = view.render().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def two_workers() -> NodeView:
    view = NodeView(2, "gw-1", started_at=100.0)
    view.started(0, 10)
    view.started(1, 11)
    view.update(0, 1, reading(10, calls=3, in_flight=2))
    view.update(1, 1, reading(11, calls=4, in_flight=1))
    return view


def test_counters_and_gauges_sum_over_workers() -> None:
    """The node's counters and in-flight gauge are the sums of its workers'."""
    view = two_workers()

    stats = view.stats()

    assert (stats.calls, stats.backend_calls, stats.in_flight) == (7, 1 + 2, 3)
    assert stats.started_at == 100.0
    assert view.errors() == {"overloaded": 7}


def test_counters_health_and_heartbeat_fields_do_not_parse_the_metrics_text() -> None:
    """What the supervisor reads every second (stats, errors, heartbeat extras) comes
    without parsing the workers' /metrics text: only the node's own /metrics parses it."""
    view = two_workers()
    for slot in view.slots:
        assert slot.reading is not None
        slot.reading.metrics_text = "not { the prometheus text format"

    assert view.stats().calls == 7
    assert view.errors() == {"overloaded": 7}
    assert view.extra()["error.overloaded"] == 7.0
    with pytest.raises(ValueError):
        view.render()


def test_metrics_sum_counters_and_histograms_and_take_the_max_of_mode_gauges() -> None:
    """/metrics of the node: counters and histogram series with the same labels summed,
    in_flight summed, the redis-mode and build-info gauges 1 (not 2), no _created series."""
    node = samples(two_workers())
    node_label = (("node", "gw-1"),)

    assert node["gateway_calls_total", node_label] == 7
    assert node["gateway_in_flight", node_label] == 3
    histogram = (("method", "alert"), ("source", "backend"))
    assert node["gateway_call_latency_seconds_count", histogram] == 7
    assert node["gateway_call_latency_seconds_bucket", (("le", "0.005"), *histogram)] == 7
    assert node["gateway_redis_mode", (("mode", "cluster"),)] == 1
    assert node["gateway_errors_by_kind_total", (("kind", "overloaded"), ("node", "gw-1"))] == 7
    assert not any(name.endswith("_created") for name, _ in node)


def test_a_restarted_worker_never_makes_counters_go_backwards() -> None:
    """A worker replaced in its slot starts again from 0: its predecessor's last counts
    stay in the sums (counters and histograms), its gauges leave them."""
    view = two_workers()
    view.ended(0, 10)
    view.started(0, 12)
    after_exit = view.stats()
    view.update(0, 5, reading(12, calls=1))

    stats = view.stats()
    node = samples(view)

    assert (after_exit.calls, after_exit.in_flight) == (7, 1)
    assert (stats.calls, stats.in_flight) == (8, 1)
    assert (
        node["gateway_call_latency_seconds_count", (("method", "alert"), ("source", "backend"))]
        == 8
    )
    assert view.extra()["hmac_rejects"] == 3  # two workers, one predecessor: 1 each


def test_late_or_stale_readings_are_dropped() -> None:
    """A reading from a replaced worker, or older than the one held, is not taken: nothing
    counts twice."""
    view = two_workers()
    view.ended(0, 10)
    view.started(0, 12)

    assert view.update(0, 9, reading(10, calls=50)) is False  # the dead worker answering late
    assert view.update(1, 0, reading(11, calls=2)) is False  # older than the held fetch 1
    assert view.stats().calls == 7


def test_a_drained_workers_summary_line_gives_its_final_counts() -> None:
    """The counters of a worker's drain summary line replace its last (older) reading."""
    view = two_workers()
    line = DrainSummary(True, 0, NodeStats(calls=9, backend_calls=2)).line("gw-1")

    view.ended(0, 10, parse_drain_line(line))

    assert (view.stats().calls, view.stats().backend_calls) == (9 + 4, 2 + 2)


def test_drain_lines_parse_both_states() -> None:
    """parse_drain_line reads what DrainSummary.line writes, drained or timed out."""
    stats = NodeStats(calls=5, errors=1)
    drained = parse_drain_line(DrainSummary(True, 0, stats).line("n"))
    timed_out = parse_drain_line(DrainSummary(False, 3, stats).line("n"))

    assert drained is not None and (drained.drained, drained.abandoned) == (True, 0)
    assert timed_out is not None and (timed_out.drained, timed_out.abandoned) == (False, 3)
    assert timed_out.counters["calls"] == 5 and timed_out.counters["errors"] == 1
    assert parse_drain_line("gateway n listening on 127.0.0.1:1") is None


def test_text_extras_summarise_the_workers() -> None:
    """redis_mode is the most degraded worker's; sessions are listed."""
    view = NodeView(2, "gw-1", 0.0)
    view.started(0, 10)
    view.started(1, 11)
    view.update(0, 1, reading(10, calls=1, mode="cluster"))
    view.update(1, 1, reading(11, calls=1, mode="local"))

    extra = view.extra()

    assert extra["redis_mode"] == "local"
    assert extra["session"] == "gw-1.10,gw-1.11"
    assert worst_mode(["cluster", "cluster-polling"]) == "cluster-polling"
    assert worst_mode(["private", "private"]) == "private"


# -- restarts -------------------------------------------------------------------------------


class FakeProcess:
    def __init__(self, pid: int, protocol: Any) -> None:
        self.pid = pid
        self.protocol = protocol


class FakeReactor(Clock):
    """A Clock whose spawnProcess records the workers instead of starting them."""

    def __init__(self) -> None:
        super().__init__()
        self.spawned: list[FakeProcess] = []

    def spawnProcess(
        self, protocol: Any, executable: str, args: list[str], **kw: Any
    ) -> FakeProcess:
        process = FakeProcess(1000 + len(self.spawned), protocol)
        self.spawned.append(process)
        protocol.makeConnection(process)
        return process


def crash(process: FakeProcess) -> None:
    process.protocol.processEnded(Failure(ProcessTerminated(signal=9)))


def test_a_crash_loop_backs_off_and_a_stable_worker_restarts_fast() -> None:
    """A worker dying again right after each restart waits 0.1, 0.2, 0.4 ... up to 10 s
    before the next start; one that ran 10 s restarts after 0.1 s again."""
    reactor = FakeReactor()
    pool = WorkerPool(reactor, 1, lambda i: ["python"], lambda: socket.socket())
    pool.start()
    waits = []
    for _ in range(9):
        crash(reactor.spawned[-1])
        (restart,) = reactor.getDelayedCalls()
        waits.append(round(restart.getTime() - reactor.seconds(), 3))
        reactor.advance(waits[-1])

    reactor.advance(10.0)  # the last one has now run 10 s
    crash(reactor.spawned[-1])
    reactor.advance(0.1)

    assert waits == [0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 6.4, 10.0, 10.0]
    assert len(reactor.spawned) == 11 and pool.restarts == 10


def test_ready_lines_and_exits_reach_the_callbacks() -> None:
    """A worker is ready once it prints its listening line; its exit carries its stdout."""
    reactor = FakeReactor()
    ready: list[int] = []
    exits: list[Any] = []
    pool = WorkerPool(
        reactor, 2, lambda i: ["python"], lambda: socket.socket(),
        on_ready=ready.append, on_exit=exits.append,
    )  # fmt: skip
    pool.start()
    first = reactor.spawned[0].protocol

    first.childDataReceived(1, b"gateway gw-1 listening on 127.0.0.1:5")
    assert ready == []  # not a whole line yet
    first.childDataReceived(1, b"5\ngateway gw-1 stopped: drained; calls=1\n")
    pool.stop()
    first.processEnded(Failure(ProcessDone(0)))

    assert ready == [0] and not pool.all_ready()
    assert exits[0].lines[-1] == "gateway gw-1 stopped: drained; calls=1"
    assert (exits[0].code, exits[0].signal) == (0, None)
    assert len(reactor.spawned) == 2  # stopping: no restart


def test_check_config_names_the_workers(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """check-config's summary line says how many workers the node will run."""
    from gateway.cli import main

    config = tmp_path / "gw.toml"
    config.write_text(
        '[gateway]\nlisten = "127.0.0.1:0"\nworkers = 3\n'
        '[backends.default]\naddress = "127.0.0.1:1"\n'
    )

    assert main(["check-config", str(config)]) == 0

    assert capsys.readouterr().out.strip().endswith("no redis, 3 workers")


def state(pid: int, metrics: str = "", **health: Any) -> dict[str, Any]:
    """A minimal worker /state."""
    return {
        "pid": pid,
        "health": {"listening": True, "redis": "cluster", "in_flight": 0, **health},
        "stats": NodeStats().snapshot(),
        "extra": {},
        "errors": {},
        "metrics": metrics,
    }


def test_reload_gauges_take_the_worst_worker() -> None:
    """A reload that failed in one worker shows as failed for the node, and the node's config
    load time is its oldest worker's."""
    view = NodeView(2, "gw-1", 0.0)
    for index, (ok, loaded) in enumerate([(1, 200.0), (0, 100.0)]):
        text = (
            "# TYPE gateway_config_last_reload_successful gauge\n"
            f'gateway_config_last_reload_successful{{node="gw-1"}} {ok}\n'
            "# TYPE gateway_config_loaded_timestamp_seconds gauge\n"
            f'gateway_config_loaded_timestamp_seconds{{node="gw-1"}} {loaded}\n'
        )
        view.started(index, 10 + index)
        view.update(index, 1, Reading.parse(state(10 + index, text)))

    node = samples(view)

    assert node["gateway_config_last_reload_successful", (("node", "gw-1"),)] == 0
    assert node["gateway_config_loaded_timestamp_seconds", (("node", "gw-1"),)] == 100


def test_healthz_passes_on_what_workers_agree_on(tmp_path: Path) -> None:
    """/healthz of the node carries each worker's other health fields, and a field for the
    node where every worker says the same; it is 200-worthy only while every worker is up."""
    from gateway.workers.supervisor import Supervisor

    config = build_config({"gateway": {"workers": 2}}, FLAGS)
    args = build_parser().parse_args(["serve"])
    supervisor = Supervisor(config, args, FakeReactor(), 1, tmp_path, coordination="redis")
    for slot in supervisor.pool.slots:
        slot.pid, slot.ready = 10 + slot.index, True
        supervisor.view.started(slot.index, slot.pid)
    supervisor._reading(state(10, config={"sha256": "a"}, epoch=1), 0, 1)

    half = supervisor.health()
    supervisor._reading(state(11, config={"sha256": "a"}, epoch=2), 1, 1)
    body = supervisor.health()

    assert half["listening"] is False and "config" not in half
    assert body["listening"] is True
    assert body["config"] == {"sha256": "a"} and "epoch" not in body
    assert [w["epoch"] for w in body["workers"]] == [1, 2]


def test_sighup_keeps_the_supervisors_drain_deadline_in_step(tmp_path: Path) -> None:
    """On SIGHUP the supervisor re-reads drain_timeout as its workers do (and keeps its own
    when the file no longer validates), so it never kills a drain the workers may run."""
    from gateway.workers.supervisor import Supervisor

    path = tmp_path / "gw.toml"
    path.write_text("[gateway]\nworkers = 2\ndrain_timeout = 5\n")
    args = build_parser().parse_args(["serve", "--config", str(path), *_listen_flags()])
    config = build_config({"gateway": {"workers": 2, "drain_timeout": 5}}, FLAGS)
    supervisor = Supervisor(config, args, FakeReactor(), 1, tmp_path, coordination="redis")

    path.write_text("[gateway]\nworkers = 2\ndrain_timeout = 42\n")
    supervisor.forward(1)
    after_good = supervisor.drain_timeout
    path.write_text("[gateway]\nworkers = 2\ndrain_timeout = 'soon'\n")
    supervisor.forward(1)

    assert (config.drain_timeout, after_good, supervisor.drain_timeout) == (5, 42, 42)


def _listen_flags() -> list[str]:
    return ["--listen", "127.0.0.1:0", "--backend", "127.0.0.1:1"]
