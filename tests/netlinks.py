"""What the test network does to packets between its hosts: latency, loss, partitions.

Everything happens in the bridge's namespace (the *fabric*, see tests/netns.py), per ordered
pair of hosts (src -> dst):

* **latency**, one way: ``tc netem`` on the bridge port towards dst (an htb class per
  source, with a netem qdisc), or, on kernels built without netem, iptables' NFQUEUE target
  plus ``tests/tools/nfqueue_delay.py``, which holds each packet that long;
* **loss**: iptables ``-m statistic --mode random --probability P -j DROP``;
* **partitions**: iptables ``DROP`` - silent, like a pulled cable or a firewall dropping
  packets, so TCP sees no reset and only timeouts tell.

Bridged IPv4 packets pass the fabric's iptables FORWARD chain because
``net.bridge.bridge-nf-call-iptables`` is set there (per namespace).
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

DELAYER = Path(__file__).resolve().parent / "tools" / "nfqueue_delay.py"
CHAINS = ("GWCUT", "GWLOSS", "GWDELAY")


def run(argv: Sequence[str], stdin: str | None = None, check: bool = True) -> str:
    """Run a tool (``ip``, ``tc``, ``iptables-restore``); its stdout, or RuntimeError."""
    done = subprocess.run(
        list(argv), input=stdin, capture_output=True, text=True, timeout=30, check=False
    )
    if check and done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({done.returncode}): {done.stderr.strip()}")
    return done.stdout


def in_ns(ns: str, *argv: str) -> list[str]:
    """``argv`` run inside namespace ``ns`` (``ip netns exec`` execs it: same PID)."""
    return ["ip", "netns", "exec", ns, *argv]


def delay_method_in(ns: str) -> str | None:
    """How latency can be made here (tried in the scratch namespace ``ns``): "netem",
    "nfqueue", or None; ``GW_NETNS_DELAY`` overrides."""
    forced = os.environ.get("GW_NETNS_DELAY")
    if forced in ("netem", "nfqueue"):
        return forced
    netem = subprocess.run(
        in_ns(ns, "tc", "qdisc", "add", "dev", "lo", "root", "netem", "delay", "1ms"),
        capture_output=True,
        check=False,
    )
    if netem.returncode == 0:
        run(in_ns(ns, "tc", "qdisc", "del", "dev", "lo", "root"), check=False)
        return "netem"
    if Path("/proc/net/netfilter/nfnetlink_queue").exists():
        return "nfqueue"
    return None


@dataclass
class Links:
    """What the fabric does to each ordered pair (src name, dst name)."""

    delay_ms: dict[tuple[str, str], float] = field(default_factory=dict)
    loss: dict[tuple[str, str], float] = field(default_factory=dict)  # probability 0..1
    cut: set[tuple[str, str]] = field(default_factory=set)


class Shaper:
    """Keeps the fabric's iptables chains (and netem qdiscs) in step with a :class:`Links`.

    ``method`` is "netem" or "nfqueue" (latency); loss and cuts are iptables either way.
    """

    def __init__(self, fabric: str, method: str) -> None:
        self.fabric = fabric
        self.method = method
        self._delayer: subprocess.Popen[str] | None = None
        self._bound_queues: set[int] = set()
        self._lock = threading.Lock()

    def start(self) -> None:
        rules = [f":{chain} - [0:0]" for chain in CHAINS]
        rules += [f"-A FORWARD -j {chain}" for chain in CHAINS]
        self._restore(rules)
        if self.method == "nfqueue":
            self._delayer = subprocess.Popen(
                in_ns(self.fabric, sys.executable, str(DELAYER)),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
            assert self._delayer.stdout is not None
            if self._delayer.stdout.readline().strip() != "ready":
                raise RuntimeError("nfqueue_delay.py did not start")

    def _restore(self, lines: list[str]) -> None:
        """Apply iptables rules (``iptables-restore --noflush`` syntax) in the fabric."""
        script = "*filter\n" + "\n".join(lines) + "\nCOMMIT\n"
        run(in_ns(self.fabric, "iptables-restore", "--noflush"), stdin=script)

    def apply(self, links: Links, ip: dict[str, str], ports: dict[str, str]) -> None:
        """Make the fabric's rules (and qdiscs) match ``links``; ``ip`` and ``ports`` map
        host names to their addresses and bridge ports."""
        with self._lock:
            lines = [f"-F {chain}" for chain in CHAINS]
            for src, dst in sorted(links.cut):
                lines.append(f"-A GWCUT -s {ip[src]} -d {ip[dst]} -j DROP")
            for (src, dst), p in sorted(links.loss.items()):
                if p > 0:
                    lines.append(
                        f"-A GWLOSS -s {ip[src]} -d {ip[dst]} "
                        f"-m statistic --mode random --probability {p:.6f} -j DROP"
                    )
            if self.method == "nfqueue":
                for (src, dst), ms in sorted(links.delay_ms.items()):
                    if ms > 0:
                        queue = self._queue_for(ms)
                        lines.append(
                            f"-A GWDELAY -s {ip[src]} -d {ip[dst]} -j NFQUEUE --queue-num {queue}"
                        )
            self._restore(lines)
            if self.method == "netem":
                self._apply_netem(links, ip, ports)

    def _queue_for(self, ms: float) -> int:
        """The NFQUEUE number that holds packets ``ms`` milliseconds: one per 0.1 ms step."""
        queue = round(ms * 10)
        if not 1 <= queue <= 65535:
            raise ValueError(f"delay {ms} ms out of range (0.1 .. 6553 ms)")
        if queue not in self._bound_queues:
            delayer = self._delayer
            assert delayer is not None and delayer.stdin is not None and delayer.stdout
            delayer.stdin.write(f"bind {queue} {queue / 10000:.4f}\n")
            delayer.stdin.flush()
            if delayer.stdout.readline().strip() != f"bound {queue}":
                raise RuntimeError(f"nfqueue_delay.py could not bind queue {queue}")
            self._bound_queues.add(queue)
        return queue

    def _apply_netem(self, links: Links, ip: dict[str, str], ports: dict[str, str]) -> None:
        """On each bridge port (egress = towards its host): an htb class per source host that
        has a delay, each with a netem qdisc, chosen by a u32 match on the source address."""
        for dst, dev in ports.items():
            run(in_ns(self.fabric, "tc", "qdisc", "del", "dev", dev, "root"), check=False)
            sources = [
                (src, ms)
                for (src, to), ms in sorted(links.delay_ms.items())
                if to == dst and ms > 0
            ]
            if not sources:
                continue
            # No shaping: rate far above what a test sends, with an explicit burst (htb
            # computes none at 10 Gbit/s).
            unlimited = "htb rate 10gbit burst 1mb cburst 1mb"
            batch = [
                f"qdisc add dev {dev} root handle 1: htb default 1",
                f"class add dev {dev} parent 1: classid 1:1 {unlimited}",
            ]
            for n, (src, ms) in enumerate(sources, start=10):
                batch += [
                    f"class add dev {dev} parent 1: classid 1:{n} {unlimited}",
                    f"qdisc add dev {dev} parent 1:{n} handle {n}: netem delay {ms}ms limit 100000",
                    f"filter add dev {dev} parent 1: protocol ip prio 1 u32 "
                    f"match ip src {ip[src]}/32 flowid 1:{n}",
                ]
            run(in_ns(self.fabric, "tc", "-batch", "-"), stdin="\n".join(batch) + "\n")

    def close(self) -> None:
        """Stop the delayer (it exits when its stdin closes)."""
        delayer, self._delayer = self._delayer, None
        if delayer is None:
            return
        try:
            assert delayer.stdin is not None
            delayer.stdin.close()
            delayer.wait(timeout=3)
        except (OSError, subprocess.TimeoutExpired):
            delayer.kill()
            delayer.wait(timeout=3)
        if delayer.stdout is not None:
            delayer.stdout.close()
