"""Redis Cluster's pure parts: key -> slot, which argument is the key, the slot map, redirects.

* ``key_slot``: CRC16 (XMODEM) of the key's hash tag (the part between the first ``{``
  and the next ``}``, if not empty) modulo 16384, as Redis computes it.
* ``command_key``: the argument that decides a command's slot. The gateway only sends
  single-key commands and scripts whose keys all share one hash tag, so the first key is
  the whole story; the table lists what the gateway sends and a command not in it is
  taken to have its key first (wrong guesses cost a MOVED, never a wrong answer).
* ``SlotMap``: who serves each slot, from ``CLUSTER SLOTS``.
* ``parse_redirect``: ``MOVED <slot> <host>:<port>`` / ``ASK <slot> <host>:<port>``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from gateway.redis.url import HostPort

SLOTS = 16384

Arg = str | bytes | int | float


def _crc16_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else (crc << 1)
        table.append(crc & 0xFFFF)
    return table


_CRC16 = _crc16_table()


def crc16(data: bytes) -> int:
    """CRC16-CCITT (XMODEM): polynomial 0x1021, initial value 0 - Redis Cluster's hash."""
    crc = 0
    for byte in data:
        crc = ((crc << 8) & 0xFFFF) ^ _CRC16[((crc >> 8) ^ byte) & 0xFF]
    return crc


def hash_tag(key: bytes) -> bytes:
    """The part of ``key`` that is hashed: the first non-empty ``{...}``, else the key."""
    start = key.find(b"{")
    if start >= 0:
        end = key.find(b"}", start + 1)
        if end > start + 1:
            return key[start + 1 : end]
    return key


def key_slot(key: Arg) -> int:
    """The cluster slot (0..16383) of ``key``."""
    return crc16(hash_tag(_bytes(key))) % SLOTS


# Commands without a key: PING and friends go to any primary, SCRIPT to every primary
# (a script must be loaded where it runs). PUBLISH names a channel, not a key; classic
# pub/sub messages travel the whole cluster whichever node receives them.
KEYLESS = frozenset({"PING", "ECHO", "INFO", "TIME", "CLUSTER", "SCRIPT", "PUBLISH", "ROLE"})
BROADCAST = frozenset({"SCRIPT"})
# Position of the first key for the commands the gateway sends (default: 1).
# EVAL/EVALSHA: ``EVALSHA sha numkeys key...``; with numkeys 0 a script is keyless.
KEY_POSITION = {
    "EVAL": 3,
    "EVALSHA": 3,
    "GET": 1,
    "SET": 1,
    "DEL": 1,
    "INCR": 1,
    "PEXPIRE": 1,
    "PTTL": 1,
    "HSET": 1,
    "HGETALL": 1,
    "ZADD": 1,
    "ZRANGE": 1,
    "ZREM": 1,
    "ZREMRANGEBYSCORE": 1,
}


def command_name(args: Sequence[Arg]) -> str:
    return _bytes(args[0]).decode("ascii", "replace").upper() if args else ""


def command_key(args: Sequence[Arg]) -> Arg | None:
    """The argument whose slot the command must run in; None for a keyless command."""
    name = command_name(args)
    if name in KEYLESS:
        return None
    if name in ("EVAL", "EVALSHA"):
        if len(args) < 4 or int(_bytes(args[2])) < 1:
            return None
        return args[3]
    position = KEY_POSITION.get(name, 1)
    return args[position] if len(args) > position else None


def command_slot(args: Sequence[Arg]) -> int | None:
    key = command_key(args)
    return None if key is None else key_slot(key)


@dataclass(frozen=True)
class Redirect:
    kind: Literal["MOVED", "ASK"]
    slot: int
    address: HostPort


def parse_redirect(message: str) -> Redirect | None:
    """The redirect in an error reply (``MOVED 3999 127.0.0.1:6381``), or None."""
    fields = message.split()
    if len(fields) != 3 or fields[0] not in ("MOVED", "ASK") or not fields[1].isdigit():
        return None
    host, sep, port = fields[2].rpartition(":")
    if not sep or not port.isdigit():
        return None
    kind: Literal["MOVED", "ASK"] = "MOVED" if fields[0] == "MOVED" else "ASK"
    return Redirect(kind, int(fields[1]), (host.strip("[]"), int(port)))


class SlotMap:
    """Which primary serves each slot (None: nobody), plus every node address seen."""

    def __init__(self, owners: list[HostPort | None], nodes: Sequence[HostPort] = ()) -> None:
        if len(owners) != SLOTS:
            raise ValueError(f"a slot map has {SLOTS} entries, not {len(owners)}")
        self._owners = owners
        self.nodes = tuple(dict.fromkeys([*(o for o in owners if o is not None), *nodes]))

    @classmethod
    def from_cluster_slots(cls, reply: object, default_host: str) -> SlotMap:
        """Parse ``CLUSTER SLOTS``: ``[[start, end, [host, port, id...], replica...], ...]``.

        An empty host (a node that does not know its own address) means ``default_host``,
        the host the reply came from; raises ValueError for a malformed reply.
        """
        if not isinstance(reply, list):
            raise ValueError(f"CLUSTER SLOTS: expected a list, got {reply!r:.80}")
        owners: list[HostPort | None] = [None] * SLOTS
        nodes: list[HostPort] = []
        for entry in reply:
            if not isinstance(entry, list) or len(entry) < 3:
                raise ValueError(f"CLUSTER SLOTS: bad range entry {entry!r:.80}")
            start, end = int(entry[0]), int(entry[1])
            if not 0 <= start <= end < SLOTS:
                raise ValueError(f"CLUSTER SLOTS: bad range {start}-{end}")
            addresses = [_node_address(node, default_host) for node in entry[2:]]
            primary = addresses[0]
            owners[start : end + 1] = [primary] * (end - start + 1)
            nodes.extend(addresses)
        return cls(owners, nodes)

    def owner(self, slot: int) -> HostPort | None:
        return self._owners[slot]

    def assign(self, slot: int, address: HostPort) -> None:
        """What a MOVED reply says: ``slot`` now lives at ``address``."""
        self._owners[slot] = address
        if address not in self.nodes:
            self.nodes = (*self.nodes, address)

    @property
    def primaries(self) -> tuple[HostPort, ...]:
        return tuple(dict.fromkeys(o for o in self._owners if o is not None))

    @property
    def complete(self) -> bool:
        """Every slot has a primary (what Redis calls full coverage)."""
        return all(owner is not None for owner in self._owners)


def _node_address(node: object, default_host: str) -> HostPort:
    if not isinstance(node, list) or len(node) < 2:
        raise ValueError(f"CLUSTER SLOTS: bad node {node!r:.80}")
    host = _bytes(node[0]).decode("utf-8", "replace") or default_host
    return (host, int(node[1]))


def _bytes(value: object) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8", "surrogateescape")
    return str(value).encode()
