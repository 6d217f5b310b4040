"""The hostile side of ``benchmarks.hostile``: clients that misbehave, one thread per kind.

Every kind runs in the hostile process (a process of its own, so its threads never take the
GIL from the legit load generator) until ``stop`` is set, and counts what it did in a
:class:`Tally`. Calls are encoded by the stock thrift library (``benchmarks.wire``), THeader
bombs by hand (:func:`bomb_frame`).

* ``mutated``: a valid framed call with 1-3 bytes changed (now and then in the length
  prefix), read until an answer, a close or 0.5 s, then a new connection;
* ``partial``: a frame announcing ``partial_bytes`` of which all but the last byte are sent,
  then silence, held open (defect 4: what a partial frame pins);
* ``slowloris``: valid calls dribbled one byte per ``drip`` seconds over many connections;
* ``nonreader``: calls pipelined without ever reading a reply, until the socket blocks;
* ``pipeliner``: bursts of ``burst`` valid calls on one connection, then every reply read;
* ``bomb``: THeader frames listing zlib ``bomb_transforms`` times (defect 3).
"""

from __future__ import annotations

import random
import socket
import struct
import threading
import time
import zlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from benchmarks.wire import build_callset
from gateway.thrift.message import encode_varint

KINDS = ("mutated", "partial", "slowloris", "nonreader", "pipeliner", "bomb")


@dataclass(frozen=True)
class HostileSpec:
    host: str
    port: int
    kinds: tuple[str, ...] = KINDS
    connections: int = 8  # per kind that holds connections (partial, slowloris, nonreader)
    partial_bytes: int = 1 << 20
    drip: float = 0.2
    burst: int = 500
    bomb_transforms: int = 2000
    bomb_pause: float = 0.5


Tally = Counter[str]


def _calls(n: int) -> list[bytes]:
    """``n`` framed binary alertSupervisor calls (distinct arguments), seqid 1 each."""
    width = len(str(n))
    return list(
        build_callset(
            "alertSupervisor", "binary", "framed", [f"h-{i:0{width}d}" for i in range(n)]
        ).calls
    )


def _connect(spec: HostileSpec, tally: Tally) -> socket.socket | None:
    try:
        sock = socket.create_connection((spec.host, spec.port), timeout=2.0)
    except OSError:
        tally["connect_failed"] += 1
        return None
    tally["connections"] += 1
    return sock


def _read_some(sock: socket.socket, timeout: float, tally: Tally) -> None:
    """Read until the peer closes, ``timeout`` passes or one recv returns data."""
    sock.settimeout(timeout)
    try:
        data = sock.recv(65536)
    except TimeoutError:
        tally["no_answer"] += 1
    except OSError:
        tally["reset"] += 1
    else:
        tally["answered" if data else "closed_by_gateway"] += 1


def mutated(spec: HostileSpec, stop: threading.Event, tally: Tally) -> None:
    rng = random.Random(1)
    calls = _calls(64)
    while not stop.is_set():
        frame = bytearray(rng.choice(calls))
        for _ in range(rng.randrange(1, 4)):
            at = rng.randrange(len(frame)) if rng.random() < 0.1 else rng.randrange(4, len(frame))
            frame[at] = rng.randrange(256)
        sock = _connect(spec, tally)
        if sock is None:
            time.sleep(0.1)
            continue
        with sock:
            try:
                sock.sendall(frame)
            except OSError:
                tally["reset"] += 1
                continue
            tally["sent"] += 1
            _read_some(sock, 0.5, tally)


def partial(spec: HostileSpec, stop: threading.Event, tally: Tally) -> None:
    call = _calls(1)[0][4:]
    size = max(spec.partial_bytes, len(call) + 1)
    # A valid call padded (after its STOP) to ``size``: only the last byte is missing.
    frame = size.to_bytes(4, "big") + call + bytes(size - len(call) - 1)
    held: list[socket.socket] = []
    try:
        while not stop.is_set():
            while len(held) < spec.connections and not stop.is_set():
                sock = _connect(spec, tally)
                if sock is None:
                    break
                try:
                    sock.sendall(frame)
                    tally["sent_partial"] += 1
                    held.append(sock)
                except OSError:
                    tally["reset"] += 1
                    sock.close()
            stop.wait(1.0)
            # A gateway that closed one (a body deadline, a budget) gets a new one.
            for sock in list(held):
                sock.settimeout(0)
                try:
                    if sock.recv(1) == b"":
                        tally["closed_by_gateway"] += 1
                        held.remove(sock)
                        sock.close()
                except BlockingIOError:
                    pass
                except OSError:
                    tally["reset"] += 1
                    held.remove(sock)
                    sock.close()
    finally:
        for sock in held:
            sock.close()


def slowloris(spec: HostileSpec, stop: threading.Event, tally: Tally) -> None:
    calls = _calls(spec.connections)
    conns: list[tuple[socket.socket, bytes, int]] = []
    try:
        while not stop.is_set():
            while len(conns) < spec.connections:
                sock = _connect(spec, tally)
                if sock is None:
                    break
                conns.append((sock, calls[len(conns) % len(calls)], 0))
            for i, (sock, call, pos) in enumerate(conns):
                try:
                    sock.send(call[pos : pos + 1])
                except OSError:
                    tally["reset"] += 1
                    sock.close()
                    conns[i] = (sock, b"", -1)
                    continue
                tally["dripped"] += 1
                conns[i] = (sock, call, (pos + 1) % len(call))
                if pos + 1 == len(call):
                    tally["completed_slowly"] += 1
            for sock, _, pos in conns:
                if pos < 0:
                    sock.close()
            conns = [c for c in conns if c[2] >= 0]
            stop.wait(spec.drip)
    finally:
        for sock, _, _ in conns:
            sock.close()


def nonreader(spec: HostileSpec, stop: threading.Event, tally: Tally) -> None:
    # getPoem replies are longer than the calls, so the gateway's writes back up first.
    stream = b"".join(build_callset("getPoem", "binary", "framed", ["p"]).calls * 256)
    held: list[socket.socket] = []
    try:
        while len(held) < spec.connections and not stop.is_set():
            sock = _connect(spec, tally)
            if sock is None:
                break
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            held.append(sock)
        while not stop.is_set():
            for sock in held:
                sock.settimeout(0)
                try:
                    sent = sock.send(stream)
                    tally["bytes_sent"] += sent
                except BlockingIOError:
                    tally["blocked"] += 1
                except OSError:
                    tally["reset"] += 1
            stop.wait(0.2)
    finally:
        for sock in held:
            sock.close()


def pipeliner(spec: HostileSpec, stop: threading.Event, tally: Tally) -> None:
    burst = b"".join(_calls(spec.burst))
    reply_size = build_callset(
        "alertSupervisor", "binary", "framed", ["h-" + "0" * len(str(spec.burst))]
    ).reply_size
    while not stop.is_set():
        sock = _connect(spec, tally)
        if sock is None:
            time.sleep(0.1)
            continue
        with sock:
            while not stop.is_set():
                try:
                    sock.sendall(burst)
                    _drain(sock, reply_size * spec.burst)
                except OSError:
                    tally["reset"] += 1
                    break
                tally["bursts"] += 1


def _drain(sock: socket.socket, size: int) -> None:
    sock.settimeout(10.0)
    got = 0
    while got < size:
        data = sock.recv(1 << 16)
        if not data:
            raise ConnectionResetError("closed mid-burst")
        got += len(data)


def bomb_frame(call: bytes, transforms: int) -> bytes:
    """A THeader frame (binary, seqid 1) listing zlib ``transforms`` times, its payload
    compressed that many times: built by hand, as ``encode_frame`` refuses to list one
    transform twice since the cap of issue 16 (a hostile client does not ask)."""
    payload = call
    for _ in range(transforms):
        payload = zlib.compress(payload)
    header = bytearray(encode_varint(0) + encode_varint(transforms) + b"\x01" * transforms)
    header += bytes(-len(header) % 4)
    fixed = struct.pack(">HHiH", 0x0FFF, 0, 1, len(header) // 4)
    body = fixed + bytes(header) + payload
    return struct.pack(">i", len(body)) + body


def bomb(spec: HostileSpec, stop: threading.Event, tally: Tally) -> None:
    frame = bomb_frame(_calls(1)[0][4:], spec.bomb_transforms)
    while not stop.is_set():
        sock = _connect(spec, tally)
        if sock is None:
            time.sleep(0.1)
            continue
        with sock:
            try:
                sock.sendall(frame)
            except OSError:
                tally["reset"] += 1
                continue
            tally["bombs"] += 1
            _read_some(sock, 5.0, tally)
        stop.wait(spec.bomb_pause)


BEHAVIOURS: dict[str, Callable[[HostileSpec, threading.Event, Tally], None]] = {
    "mutated": mutated,
    "partial": partial,
    "slowloris": slowloris,
    "nonreader": nonreader,
    "pipeliner": pipeliner,
    "bomb": bomb,
}


def run_hostile(
    spec: HostileSpec, stop: threading.Event, started: Callable[[], None] = lambda: None
) -> dict[str, dict[str, int]]:
    """Every kind in ``spec.kinds`` in a thread of its own until ``stop``; their tallies.
    ``started`` is called once every thread runs."""
    tallies = {kind: Tally() for kind in spec.kinds}
    threads = [
        threading.Thread(target=BEHAVIOURS[k], args=(spec, stop, tallies[k]), name=k, daemon=True)
        for k in spec.kinds
    ]
    for thread in threads:
        thread.start()
    started()
    for thread in threads:
        thread.join()
    return {kind: dict(tally) for kind, tally in tallies.items()}
