"""Separate hosts on one machine: Linux network namespaces, a bridge, latency, loss, partitions.

Every host of a test (Redis, each gateway node, the backend, the clients) gets a network
namespace of its own, with one interface ``eth0`` at ``10.77.0.N/24``. Its other end is a
port of one bridge, which lives in a namespace of its own too (the *fabric*): the test
network has no link to the machine's own network, so nothing a test does there (addresses,
routes, iptables rules) touches the host, and no traffic leaves the namespaces it created.

The fabric is where the network misbehaves, per ordered pair of hosts: one-way latency,
loss and silent partitions (:meth:`Network.delay`, :meth:`Network.zone_delays`,
:meth:`Network.lose`, :meth:`Network.cut`, :meth:`Network.heal`; how: tests/netlinks.py).
Latency is ``tc netem`` where the kernel has it, else NFQUEUE and a userspace delayer
(:func:`delay_method`; ``GW_NETNS_DELAY=netem|nfqueue`` forces one).

Processes run in a host with ``ip netns exec NS argv...``, which execs ``argv``: the PID
is the process's own, so it is stopped by PID. The test process itself reaches into a host
with :meth:`Host.entered`: ``setns(2)`` of the calling *thread* only, so a socket opened in
that block belongs to that host (sockets keep their namespace for life), and the thread
returns to its own namespace afterwards.

Names carry the test process's PID (``gwn<pid>x<random>-<host>``); :meth:`Network.close`
stops every process it started (and any process left in its namespaces), and deletes its
namespaces. A run killed before it could clean up leaves namespaces whose PID is dead: the
next :class:`Network` removes those first.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import re
import secrets
import shutil
import signal
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from netlinks import Links, Shaper, delay_method_in, in_ns, run

from gateway.processes import GatewayProcess, ManagedProcess, gateway_argv, start_process

PREFIX = "gwn"
SUBNET = "10.77.0"
CLONE_NEWNET = 0x40000000
T = TypeVar("T")

_libc = ctypes.CDLL(None, use_errno=True)


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


# -- what this machine can do -----------------------------------------------------------------


@functools.cache
def unavailable() -> str | None:
    """Why namespace tests cannot run here (a skip reason), or None when they can."""
    if sys.platform != "linux":
        return "needs Linux network namespaces"
    if os.geteuid() != 0:
        return "needs root: creates network namespaces, veth pairs, a bridge, iptables rules"
    for tool in ("ip", "tc", "iptables", "iptables-restore"):
        if shutil.which(tool) is None:
            return f"needs `{tool}` (Debian: iproute2, iptables; .ci/run installs them)"
    probe = f"{PREFIX}{os.getpid()}xprobe"
    try:
        run(["ip", "netns", "add", probe])
    except RuntimeError as exc:
        return f"cannot create a network namespace: {exc}"
    try:
        run(["ip", "-n", probe, "link", "add", "br0", "type", "bridge"])
        if not Path("/proc/sys/net/bridge/bridge-nf-call-iptables").exists():
            return "the kernel has no br_netfilter (bridged packets would skip iptables)"
        run(in_ns(probe, "iptables", "-L", "FORWARD"))
        if delay_method_in(probe) is None:
            return "the kernel has neither netem nor NFQUEUE to delay packets with"
    except RuntimeError as exc:
        return f"network namespace set-up failed: {exc}"
    finally:
        run(["ip", "netns", "del", probe], check=False)
    return None


@functools.cache
def delay_method() -> str:
    """The way latency is made here: "netem" if the kernel has it, else "nfqueue"."""
    probe = f"{PREFIX}{os.getpid()}xdelay"
    run(["ip", "netns", "add", probe])
    try:
        method = delay_method_in(probe)
    finally:
        run(["ip", "netns", "del", probe], check=False)
    if method is None:
        raise RuntimeError("no way to delay packets here (see unavailable())")
    return method


def sweep_stale() -> list[str]:
    """Delete the namespaces of earlier runs whose test process is gone; returns their names.

    Only names this module makes (``gwn<pid>x...``) with a dead ``<pid>`` are touched, and
    only the processes still inside those namespaces are killed.
    """
    removed = []
    for line in run(["ip", "netns", "list"], check=False).splitlines():
        name = line.split()[0] if line.split() else ""
        match = re.fullmatch(rf"{PREFIX}(\d+)x\w+(-[\w-]+)?", name)
        if match is None or _alive(int(match.group(1))):
            continue
        _kill_inside(name)
        run(["ip", "netns", "del", name], check=False)
        removed.append(name)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _kill_inside(ns: str) -> None:
    """SIGKILL, by PID, every process still in namespace ``ns`` (the test's own leftovers)."""
    for pid in run(["ip", "netns", "pids", ns], check=False).split():
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pid), signal.SIGKILL)


# -- hosts ------------------------------------------------------------------------------------


@dataclass(eq=False)
class Host:
    """One "machine": a namespace with ``eth0`` at :attr:`ip`, in zone :attr:`zone`."""

    network: Network
    name: str
    ns: str
    ip: str
    zone: str
    port: str  # its interface on the bridge (in the fabric namespace)

    def argv(self, argv: Sequence[str]) -> list[str]:
        """``argv`` run inside this host (``ip netns exec``, which execs it: same PID)."""
        return in_ns(self.ns, *argv)

    def start(self, argv: Sequence[str], env: dict[str, str] | None = None) -> ManagedProcess:
        """Start ``argv`` inside this host; :meth:`Network.close` stops it if the test did not."""
        return self.network.track(start_process(self.argv(argv), env=env))

    @contextlib.contextmanager
    def entered(self) -> Iterator[None]:
        """Run the block with the calling thread inside this host's network namespace."""
        own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        try:
            target = os.open(f"/run/netns/{self.ns}", os.O_RDONLY)
            try:
                _setns(target)
            finally:
                os.close(target)
            try:
                yield
            finally:
                _setns(own)
        finally:
            os.close(own)

    def run(self, fn: Callable[[], T]) -> T:
        """``fn()`` called inside this host (see :meth:`entered`)."""
        with self.entered():
            return fn()

    def __repr__(self) -> str:
        return f"Host({self.name} {self.ip} zone {self.zone})"


Hosts = Host | Iterable[Host]


def _many(hosts: Hosts) -> list[Host]:
    return [hosts] if isinstance(hosts, Host) else list(hosts)


# -- the network ------------------------------------------------------------------------------


class Network:
    """A test network: the fabric namespace with its bridge, and the hosts added to it.

    Use as a context manager, or call :meth:`close` (in a fixture finalizer): it stops the
    processes started through it and removes every namespace it made, also after a failure.
    """

    def __init__(self, method: str | None = None) -> None:
        sweep_stale()
        self.tag = f"{PREFIX}{os.getpid()}x{secrets.token_hex(3)}"
        self.fabric = f"{self.tag}-net"
        self.method = method or delay_method()
        self.hosts: dict[str, Host] = {}
        self.links = Links()
        self._processes: list[ManagedProcess] = []
        self._closers: list[Callable[[], object]] = []
        self._namespaces: list[str] = []
        self.shaper = Shaper(self.fabric, self.method)
        try:
            self._make_fabric()
        except BaseException:
            self.close()
            raise

    def _add_namespace(self, name: str) -> None:
        run(["ip", "netns", "add", name])
        self._namespaces.append(name)
        run(["ip", "-n", name, "link", "set", "lo", "up"])

    def _make_fabric(self) -> None:
        self._add_namespace(self.fabric)
        run(["ip", "-n", self.fabric, "link", "add", "br0", "type", "bridge"])
        run(["ip", "-n", self.fabric, "link", "set", "br0", "up"])
        with self._fabric_entered():
            # Per namespace since Linux 5.3: bridged IPv4 packets go through this
            # namespace's iptables, where the loss, cut and delay rules are.
            Path("/proc/sys/net/bridge/bridge-nf-call-iptables").write_text("1\n")
        self.shaper.start()

    @contextlib.contextmanager
    def _fabric_entered(self) -> Iterator[None]:
        fabric_host = Host(self, "fabric", self.fabric, "", "", "")
        with fabric_host.entered():
            yield

    # -- hosts --------------------------------------------------------------------------------

    def add_host(self, name: str, zone: str = "a") -> Host:
        """A new host ``name`` (its namespace ``<tag>-<name>``) plugged into the bridge."""
        if name in self.hosts or not re.fullmatch(r"[a-z0-9-]{1,20}", name):
            raise ValueError(f"bad or duplicate host name {name!r}")
        index = len(self.hosts) + 2  # .1 is left free, like a gateway address
        host = Host(self, name, f"{self.tag}-{name}", f"{SUBNET}.{index}", zone, f"p{index}")
        self._add_namespace(host.ns)
        # Both ends are created directly in their namespaces: nothing appears in the host's.
        run(["ip", "link", "add", "eth0", "netns", host.ns, "type", "veth",
              "peer", "name", host.port, "netns", self.fabric])  # fmt: skip
        run(["ip", "-n", self.fabric, "link", "set", host.port, "master", "br0"])
        run(["ip", "-n", self.fabric, "link", "set", host.port, "up"])
        run(["ip", "-n", host.ns, "addr", "add", f"{host.ip}/24", "dev", "eth0"])
        run(["ip", "-n", host.ns, "link", "set", "eth0", "up"])
        self.hosts[name] = host
        return host

    def track(self, process: ManagedProcess) -> ManagedProcess:
        """Stop ``process`` (by PID) in :meth:`close` if it is still running then."""
        self._processes.append(process)
        return process

    def on_close(self, stop: Callable[[], object]) -> None:
        """Call ``stop`` first thing in :meth:`close` (for processes started elsewhere)."""
        self._closers.append(stop)

    def start_gateway(
        self, host: Host, *extra: str, config: Path, node_id: str, timeout: float = 30.0
    ) -> GatewayProcess:
        """``gateway serve`` inside ``host``, listening (and admin) on its address."""
        argv = gateway_argv(*extra, config=config, node_id=node_id, admin=True, host=host.ip)
        return GatewayProcess.from_process(host.start(argv), timeout)

    # -- what the network does ----------------------------------------------------------------

    def delay(self, a: Hosts, b: Hosts, ms: float) -> None:
        """One-way latency of ``ms`` milliseconds from every host of ``a`` to every host of
        ``b`` and back (so a round trip between them takes ``2 * ms``)."""
        for x, y in self._pairs(a, b):
            self.links.delay_ms[(x.name, y.name)] = ms
            self.links.delay_ms[(y.name, x.name)] = ms
        self.apply()

    def zone_delays(self, within: float, between: float) -> None:
        """One-way latency between every two hosts: ``within`` ms in one zone, else
        ``between`` ms."""
        for x in self.hosts.values():
            for y in self.hosts.values():
                if x is not y:
                    ms = within if x.zone == y.zone else between
                    self.links.delay_ms[(x.name, y.name)] = ms
        self.apply()

    def lose(self, a: Hosts, b: Hosts, probability: float) -> None:
        """Drop each packet between ``a`` and ``b`` (both ways) with ``probability``."""
        for x, y in self._pairs(a, b):
            self.links.loss[(x.name, y.name)] = probability
            self.links.loss[(y.name, x.name)] = probability
        self.apply()

    def cut(self, a: Hosts, b: Hosts) -> None:
        """Partition: every packet between ``a`` and ``b`` (both ways) is dropped silently."""
        for x, y in self._pairs(a, b):
            self.links.cut |= {(x.name, y.name), (y.name, x.name)}
        self.apply()

    def heal(self, a: Hosts | None = None, b: Hosts | None = None) -> None:
        """Undo :meth:`cut` between ``a`` and ``b`` (both omitted: every cut)."""
        if a is None or b is None:
            self.links.cut.clear()
        else:
            for x, y in self._pairs(a, b):
                self.links.cut -= {(x.name, y.name), (y.name, x.name)}
        self.apply()

    def _pairs(self, a: Hosts, b: Hosts) -> list[tuple[Host, Host]]:
        return [(x, y) for x in _many(a) for y in _many(b) if x is not y]

    def apply(self) -> None:
        """Make the fabric match :attr:`links` (called by every change above)."""
        ip = {name: host.ip for name, host in self.hosts.items()}
        ports = {name: host.port for name, host in self.hosts.items()}
        self.shaper.apply(self.links, ip, ports)

    # -- teardown -----------------------------------------------------------------------------

    def namespaces(self) -> list[str]:
        """The namespaces this network made (and has not deleted yet)."""
        return list(self._namespaces)

    def close(self) -> None:
        """Stop every process started through it, then delete every namespace it made."""
        for stop in reversed(self._closers):
            with contextlib.suppress(Exception):
                stop()
        self._closers.clear()
        for process in reversed(self._processes):
            if process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(process.pid, signal.SIGCONT)  # a test may have paused it
            with contextlib.suppress(Exception):
                process.stop(timeout=3.0)
        self._processes.clear()
        self.shaper.close()
        for ns in reversed(self._namespaces):
            _kill_inside(ns)
            run(["ip", "netns", "del", ns], check=False)
        self._namespaces.clear()

    def __enter__(self) -> Network:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> float:
    """Poll ``predicate`` every 50 ms; seconds it took, or ``AssertionError`` after
    ``timeout``."""
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"{what}: not reached in {timeout}s")
        time.sleep(0.05)
    return time.monotonic() - start
