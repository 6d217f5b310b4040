"""Errors the gateway turns into ``TApplicationException`` replies.

They live below both ``proxy`` and ``cluster`` because a failure raised by a leader on one
node is re-raised on its followers' nodes and must map to the same reply code there.
"""

from __future__ import annotations

# TApplicationException codes (thrift/lib/py TApplicationException).
UNKNOWN_METHOD = 1
INVALID_MESSAGE_TYPE = 2
INTERNAL_ERROR = 6
PROTOCOL_ERROR = 7


class GatewayError(Exception):
    """A failure the client sees as a ``TApplicationException(code, message)``."""

    code: int = INTERNAL_ERROR

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code


class BackendUnavailable(GatewayError):
    """The backend could not be reached or the connection was lost mid-call."""


class BackendTimeout(GatewayError):
    """The backend did not answer within the method's timeout."""


class Overloaded(GatewayError):
    """The backend's dispatch queue is full; the call was refused at once."""


class UnknownRoute(GatewayError):
    """No backend serves this service/method."""

    code = UNKNOWN_METHOD


class RemoteCallFailed(GatewayError):
    """The leader on another node failed; its code and message are replayed here."""
