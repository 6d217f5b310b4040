"""The bytes a leader shares through Redis: a small JSON header plus the raw Thrift reply.

Layout (one Redis string)::

    GWE1 <sig> \\n <header JSON> \\n <payload bytes>

``<sig>`` is ``-`` (unsigned) or the hex HMAC-SHA256 over the call key, the exact header
bytes and the payload, each length-prefixed so no two inputs can collide. The header
carries the leader's token, so a signed envelope can be replayed neither under another
call key nor as another leader's result. The payload is the backend's reply message
verbatim; it is never unpickled or otherwise interpreted here.

Header fields: ``t`` token, ``s`` status (``ok`` | ``error`` | ``skip``), then for ``ok``:
``p`` protocol, ``k`` ReplyKind value; for ``error``: ``c`` code, ``m`` message; for
``skip`` (result not shared): ``why`` = ``too_large`` | ``abandoned``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import struct
from dataclasses import dataclass
from typing import Literal

from gateway.contracts import BackendReply, ReplyKind

MAGIC = b"GWE1"
Status = Literal["ok", "error", "skip"]
SkipReason = Literal["too_large", "abandoned"]


class EnvelopeError(ValueError):
    """The bytes are not a well-formed envelope (truncated, garbage, unknown fields)."""


class EnvelopeRejected(EnvelopeError):
    """The signature is missing or wrong for this node's secret: the bytes must not be used."""


@dataclass(frozen=True)
class Envelope:
    """One leader's outcome, as followers and cache readers see it."""

    token: str
    status: Status
    reply: BackendReply | None = None  # status "ok"
    code: int = 0  # status "error"
    message: str = ""  # status "error"
    why: SkipReason | None = None  # status "skip"

    @classmethod
    def ok(cls, token: str, reply: BackendReply) -> Envelope:
        return cls(token, "ok", reply=reply)

    @classmethod
    def error(cls, token: str, code: int, message: str) -> Envelope:
        return cls(token, "error", code=code, message=message)

    @classmethod
    def skip(cls, token: str, why: SkipReason) -> Envelope:
        return cls(token, "skip", why=why)


def _mac(secret: bytes, key: str, header: bytes, payload: bytes) -> str:
    mac = hmac.new(secret, digestmod=hashlib.sha256)
    for part in (key.encode(), header, payload):
        mac.update(struct.pack(">Q", len(part)))
        mac.update(part)
    return mac.hexdigest()


def encode(envelope: Envelope, key: str, secret: bytes | None = None) -> bytes:
    """Serialize ``envelope`` for call key ``key``; signed when ``secret`` is given."""
    fields: dict[str, object] = {"t": envelope.token, "s": envelope.status}
    payload = b""
    if envelope.status == "ok":
        if envelope.reply is None:
            raise ValueError("an ok envelope needs a reply")
        fields["p"] = envelope.reply.protocol
        fields["k"] = envelope.reply.kind.value
        payload = envelope.reply.message
    elif envelope.status == "error":
        fields["c"] = envelope.code
        fields["m"] = envelope.message
    else:
        fields["why"] = envelope.why
    # sort_keys + compact separators: the same outcome always gives the same bytes.
    header = json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()
    sig = _mac(secret, key, header, payload) if secret is not None else "-"
    return b"".join((MAGIC, b" ", sig.encode(), b"\n", header, b"\n", payload))


def decode(data: bytes, key: str, secret: bytes | None = None) -> Envelope:
    """Parse and (with ``secret``) verify; raises EnvelopeError / EnvelopeRejected.

    A node with a secret rejects unsigned and wrongly signed envelopes. A node without a
    secret accepts both: it has nothing to check against (configure all nodes alike).
    """
    try:
        first, header, payload = data.split(b"\n", 2)
        magic, sig_raw = first.split(b" ", 1)
        sig = sig_raw.decode("ascii")
    except (ValueError, UnicodeDecodeError):
        raise EnvelopeError("not a gateway envelope") from None
    if magic != MAGIC:
        raise EnvelopeError(f"unknown envelope version {magic[:8]!r}")
    if secret is not None:
        expected = _mac(secret, key, header, payload)
        if not hmac.compare_digest(sig, expected):
            raise EnvelopeRejected("envelope signature missing or wrong")
    try:
        fields = json.loads(header)
        return _from_fields(fields, payload)
    except (ValueError, KeyError, TypeError) as exc:
        raise EnvelopeError(f"bad envelope header: {exc}") from None


def _from_fields(fields: dict[str, object], payload: bytes) -> Envelope:
    token = fields["t"]
    status = fields["s"]
    if not isinstance(token, str):
        raise TypeError("token must be a string")
    if status == "ok":
        protocol, kind = fields["p"], fields["k"]
        if not isinstance(protocol, str) or not isinstance(kind, str):
            raise TypeError("protocol and kind must be strings")
        return Envelope.ok(token, BackendReply(payload, protocol, ReplyKind(kind)))
    if status == "error":
        code, message = fields["c"], fields["m"]
        if not isinstance(code, int) or not isinstance(message, str):
            raise TypeError("error code must be an int and message a string")
        return Envelope.error(token, code, message)
    if status == "skip":
        why = fields["why"]
        if why == "too_large" or why == "abandoned":
            return Envelope.skip(token, why)
        raise ValueError(f"unknown skip reason {why!r}")
    raise ValueError(f"unknown status {status!r}")
