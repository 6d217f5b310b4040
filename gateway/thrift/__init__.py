"""The Thrift wire layer: pure functions on bytes (no Twisted, no Redis).

Modules, one concept each:

* ``kinds``: protocol/transport kinds, message types, message and frame headers,
  :class:`Limits` and the errors;
* ``protocols``: thrift's pure-Python protocol classes over lean in-memory transports;
* ``message``: message headers (read, re-encode, replace);
* ``walk``: the generic, limited value walker behind skipping, call keys and transcoding;
* ``detect``: recognising a connection's transport and protocol from its first bytes;
* ``theader``: THeader frames (parse, encode, reply) and :class:`HeaderInfo`;
* ``skipper``: a resumable skipper finding where an unframed body ends, in O(its size);
* ``framing``: splitting streams into messages (:class:`MessageReader`) and framing;
* ``callkey``: canonical form of call arguments, the call identity and its key;
* ``transcode``: re-encoding messages between protocols;
* ``appexc``: TApplicationException messages and :func:`reply_kind`;
* ``answers``: the answer to bad input, in the client's own dialect.

May import: nothing else of the gateway.
"""

from gateway.thrift.answers import error_answer
from gateway.thrift.appexc import application_exception, parse_application_exception, reply_kind
from gateway.thrift.callkey import CallIdentity, call_identity, canonical_args, key_parts
from gateway.thrift.detect import MAX_DETECT_PREFIX, detect
from gateway.thrift.framing import Frame, MessageReader, SkippedFrame, encode, frame
from gateway.thrift.kinds import (
    DEFAULT_LIMITS,
    FrameTooLarge,
    Limits,
    MalformedMessage,
    MessageType,
    NotThrift,
    ProtocolKind,
    TransportKind,
    WireError,
)
from gateway.thrift.message import MessageHeader, read_header, replace_header
from gateway.thrift.theader import (
    HeaderError,
    HeaderInfo,
    Headers,
    encode_frame,
    key_headers,
    parse_frame,
    reply_frame,
)
from gateway.thrift.transcode import transcode
from gateway.thrift.walk import validate_body

__all__ = [
    "DEFAULT_LIMITS",
    "MAX_DETECT_PREFIX",
    "CallIdentity",
    "Frame",
    "FrameTooLarge",
    "HeaderError",
    "HeaderInfo",
    "Headers",
    "Limits",
    "MalformedMessage",
    "MessageHeader",
    "MessageReader",
    "MessageType",
    "NotThrift",
    "ProtocolKind",
    "SkippedFrame",
    "TransportKind",
    "WireError",
    "application_exception",
    "call_identity",
    "canonical_args",
    "detect",
    "encode",
    "encode_frame",
    "error_answer",
    "frame",
    "key_headers",
    "key_parts",
    "parse_application_exception",
    "parse_frame",
    "read_header",
    "replace_header",
    "reply_frame",
    "reply_kind",
    "transcode",
    "validate_body",
]
