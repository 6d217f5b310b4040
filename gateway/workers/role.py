"""The worker side of a multi-worker node: ``gateway serve`` started by its supervisor.

The supervisor starts each worker as ``gateway serve <the node's own flags> --worker-index I
--worker-fd 3 --worker-admin PATH [--worker-redis URL]`` (hidden flags). ``run_serve`` then
wires a node as usual, with these differences (all decided here):

* the client port is the listening socket inherited as fd ``--worker-fd`` (the supervisor
  bound it with SO_REUSEPORT; see :mod:`gateway.workers.sockets`), not a new bind;
* no admin port of its own: ``/metrics``, ``/healthz`` and ``/state`` (everything the
  supervisor aggregates, as one JSON object) are served on the UNIX socket ``PATH``;
* with ``--worker-redis`` the node has no ``[redis]`` of its own and the workers coordinate
  through the supervisor's private Redis at that ``unix://`` URL; coordination modes are then
  named ``private`` / ``private-polling`` (``local`` when it is down);
* the node's heartbeat is the supervisor's: a worker's own beats carry only its hot keys;
* its listening line goes to the supervisor (stdout is a pipe), which takes it for "ready";
* its stdin is a pipe from the supervisor: end of file means the supervisor is gone, and
  the worker drains and exits as on SIGTERM (no orphaned workers after a SIGKILL).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import shutil
import signal
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IReadDescriptor
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from zope.interface import implementer

from gateway.config import GatewayConfig, RedisConfig
from gateway.observe import Observations
from gateway.proxy.admin import admin_site
from gateway.proxy.metrics import Metrics
from gateway.stats import NodeStats

log = logging.getLogger("gateway.worker")

# A worker prints the listening line of any node (to its supervisor, which reads it as
# "this worker serves"); the node's own line is the supervisor's.
READY_PATTERN = r"^gateway \S+ listening on "

_PRIVATE_MODES = {"cluster": "private", "cluster-polling": "private-polling"}


@dataclass(frozen=True)
class WorkerRole:
    index: int
    listen_fd: int
    admin_path: str
    private_redis: str | None = None  # unix:// URL of the node's private Redis

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> WorkerRole | None:
        """The role the hidden ``--worker-*`` flags describe; None in a plain ``serve``."""
        index = getattr(args, "worker_index", None)
        if index is None:
            return None
        if args.worker_fd is None or not args.worker_admin:
            raise SystemExit("gateway: --worker-index needs --worker-fd and --worker-admin")
        return cls(index, args.worker_fd, args.worker_admin, args.worker_redis)

    def argv(self) -> list[str]:
        """The hidden flags that give a ``serve`` this role (what the supervisor appends)."""
        flags = ["--worker-index", str(self.index), "--worker-fd", str(self.listen_fd)]
        flags += ["--worker-admin", self.admin_path]
        if self.private_redis is not None:
            flags += ["--worker-redis", self.private_redis]
        return flags

    def configure(self, config: GatewayConfig) -> GatewayConfig:
        """The node's config as this worker runs it (also what a config reload must apply
        to the file it re-reads): no admin port, one process, the private Redis if any."""
        redis = config.redis
        if self.private_redis is not None:
            # Replies of any size are shared: the private Redis is on this machine.
            redis = RedisConfig(url=self.private_redis, max_shared_bytes=config.max_frame_size)
        return replace(config, admin=None, workers=1, redis=redis)

    def log_label(self, node_id: str) -> str:
        return f"{node_id}/w{self.index}"

    def node_mode(self, mode: Callable[[], str]) -> Callable[[], str]:
        """The coordination mode this worker reports (private Redis modes renamed)."""
        if self.private_redis is None:
            return mode
        return lambda: _PRIVATE_MODES.get(mode(), mode())

    def serve(
        self,
        reactor: Any,
        node: Any,
        extra: Callable[[], Mapping[str, float | str]],
    ) -> None:
        """Serve the private admin socket and watch the parent.

        The SIGHUP the supervisor forwards is the config reload handler ``serve`` installed
        before calling this.

        ``node`` is the worker's :class:`~gateway.proxy.node.GatewayNode`; ``extra`` its
        coordinator's heartbeat fields.
        """
        site = worker_site(node.metrics, node.health, node.stats, node.observations, extra)
        with contextlib.suppress(FileNotFoundError):  # left by a crashed predecessor
            os.unlink(self.admin_path)
        reactor.listenUNIX(self.admin_path, site, mode=0o600)
        reactor.addReader(_ParentWatch(reactor, os.path.dirname(self.admin_path)))


def worker_site(
    metrics: Metrics,
    health: Callable[[], dict[str, object]],
    stats: NodeStats,
    observations: Observations,
    extra: Callable[[], Mapping[str, float | str]],
) -> Any:
    """/metrics and /healthz as on a node, plus /state: one JSON reading for the supervisor
    (pid, health, NodeStats, heartbeat extras, error kinds and the /metrics text)."""
    site = admin_site(metrics, health)

    def state() -> dict[str, object]:
        return {
            "pid": os.getpid(),
            "health": health(),
            "stats": stats.snapshot(),
            "extra": dict(extra()),
            "errors": observations.errors.snapshot(),
            "metrics": metrics.render().decode("utf-8"),
        }

    site.resource.putChild(b"state", _JsonLeaf(state))
    return site


class _JsonLeaf(Resource):
    isLeaf = True

    def __init__(self, body: Callable[[], dict[str, object]]) -> None:
        Resource.__init__(self)  # type: ignore[no-untyped-call]  # twisted.web is untyped
        self._body = body

    def render_GET(self, request: Any) -> bytes:
        request.setHeader(b"content-type", b"application/json")
        return json.dumps(self._body()).encode()


@implementer(IReadDescriptor)
class _ParentWatch:
    """Reads the worker's stdin, a pipe the supervisor holds open; end of file means the
    supervisor is gone (even SIGKILLed), and the worker drains and exits as on SIGTERM."""

    def __init__(self, reactor: Any, workdir: str) -> None:
        self._reactor = reactor
        self._workdir = workdir  # the supervisor's private directory
        self._gone = False
        os.set_blocking(0, False)

    def fileno(self) -> int:
        return 0

    def doRead(self) -> None:
        try:
            data = os.read(0, 4096)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._reactor.removeReader(self)
            self._supervisor_gone()

    def connectionLost(self, reason: Failure) -> None:
        # The reactor calls this on a hang-up (ConnectionDone: the supervisor closed the
        # pipe by dying) and when it shuts down (ConnectionLost: nothing to do).
        if reason.check(ConnectionDone):  # type: ignore[no-untyped-call]  # Twisted: untyped
            self._supervisor_gone()

    def _supervisor_gone(self) -> None:
        if not self._gone:
            self._gone = True
            log.warning("supervisor gone: draining")
            # Nobody reads our stdout any more: the drain's summary line would fail with
            # EPIPE and the worker never exit.
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 1)
            os.close(devnull)
            # Nobody else will remove the dead supervisor's directory (sockets, Redis dir).
            shutil.rmtree(self._workdir, ignore_errors=True)
            os.kill(os.getpid(), signal.SIGTERM)

    def logPrefix(self) -> str:
        return "parent-watch"
