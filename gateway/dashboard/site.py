"""The dashboard's web resources: the page, its two assets, the JSON report and /healthz.

Everything is served from the package (``static/``): no CDN, no framework, so the page works
on an offline ops network. The page polls ``api/status`` (relative, so the tree can be
mounted under any path), which answers with the report of ``gateway status --json``.

Reading Redis is blocking (redis-py), so it runs in the reactor's thread pool. However many
browsers poll, the report is read at most once per ``min_interval`` seconds: concurrent
requests join the read in progress (a :class:`~gateway.primitives.Coalescer`) and later ones
within the interval get the same bytes.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from importlib import resources
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.threads import deferToThread
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from gateway.primitives import Coalescer
from gateway.reactors import Clock

ASSETS = {  # file -> content type
    "index.html": b"text/html; charset=utf-8",
    "dashboard.css": b"text/css; charset=utf-8",
    "dashboard.js": b"text/javascript; charset=utf-8",
}
# The page loads only its own files; nothing inline, nothing from elsewhere.
_SECURITY_HEADERS = {
    b"content-security-policy": b"default-src 'self'; img-src 'self' data:; frame-ancestors 'none'",
    b"x-content-type-options": b"nosniff",
    b"referrer-policy": b"no-referrer",
}


def asset(name: str) -> bytes:
    return (resources.files("gateway.dashboard") / "static" / name).read_bytes()


class _Static(Resource):
    isLeaf = True

    def __init__(self, body: bytes, content_type: bytes) -> None:
        Resource.__init__(self)  # type: ignore[no-untyped-call]  # twisted.web is untyped
        self._body = body
        self._type = content_type

    def render_GET(self, request: Request) -> bytes:
        web: Any = request
        web.setHeader(b"content-type", self._type)
        web.setHeader(b"cache-control", b"no-cache")
        for name, value in _SECURITY_HEADERS.items():
            web.setHeader(name, value)
        return self._body


class ReportCache:
    """The report as JSON bytes, read with ``read`` in a thread at most every
    ``min_interval`` seconds. A failed read is not cached: the next request tries again."""

    def __init__(
        self, read: Callable[[], dict[str, Any]], clock: Clock, min_interval: float = 0.5
    ) -> None:
        self._read = read
        self._clock = clock
        self._min_interval = min_interval
        self._reads: Coalescer[str, bytes] = Coalescer()
        self._last: tuple[float, bytes] | None = None

    def get(self) -> Deferred[bytes]:
        now = self._clock.seconds()
        if self._last is not None and now - self._last[0] < self._min_interval:
            return succeed(self._last[1])
        return self._reads.call("report", self._fetch)

    def _fetch(self) -> Deferred[bytes]:
        started = self._clock.seconds()

        def store(body: bytes) -> bytes:
            self._last = (started, body)
            return body

        read: Deferred[bytes] = deferToThread(self._encoded)
        return read.addCallback(store)

    def _encoded(self) -> bytes:
        return json.dumps(self._read(), sort_keys=True).encode()


class _Report(Resource):
    isLeaf = True

    def __init__(self, cache: ReportCache, describe_error: Callable[[BaseException], str]) -> None:
        Resource.__init__(self)  # type: ignore[no-untyped-call]  # twisted.web is untyped
        self._cache = cache
        self._describe = describe_error

    def render_GET(self, request: Request) -> Any:
        web: Any = request
        web.setHeader(b"content-type", b"application/json")
        web.setHeader(b"cache-control", b"no-store")
        gone: list[bool] = []  # the browser closed the connection before the answer
        web.notifyFinish().addErrback(lambda _: gone.append(True))

        def answer(body: bytes) -> None:
            if not gone:
                web.write(body)
                web.finish()

        def failed(reason: Failure) -> None:
            web.setResponseCode(503)
            exc = reason.value if reason.value is not None else RuntimeError("no reason")
            answer(json.dumps({"error": self._describe(exc)}).encode())

        self._cache.get().addCallbacks(answer, failed)
        return NOT_DONE_YET


class _Health(Resource):
    isLeaf = True

    def __init__(self) -> None:
        Resource.__init__(self)  # type: ignore[no-untyped-call]  # twisted.web is untyped

    def render_GET(self, request: Request) -> bytes:
        web: Any = request
        web.setHeader(b"content-type", b"application/json")
        return b'{"serving": true}'


def dashboard_resource(
    read: Callable[[], dict[str, Any]],
    clock: Clock,
    describe_error: Callable[[BaseException], str] = str,
    min_interval: float = 0.5,
) -> Resource:
    """The tree: ``/`` (the page), its assets, ``/api/status`` and ``/healthz``.

    ``read()`` returns the report (blocking; run in a thread); ``describe_error`` turns its
    exceptions into the one line the page shows (it must not reveal passwords).
    """
    root: Any = Resource()  # type: ignore[no-untyped-call]  # twisted.web is untyped
    index = _Static(asset("index.html"), ASSETS["index.html"])
    root.putChild(b"", index)
    root.putChild(b"index.html", index)
    for name in ("dashboard.css", "dashboard.js"):
        root.putChild(name.encode(), _Static(asset(name), ASSETS[name]))
    api: Any = Resource()  # type: ignore[no-untyped-call]  # twisted.web is untyped
    api.putChild(b"status", _Report(ReportCache(read, clock, min_interval), describe_error))
    root.putChild(b"api", api)
    root.putChild(b"healthz", _Health())
    resource: Resource = root
    return resource
