"""Writes the seed corpus, fuzz/corpus/<target>/<name>: small valid and edge-case inputs.

Run ``python -m fuzz.make_corpus`` after changing a target's input layout (see the targets'
module docs); the files are committed, and the output is deterministic. Bodies are written
with thrift's own protocol classes, so the seeds are what real clients send.
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import struct
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from thrift.protocol.TBinaryProtocol import TBinaryProtocol
from thrift.protocol.TCompactProtocol import TCompactProtocol
from thrift.Thrift import TType
from thrift.transport.TTransport import TMemoryBuffer

from fuzz.targets import TARGETS
from gateway.thrift import MessageType, ProtocolKind, encode_frame, frame
from gateway.thrift.message import encode_header
from gateway.thrift.theader import TRANSFORM_ZLIB

CORPUS = Path(__file__).parent / "corpus"
BIG_LIMITS = bytes((2, 2, 2, 2))  # pick_limits: the largest of each limit
SMALL_LIMITS = bytes((0, 0, 0, 0))
PROTOCOLS = list(ProtocolKind)  # the order FuzzInput.pick sees


def body(protocol: ProtocolKind, build: Callable[[Any], None]) -> bytes:
    """A body struct written by ``build`` with thrift's own protocol for ``protocol``."""
    trans = TMemoryBuffer()
    p = TCompactProtocol(trans) if protocol is ProtocolKind.COMPACT else TBinaryProtocol(trans)
    p.writeStructBegin("args")
    build(p)
    p.writeFieldStop()
    p.writeStructEnd()
    return bytes(trans.getvalue())


def _field(p: Any, ttype: int, fid: int, write: Callable[[], None]) -> None:
    p.writeFieldBegin("", ttype, fid)
    write()
    p.writeFieldEnd()


def _scalars(p: Any) -> None:
    _field(p, TType.BOOL, 1, lambda: p.writeBool(True))
    _field(p, TType.BYTE, 2, lambda: p.writeByte(-3))
    _field(p, TType.I16, 3, lambda: p.writeI16(300))
    _field(p, TType.I32, 4, lambda: p.writeI32(-70000))
    _field(p, TType.I64, 5, lambda: p.writeI64(1 << 40))
    _field(p, TType.DOUBLE, 6, lambda: p.writeDouble(-0.0))
    _field(p, TType.STRING, 7, lambda: p.writeBinary(b"hello"))
    _field(p, TType.UUID, 8, lambda: p.writeUuid(uuid.UUID(int=42)))
    _field(p, TType.BOOL, 9, lambda: p.writeBool(False))


def _containers(p: Any) -> None:
    def lst() -> None:
        p.writeListBegin(TType.I64, 3)
        for v in (3, 1, 2):
            p.writeI64(v)
        p.writeListEnd()

    def st() -> None:
        p.writeSetBegin(TType.STRING, 3)
        for v in (b"b", b"a", b"c"):
            p.writeBinary(v)
        p.writeSetEnd()

    def mp() -> None:
        p.writeMapBegin(TType.STRING, TType.BOOL, 2)
        for k, v in ((b"z", True), (b"a", False)):
            p.writeBinary(k)
            p.writeBool(v)
        p.writeMapEnd()

    def empty_map() -> None:
        p.writeMapBegin(TType.I32, TType.STRUCT, 0)
        p.writeMapEnd()

    def bools() -> None:
        p.writeListBegin(TType.BOOL, 3)
        for v in (True, False, True):
            p.writeBool(v)
        p.writeListEnd()

    _field(p, TType.LIST, 1, lst)
    _field(p, TType.SET, 2, st)
    _field(p, TType.MAP, 3, mp)
    _field(p, TType.MAP, 4, empty_map)
    _field(p, TType.LIST, 5, bools)


def _nested(depth: int) -> Callable[[Any], None]:
    def build(p: Any) -> None:
        for _ in range(depth):
            p.writeFieldBegin("", TType.STRUCT, 1)
            p.writeStructBegin("")
        _field(p, TType.I32, 2, lambda: p.writeI32(1))
        for _ in range(depth):
            p.writeFieldStop()
            p.writeStructEnd()
            p.writeFieldEnd()

    return build


def _unordered(p: Any) -> None:
    _field(p, TType.I32, 5, lambda: p.writeI32(5))
    _field(p, TType.I32, 1, lambda: p.writeI32(1))
    _field(p, TType.I32, 5, lambda: p.writeI32(6))  # a repeated id: the last one wins


def bodies(protocol: ProtocolKind) -> dict[str, bytes]:
    """Valid bodies, and a few that must be refused, in ``protocol``."""
    valid = {
        "empty": body(protocol, lambda p: None),
        "scalars": body(protocol, _scalars),
        "containers": body(protocol, _containers),
        "nested3": body(protocol, _nested(3)),
        "nested70": body(protocol, _nested(70)),  # deeper than max_depth
        "unordered": body(protocol, _unordered),
    }
    edge = dict(valid)
    edge["truncated"] = valid["scalars"][:-3]
    edge["trailing"] = valid["empty"] + b"\0"
    if protocol is not ProtocolKind.COMPACT:
        edge["bool2"] = b"\x02\x00\x01\x02\x00"  # bool field 1 with byte 0x02
        edge["badtype"] = b"\x55\x00\x01\x00"
        edge["neglen"] = b"\x0b\x00\x01\xff\xff\xff\xff\x00"
        edge["nan"] = b"\x04\x00\x01" + struct.pack(">Q", 0x7FF0000000000001) + b"\x00"
    else:
        edge["longvarint"] = b"\x15" + b"\xff" * 10 + b"\x01\x00"  # i32 field, 11-byte varint
        edge["bignibble"] = b"\xfd\x00"  # type nibble 13 is unknown
    return edge


def messages(protocol: ProtocolKind) -> dict[str, bytes]:
    named = {}
    for name, b in bodies(protocol).items():
        named[name] = encode_header(protocol, "getPoem", MessageType.CALL, 1) + b
    valid = bodies(protocol)["scalars"]
    named["oneway"] = encode_header(protocol, "Svc:ping", MessageType.ONEWAY, -1) + valid
    return named


def seeds() -> dict[str, dict[str, bytes]]:
    out: dict[str, dict[str, bytes]] = {t: {} for t in TARGETS}
    for pi, protocol in enumerate(PROTOCOLS):
        p = bytes((pi,))
        msgs = messages(protocol)
        body_pi = bytes((1 if protocol is ProtocolKind.COMPACT else 0,))
        for name, b in bodies(protocol).items():
            tag = f"{protocol}-{name}"
            if protocol is not ProtocolKind.BINARY_NONSTRICT:
                out["walk"][tag] = body_pi + BIG_LIMITS + b"\0" + b
                out["walk"][tag + "-exclude"] = body_pi + SMALL_LIMITS + b"\x01\x00\x05" + b
            if protocol is ProtocolKind.BINARY:
                out["binscan"][tag] = BIG_LIMITS + b
                out["binscan"][tag + "-small"] = SMALL_LIMITS + b
            # callkey: op, where (2 bytes), value, then the body
            out["callkey"][tag] = p + BIG_LIMITS + b"\0\0\0\x02" + b
        for i, (name, m) in enumerate(msgs.items()):
            di = (pi + 1 + i) % 3  # every pair of protocols, over the messages
            out["transcode"][f"{protocol}-{PROTOCOLS[di]}-{name}"] = (
                p + bytes((di,)) + BIG_LIMITS + b"\x03\x04Svc2\x00\x00\x00\x09" + m
            )
        framed = b"".join(frame(m) for m in msgs.values())
        buffered = b"".join(msgs[n] for n in ("empty", "scalars", "containers", "oneway"))
        out["framing"][f"framed-{protocol}"] = b"\0" + p + BIG_LIMITS + b"\0\x02\x05\x20" + framed
        out["framing"][f"framed-{protocol}-skip"] = b"\0" + p + SMALL_LIMITS + b"\x01\0" + framed
        out["framing"][f"buffered-{protocol}"] = b"\x01" + p + BIG_LIMITS + b"\0\x01\x09" + buffered
        if protocol is ProtocolKind.BINARY_NONSTRICT:
            continue
        for transforms in (0, 1):  # a transform listed twice is refused (issue 16 cap)
            frames = b"".join(
                encode_frame(
                    m,
                    seqid=i,
                    protocol=protocol,
                    transforms=(TRANSFORM_ZLIB,) * transforms,
                    headers=((b"k", b"v"),) if i % 2 else (),
                )
                for i, m in enumerate(msgs.values())
            )
            tag = f"header-{protocol}-z{transforms}"
            out["framing"][tag] = b"\x02" + p + BIG_LIMITS + b"\0\x01\x30" + frames
            out["framing"][tag + "-skip"] = b"\x02" + p + SMALL_LIMITS + b"\x01\0" + frames
            one = encode_frame(
                msgs["scalars"],
                seqid=5,
                protocol=protocol,
                flags=1,
                transforms=(TRANSFORM_ZLIB,) * transforms,
                headers=((b"trace", b"abc"), (b"", b"")),
            )
            out["theader"][f"raw-{protocol}-z{transforms}"] = BIG_LIMITS + b"\0" + one[4:]
            out["theader"][f"raw-{protocol}-z{transforms}-small"] = SMALL_LIMITS + b"\0" + one[4:]
            pid = bytes((0 if protocol is ProtocolKind.BINARY else 1,))
            for listed in (transforms, transforms + 2):  # z2, z3: refused by encode_frame
                built = pid + b"\0\0\0\x05\0\x01" + bytes((listed, 1, 1)) + b"k" + b"\x01v"
                out["theader"][f"built-{protocol}-z{listed}"] = (
                    BIG_LIMITS + b"\x01" + built + msgs["scalars"]
                )
    fixed = b"\0\0" + b"\0\0\0\0" + b"\0\x01"  # flags, seqid, one header word
    out["theader"]["raw-unknown-transform"] = BIG_LIMITS + b"\0\x0f\xff" + fixed + b"\0\x01\x07\0"
    out["theader"]["raw-bad-magic"] = BIG_LIMITS + b"\0\x0f\xfe" + fixed + b"\0\0\0\0"
    out["theader"]["raw-many-transforms"] = (
        BIG_LIMITS + b"\0\x0f\xff\0\0\0\0\0\0\0\x20" + b"\0\x7e" + b"\x01" * 126 + b"\0\0\0\0"
    )
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=CORPUS)
    args = parser.parse_args(argv)
    for target, entries in seeds().items():
        directory = args.out / target
        shutil.rmtree(directory, ignore_errors=True)
        directory.mkdir(parents=True)
        for name, data in sorted(entries.items()):
            digest = hashlib.sha1(data).hexdigest()[:8]
            (directory / f"{name}-{digest}").write_bytes(data)
        print(f"{target}: {len(entries)} seeds")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
