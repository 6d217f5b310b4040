"""Errors the gateway turns into ``TApplicationException`` replies, classified by origin.

They live below both ``proxy`` and ``cluster`` because a failure raised by a leader on one
node is re-raised on its followers' nodes and must map to the same reply code there.

Every error says where it came from (:class:`Origin`), because that decides whether the
callers on *other* nodes that follow this call may be handed the same failure
(``contracts.shares_failure``): a node's own trouble (its queue is full, it cannot reach
the backend) says nothing about whether another node can make the call.
"""

from __future__ import annotations

import enum

# TApplicationException codes (thrift/lib/py TApplicationException).
UNKNOWN_METHOD = 1
INVALID_MESSAGE_TYPE = 2
INTERNAL_ERROR = 6
PROTOCOL_ERROR = 7


class Origin(enum.Enum):
    """Where a failure came from, as far as the gateway can tell."""

    BACKEND = "backend"  # the backend (or a leader that called it) answered with it
    LOCAL = "local"  # this node's own trouble: the call did not reach the backend
    AMBIGUOUS = "ambiguous"  # sent, never answered: the backend may have done the work


class GatewayError(Exception):
    """A failure the client sees as a ``TApplicationException(code, message)``."""

    code: int = INTERNAL_ERROR
    origin: Origin = Origin.LOCAL

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code


class BackendUnavailable(GatewayError):
    """A connection-level failure (retried for idempotent methods, on the next replica)."""


class BackendUnreachable(BackendUnavailable):
    """No connection to the backend: the call was never sent."""


class BackendTLSFailed(BackendUnreachable):
    """The TLS handshake with the backend failed (its certificate did not verify against
    ``tls_ca`` or ``tls_server_name``, it refused ours, no common version): never sent."""


class ConnectionLost(BackendUnavailable):
    """The connection dropped after the call was sent: the backend may have done the work."""

    origin = Origin.AMBIGUOUS


class BackendTimeout(GatewayError):
    """The backend did not answer within the method's timeout (it may still do the work)."""

    origin = Origin.AMBIGUOUS


class ReplyTooLarge(GatewayError):
    """The backend answered this call with a reply over ``max_frame_size``.

    Origin BACKEND: the backend did the work and answered; asking it again (from this node or
    a follower's) would only fetch the same oversized reply.
    """

    origin = Origin.BACKEND


class Overloaded(GatewayError):
    """This node's dispatch queue for the backend is full; the call was refused at once."""


class ShuttingDown(GatewayError):
    """This node is stopping; the call was not (or no longer) made here."""


class UnknownRoute(GatewayError):
    """No backend serves this service/method."""

    code = UNKNOWN_METHOD


class RemoteCallFailed(GatewayError):
    """The leader on another node failed; its code and message are replayed here."""

    origin = Origin.BACKEND
