"""What the comparison benchmark sends load to: backends, nginx, haproxy and gateway nodes,
each a child process on loopback that :class:`Fleet` starts and stops by PID.

nginx and haproxy are optional: :mod:`benchmarks.thirdparty` says why one is
missing, and the benchmark then skips it with that reason. Each runs as ONE process (nginx:
``master_process off``, one worker; haproxy: ``-db``, ``nbthread 1``), from a generated
config in a temporary directory, like the single-process gateway node it is compared with.

A baseline gateway (``--baseline-rev``) runs from a temporary ``git worktree`` of that
revision under /tmp: same interpreter and installed dependencies, ``PYTHONPATH`` and working
directory pointing at the worktree, removed again when the fleet stops.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from benchmarks.common import cpu_seconds
from benchmarks.thirdparty import find_haproxy, find_nginx, haproxy_config, nginx_config
from gateway.localredis import free_port
from gateway.processes import (
    REPO_ROOT,
    ExampleBackend,
    GatewayProcess,
    ManagedProcess,
    child_pids,
    example_backend_argv,
    gateway_argv,
    start_process,
    wait_for_port,
)


class Responder(ExampleBackend):
    """A running ``python -m benchmarks.responder``."""

    LINE = r"responder (\S+) listening on (\S+):(\d+) \((\S+)\)"


@dataclass
class Target:
    """One row of the comparison: where the load goes and whose CPU it costs."""

    slug: str
    label: str
    host: str
    port: int
    proxy_pids: list[int]  # the processes between client and backend (none: direct)
    backend_pid: int
    hot: bool = False  # the load sends one argument on every call
    admin_port: int | None = None  # gateway nodes: /metrics for join/cache counters
    backend_delay: float = 0.0
    setup: list[str] = field(default_factory=list)  # how it was started, for the report

    def cpu(self) -> dict[str, float]:
        """CPU seconds so far: the proxy processes together, and the backend."""
        return {
            "proxy": sum(cpu_seconds(pid) for pid in self.proxy_pids),
            "backend": cpu_seconds(self.backend_pid),
        }


# ---------------------------------------------------------------------------------------------
# The fleet
# ---------------------------------------------------------------------------------------------

GATEWAY_MODES: dict[str, tuple[str, dict[str, Any], bool]] = {
    # slug -> (label, [methods.alertSupervisor] policy, hot key)
    "passthrough": ("gateway, passthrough", {"mode": "passthrough"}, False),
    "coalesce": ("gateway, coalesce (distinct keys)", {"mode": "coalesce"}, False),
    "join": ("gateway, hot-key join", {"mode": "coalesce"}, True),
    "cache": ("gateway, cache hit", {"mode": "cache", "ttl": 60}, True),
    "passthrough_2w": ("gateway, passthrough, 2 workers", {"mode": "passthrough"}, False),
    "coalesce_2w": ("gateway, coalesce (distinct keys), 2 workers", {"mode": "coalesce"}, False),
}
WORKERS = {"passthrough_2w": 2, "coalesce_2w": 2}  # slug -> `workers` of the node (default 1)


def policy_toml(policy: dict[str, Any]) -> str:
    lines = ["[methods.alertSupervisor]", *(f"{k} = {json.dumps(v)}" for k, v in policy.items())]
    return "\n".join(lines) + "\n"


class Fleet:
    """Every process of one comparison run; a context manager that stops them all by PID
    (also on an exception or Ctrl-C) and removes the temporary directory and worktree."""

    def __init__(self) -> None:
        self.processes: list[ManagedProcess] = []
        self.targets: list[Target] = []
        self.skipped: dict[str, str] = {}  # target slug -> why it is not in this run
        self.versions: dict[str, str] = {}
        self.tmp = Path(tempfile.mkdtemp(prefix="gw-bench-"))
        self.worktree: Path | None = None

    def __enter__(self) -> Fleet:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        for process in reversed(self.processes):
            process.stop()
        self.processes.clear()
        if self.worktree is not None:
            subprocess.run(
                ["git", "-C", str(REPO_ROOT), "worktree", "remove", "--force", str(self.worktree)],
                capture_output=True,
                check=False,
            )
            subprocess.run(
                ["git", "-C", str(REPO_ROOT), "worktree", "prune"], capture_output=True, check=False
            )
            self.worktree = None
        shutil.rmtree(self.tmp, ignore_errors=True)

    def _own(self, process: ManagedProcess) -> ManagedProcess:
        self.processes.append(process)
        return process

    # -- backends ---------------------------------------------------------------------------

    def responder(self, delay: float = 0.0) -> Responder:
        argv = [sys.executable, "-m", "benchmarks.responder", "--listen", "127.0.0.1:0"]
        argv += ["--delay", f"{delay:g}"]
        return Responder.from_process(self._own(start_process(argv)))

    def example_backend(self) -> ExampleBackend:
        argv = example_backend_argv("supervisor", delay=0.0)
        return ExampleBackend.from_process(self._own(start_process(argv)))

    # -- targets ----------------------------------------------------------------------------

    def add_direct(self, slug: str, label: str, backend: ExampleBackend, setup: str) -> None:
        self.targets.append(
            Target(slug, label, backend.host, backend.port, [], backend.pid, setup=[setup])
        )

    def add_nginx(self, backend: ExampleBackend) -> None:
        found = find_nginx()
        if isinstance(found, str):
            self.skipped["nginx"] = found
            return
        binary, version, module = found
        prefix = self.tmp / "nginx"
        prefix.mkdir()
        port = free_port()
        conf = prefix / "nginx.conf"
        conf.write_text(nginx_config(str(prefix), port, backend.port, module))
        argv = [binary, "-p", str(prefix), "-c", str(conf), "-e", str(prefix / "error.log")]
        process = self._own(start_process(argv))
        try:
            wait_for_port("127.0.0.1", port, timeout=10)
        except TimeoutError:
            log = (prefix / "error.log").read_text() if (prefix / "error.log").exists() else ""
            self.skipped["nginx"] = f"nginx did not listen: {process.describe_output()} {log}"
            process.stop()
            return
        self.versions["nginx"] = f"nginx {version}"
        config = nginx_config("<tmp>", "<port>", "<responder>", module)
        self.targets.append(
            Target(
                "nginx",
                "nginx stream proxy",
                "127.0.0.1",
                port,
                [process.pid],
                backend.pid,
                setup=[f"`{binary} -p <tmp> -c <tmp>/nginx.conf`:", "```nginx", config, "```"],
            )
        )

    def add_haproxy(self, backend: ExampleBackend) -> None:
        found = find_haproxy()
        if isinstance(found, str):
            self.skipped["haproxy"] = found
            return
        binary, version = found
        port = free_port()
        conf = self.tmp / "haproxy.cfg"
        conf.write_text(haproxy_config(port, backend.port))
        process = self._own(start_process([binary, "-db", "-f", str(conf)]))
        try:
            wait_for_port("127.0.0.1", port, timeout=10)
        except TimeoutError:
            self.skipped["haproxy"] = f"haproxy did not listen: {process.describe_output()}"
            process.stop()
            return
        self.versions["haproxy"] = f"HAProxy {version}"
        config = haproxy_config("<port>", "<responder>")
        self.targets.append(
            Target(
                "haproxy",
                "haproxy, tcp mode",
                "127.0.0.1",
                port,
                [process.pid],
                backend.pid,
                setup=[f"`{binary} -db -f <tmp>/haproxy.cfg`:", "```haproxy", config, "```"],
            )
        )

    def add_gateway(
        self,
        mode: str,
        backend: ExampleBackend,
        *,
        delay: float = 0.0,
        baseline: Path | None = None,
        rev: str = "",
    ) -> None:
        """A gateway node in ``mode`` (a GATEWAY_MODES slug), from this tree or ``baseline``."""
        label, policy, hot = GATEWAY_MODES[mode]
        slug = f"base_{mode}" if baseline else mode
        if baseline:
            label = f"baseline {rev}: {label.removeprefix('gateway, ')}"
        config = self.tmp / f"{slug}.toml"
        config.write_text(policy_toml(policy))
        workers = WORKERS.get(mode, 1)
        flags = ["--workers", str(workers)] if workers > 1 else []
        argv = gateway_argv(
            *flags, backend=backend.address, config=config, node_id=f"bench-{slug}", admin=True
        )
        env = {"PYTHONPATH": str(baseline)} if baseline else None
        process = self._own(start_process(argv, env=env, cwd=baseline or REPO_ROOT))
        node = GatewayProcess.from_process(process, timeout=60.0)
        # A multi-worker node is its supervisor, its workers and its private redis-server:
        # the CPU of all of them is the node's.
        pids = [node.pid, *child_pids(node.pid)] if workers > 1 else [node.pid]
        where = f"PYTHONPATH=<worktree of {rev}> " if baseline else ""
        setup = [
            f"`{where}gateway serve --listen 127.0.0.1:0 --backend <responder"
            f"{' --delay ' + format(delay, 'g') if delay else ''}> --admin 127.0.0.1:0"
            f"{' ' + ' '.join(flags) if flags else ''}"
            f" --config {slug}.toml` with `{' '.join(policy_toml(policy).split())}`"
        ]
        self.targets.append(
            Target(
                slug,
                label,
                node.host,
                node.port,
                pids,
                backend.pid,
                hot=hot,
                admin_port=node.admin_port,
                backend_delay=delay,
                setup=setup,
            )
        )

    def checkout(self, rev: str) -> Path:
        """A temporary worktree of ``rev`` (removed by :meth:`close`), checked to be what a
        gateway started with ``PYTHONPATH`` pointing at it really imports."""
        path = Path(tempfile.mkdtemp(prefix="gw-bench-baseline-"))
        path.rmdir()  # git worktree add wants to create it
        done = subprocess.run(
            ["git", "-C", str(REPO_ROOT), "worktree", "add", "--detach", str(path), rev],
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"git worktree add {rev} failed: {done.stderr.strip()}")
        self.worktree = path
        probe = subprocess.run(
            [sys.executable, "-c", "import gateway; print(gateway.__file__)"],
            capture_output=True,
            text=True,
            cwd=path,
            env={**os.environ, "PYTHONPATH": str(path)},
            check=False,
        )
        if not probe.stdout.startswith(str(path)):
            raise RuntimeError(f"the baseline imports {probe.stdout.strip()!r}, not {path}")
        return path
