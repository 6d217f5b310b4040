"""The bytes a leader shares through Redis: a small JSON header plus the raw Thrift reply.

Layout (one Redis string)::

    GWE1 <sig> \\n <header JSON> \\n <payload bytes>

``<sig>`` is ``-`` (unsigned) or the hex HMAC-SHA256 over the call key, the exact header
bytes and the payload, each length-prefixed so no two inputs can collide. The header
carries the leader's token and an expiry time, so a signed envelope can be replayed
neither under another call key, nor as another leader's result, nor after it expired (a
node with a secret refuses an envelope past its expiry, allowing ``max_clock_skew``). The
payload is the backend's reply message verbatim; it is never unpickled or otherwise
interpreted here.

Header fields: ``t`` token, ``f`` fencing number of that leadership, ``x`` expiry (unix
milliseconds), ``s`` status (``ok`` | ``error`` | ``skip``), then for ``ok``: ``p``
protocol, ``k`` ReplyKind value; for ``error``: ``c`` code, ``m`` message; for ``skip``
(no result to share): ``why`` = ``too_large`` (each follower calls for itself) |
``abandoned`` (the leader stopped) | ``local_error`` (the leader's own trouble): on the
last two, followers decide again and one of them leads.
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
SkipReason = Literal["too_large", "abandoned", "local_error"]
_SKIP_REASONS: tuple[SkipReason, ...] = ("too_large", "abandoned", "local_error")


class EnvelopeError(ValueError):
    """The bytes are not a well-formed envelope (truncated, garbage, unknown fields)."""


class EnvelopeRejected(EnvelopeError):
    """The signature is missing or wrong for this node's secret: the bytes must not be used."""


class EnvelopeExpired(EnvelopeError):
    """A correctly signed envelope past its expiry: an old entry written back (a replay)."""


@dataclass(frozen=True)
class Envelope:
    """One leader's outcome, as followers and cache readers see it."""

    token: str
    status: Status
    reply: BackendReply | None = None  # status "ok"
    code: int = 0  # status "error"
    message: str = ""  # status "error"
    why: SkipReason | None = None  # status "skip"
    fence: int = 0  # the fencing number of the leadership that wrote it
    expires_ms: int = 0  # unix milliseconds; 0: no expiry (never written by a leader)

    @classmethod
    def ok(cls, token: str, reply: BackendReply, fence: int = 0) -> Envelope:
        return cls(token, "ok", reply=reply, fence=fence)

    @classmethod
    def error(cls, token: str, code: int, message: str, fence: int = 0) -> Envelope:
        return cls(token, "error", code=code, message=message, fence=fence)

    @classmethod
    def skip(cls, token: str, why: SkipReason, fence: int = 0) -> Envelope:
        return cls(token, "skip", why=why, fence=fence)


def _mac(secret: bytes, key: str, header: bytes, payload: bytes) -> str:
    mac = hmac.new(secret, digestmod=hashlib.sha256)
    for part in (key.encode(), header, payload):
        mac.update(struct.pack(">Q", len(part)))
        mac.update(part)
    return mac.hexdigest()


def encode(envelope: Envelope, key: str, secret: bytes | None = None) -> bytes:
    """Serialize ``envelope`` for call key ``key``; signed when ``secret`` is given."""
    fields: dict[str, object] = {"t": envelope.token, "s": envelope.status}
    if envelope.fence:
        fields["f"] = envelope.fence
    if envelope.expires_ms:
        fields["x"] = envelope.expires_ms
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


def decode(
    data: bytes,
    key: str,
    secret: bytes | None = None,
    *,
    now_ms: int = 0,
    max_skew_ms: int = 10_000,
) -> Envelope:
    """Parse and (with ``secret``) verify; raises EnvelopeError / EnvelopeRejected /
    EnvelopeExpired.

    A node with a secret rejects unsigned and wrongly signed envelopes, and signed ones whose
    expiry is more than ``max_skew_ms`` before ``now_ms`` (0: not checked). A node without a
    secret accepts any: it has nothing to check against (configure all nodes alike).
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
        envelope = _from_fields(fields, payload)
    except (ValueError, KeyError, TypeError) as exc:
        raise EnvelopeError(f"bad envelope header: {exc}") from None
    if secret is not None and now_ms and envelope.expires_ms + max_skew_ms < now_ms:
        raise EnvelopeExpired(f"envelope expired {now_ms - envelope.expires_ms} ms ago")
    return envelope


def _from_fields(fields: dict[str, object], payload: bytes) -> Envelope:
    token = fields["t"]
    status = fields["s"]
    fence = fields.get("f", 0)
    expires_ms = fields.get("x", 0)
    if not isinstance(token, str):
        raise TypeError("token must be a string")
    if not isinstance(fence, int) or not isinstance(expires_ms, int):
        raise TypeError("fence and expiry must be integers")
    if status == "ok":
        protocol, kind = fields["p"], fields["k"]
        if not isinstance(protocol, str) or not isinstance(kind, str):
            raise TypeError("protocol and kind must be strings")
        reply = BackendReply(payload, protocol, ReplyKind(kind))
        return Envelope(token, "ok", reply=reply, fence=fence, expires_ms=expires_ms)
    if status == "error":
        code, message = fields["c"], fields["m"]
        if not isinstance(code, int) or not isinstance(message, str):
            raise TypeError("error code must be an int and message a string")
        return Envelope(
            token, "error", code=code, message=message, fence=fence, expires_ms=expires_ms
        )
    if status == "skip":
        why = fields["why"]
        for reason in _SKIP_REASONS:
            if why == reason:
                return Envelope(token, "skip", why=reason, fence=fence, expires_ms=expires_ms)
        raise ValueError(f"unknown skip reason {why!r}")
    raise ValueError(f"unknown status {status!r}")
