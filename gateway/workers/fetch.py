"""A reading of one worker: GET /state on its private admin socket (a UNIX socket)."""

from __future__ import annotations

import json
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.endpoints import UNIXClientEndpoint
from twisted.web.client import Agent, readBody
from twisted.web.iweb import IAgentEndpointFactory
from zope.interface import implementer


@implementer(IAgentEndpointFactory)
class _UnixSocket:
    def __init__(self, reactor: Any, path: str, timeout: float) -> None:
        self._reactor = reactor
        self._path = path
        self._timeout = timeout

    def endpointForURI(self, uri: Any) -> UNIXClientEndpoint:
        return UNIXClientEndpoint(  # type: ignore[no-untyped-call]  # Twisted: untyped
            self._reactor, self._path, timeout=self._timeout
        )


def fetch_state(reactor: Any, path: str, timeout: float = 1.0) -> Deferred[dict[str, Any]]:
    """The worker's ``/state`` JSON; fails after ``timeout`` seconds or on any error."""
    endpoints = _UnixSocket(reactor, path, timeout)
    agent = Agent.usingEndpointFactory(reactor, endpoints)  # type: ignore[no-untyped-call]  # Twisted: untyped
    d: Deferred[Any] = agent.request(b"GET", b"http://worker/state")
    d.addCallback(_body)
    d.addTimeout(timeout, reactor)
    return d


def _body(response: Any) -> Deferred[dict[str, Any]]:
    if response.code != 200:
        raise ValueError(f"/state answered {response.code}")
    d: Deferred[bytes] = readBody(response)
    return d.addCallback(_json)


def _json(body: bytes) -> dict[str, Any]:
    state = json.loads(body)
    if not isinstance(state, dict):
        raise ValueError("/state is not a JSON object")
    return state
