"""Typed views of the reactor interfaces the gateway uses.

zope Interfaces are not understood by mypy without a plugin (their methods look like they
lack ``self``), so modules call the reactor through these Protocols instead; callers still
pass the reactor (or a ``task.Clock`` in tests). Lives at the bottom layer so ``proxy`` and
``cluster`` share it without importing each other.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, cast

from twisted.internet.interfaces import IReactorTime


class DelayedCall(Protocol):
    def active(self) -> bool: ...

    def cancel(self) -> None: ...


class Clock(Protocol):
    def seconds(self) -> float: ...

    def callLater(self, delay: float, fn: Callable[..., object], *args: Any) -> DelayedCall: ...


class Address(Protocol):
    host: str
    port: int


class ListeningPort(Protocol):
    def stopListening(self) -> Any: ...

    def getHost(self) -> Address: ...


class Transport(Protocol):
    def write(self, data: bytes) -> None: ...

    def loseConnection(self) -> None: ...

    def abortConnection(self) -> None: ...

    def getPeer(self) -> Any: ...


class Reactor(Clock, Protocol):
    def listenTCP(
        self, port: int, factory: Any, backlog: int = 50, interface: str = ""
    ) -> ListeningPort: ...

    def adoptStreamPort(
        self, fileDescriptor: int, addressFamily: int, factory: Any
    ) -> ListeningPort: ...

    def callFromThread(self, fn: Callable[..., object], *args: Any) -> None: ...

    def run(self, installSignalHandlers: bool = True) -> None: ...

    def stop(self) -> None: ...


def as_clock(reactor: IReactorTime | Any) -> Clock:
    return cast(Clock, reactor)


def as_reactor(reactor: Any) -> Reactor:
    return cast(Reactor, reactor)


def as_transport(transport: Any) -> Transport:
    return cast(Transport, transport)
