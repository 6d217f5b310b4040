"""Counting the Redis round trips each gateway node makes, through Redis ``MONITOR``.

``INFO commandstats`` cannot give round trips: commands a Lua script runs are counted as
if clients had sent them, so one EVALSHA looks like four or five commands. MONITOR marks
those ``[0 lua]`` and shows every other command with the client's address, which
:func:`local_ports_to` maps back to the gateway process that owns the socket.
"""

from __future__ import annotations

import os
import re
import socket
import threading
import uuid
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis

from gateway.cluster.scripts import ALL as CLUSTER_SCRIPTS
from gateway.ops.heartbeat import BEAT

# What a node sends whatever the traffic: the heartbeat (the BEAT script, a node-index ZADD
# every 10 beats, an hourly trim; hot-key ZINCRBYs when there are some), the session
# renewals (SET) and the connections' keepalive PING. Everything else is the call path
# (decide/poll/complete/renew scripts, result GETs, and the session checks - PTTL, PUBSUB
# NUMSUB - a node makes only while it follows another node's leader).
BACKGROUND = frozenset(
    {"beat", "set", "zadd", "zremrangebyscore", "zincrby", "zremrangebyrank", "pexpire", "ping"}
)
# EVALSHA of a known script is named after the script ("beat", "decide", "sessions", ...).
_SCRIPTS = {BEAT.sha: "beat"} | {s.sha: s.name for s in CLUSTER_SCRIPTS}
_LINE = re.compile(r'^\S+ \[\d+ ([^\]]*)\] "([^"]*)"(?: "([^"]*)")?')


@dataclass(frozen=True)
class Command:
    client: str  # "127.0.0.1:PORT", or "lua" for commands a script ran
    name: str  # lower case


def local_ports_to(pid: int, remote_port: int) -> set[int]:
    """Local ports of ``pid``'s TCP sockets connected to ``remote_port`` (its Redis links).

    Socket inodes from /proc/<pid>/fd, matched against the namespace's /proc/net/tcp{,6}.
    """
    inodes = set()
    fd_dir = Path(f"/proc/{pid}/fd")
    for fd in os.listdir(fd_dir):
        try:
            link = os.readlink(fd_dir / fd)
        except OSError:  # closed meanwhile
            continue
        if link.startswith("socket:["):
            inodes.add(int(link[8:-1]))
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            parts = line.split()
            local, remote, inode = parts[1], parts[2], int(parts[9])
            if inode in inodes and int(remote.rsplit(":", 1)[1], 16) == remote_port:
                ports.add(int(local.rsplit(":", 1)[1], 16))
    return ports


class CommandLog:
    """Every command Redis receives between :meth:`start` and :meth:`stop`.

    A thread reads the MONITOR stream; ``stop`` sends a unique ECHO from another connection
    and the thread ends when it sees it, so no command sent before ``stop`` is missed.
    """

    def __init__(self, port: int) -> None:
        self.port = port
        self.commands: list[Command] = []
        self._sentinel = f"bench-monitor-end-{uuid.uuid4().hex}"
        self._sock: socket.socket | None = None
        self._reader: Any = None
        self._thread: threading.Thread | None = None

    def start(self) -> CommandLog:
        # A plain socket: MONITOR's replies are inline status lines, and a RESP client
        # library would try to parse the stream as replies to commands it sent.
        self._sock = socket.create_connection(("127.0.0.1", self.port), timeout=10)
        self._sock.sendall(b"MONITOR\r\n")
        self._reader = self._sock.makefile("rb")
        if self._reader.readline().strip() != b"+OK":
            raise RuntimeError("MONITOR refused")
        self._sock.settimeout(None)  # no read timeout: stop() ends the stream
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()
        return self

    def _read(self) -> None:
        for raw in self._reader:
            line = raw.decode("utf-8", "replace").rstrip("\r\n").removeprefix("+")
            if self._sentinel in line:
                return
            if match := _LINE.match(line):
                name = match.group(2).lower()
                if name == "evalsha":
                    name = _SCRIPTS.get(match.group(3) or "", name)
                self.commands.append(Command(match.group(1), name))

    def stop(self) -> list[Command]:
        with redis.Redis(port=self.port, socket_timeout=10) as client:
            client.echo(self._sentinel)
        assert self._thread is not None
        self._thread.join(timeout=30)
        self._reader.close()
        if self._sock is not None:
            self._sock.close()
        return self.commands


def by_owner(commands: list[Command], owners: Mapping[int, str]) -> dict[str, Counter[str]]:
    """Command counts per owner name (``owners``: local port -> name); script-internal
    commands under ``"lua"``, unknown clients (this benchmark's own) under ``"other"``."""
    counts: dict[str, Counter[str]] = {}
    for command in commands:
        if command.client == "lua":
            owner = "lua"
        else:
            port = command.client.rpartition(":")[2]
            owner = owners.get(int(port), "other") if port.isdigit() else "other"
        counts.setdefault(owner, Counter())[command.name] += 1
    return counts


def call_path(counts: Counter[str]) -> int:
    """Round trips that serve calls (everything but heartbeat and keepalive)."""
    return sum(n for name, n in counts.items() if name not in BACKGROUND)


def background(counts: Counter[str]) -> int:
    return sum(n for name, n in counts.items() if name in BACKGROUND)


@dataclass(frozen=True)
class Attributed:
    """A command with the client it is charged to: a script's commands go to its caller."""

    client: str  # "127.0.0.1:PORT" of the sender (of the script, for internal commands)
    name: str  # lower case
    parent: str  # the command the client sent: itself, or the EVALSHA that ran it
    internal: bool  # run by a script, not sent over the network


def attribute(commands: list[Command]) -> list[Attributed]:
    """Charge every script-internal command to the client whose script ran it.

    Redis is single-threaded and MONITOR shows a script's call first, then its commands
    (``[0 lua]``), so an internal command belongs to the last network command before it.
    """
    out: list[Attributed] = []
    sender, parent = "other", "other"
    for command in commands:
        if command.client == "lua":
            out.append(Attributed(sender, command.name, parent, True))
        else:
            sender, parent = command.client, command.name
            out.append(Attributed(sender, command.name, command.name, False))
    return out
