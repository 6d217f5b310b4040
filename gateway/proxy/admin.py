"""The admin HTTP endpoint: ``/metrics`` (Prometheus text) and ``/healthz`` (JSON)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from twisted.web.resource import Resource
from twisted.web.server import Request, Site

from gateway.proxy.metrics import Metrics


class _Leaf(Resource):
    isLeaf = True

    def __init__(self, render: Callable[[Request], tuple[int, bytes, bytes]]) -> None:
        Resource.__init__(self)  # type: ignore[no-untyped-call]  # twisted.web is untyped
        self._render = render

    def render_GET(self, request: Request) -> bytes:
        code, content_type, body = self._render(request)
        web: Any = request
        web.setResponseCode(code)
        web.setHeader(b"content-type", content_type)
        return body


def admin_site(metrics: Metrics, health: Callable[[], dict[str, object]]) -> Site:
    """``health()`` returns at least ``{"listening": bool}``; /healthz is 200 only then."""

    def render_metrics(_: Request) -> tuple[int, bytes, bytes]:
        return 200, b"text/plain; version=0.0.4; charset=utf-8", metrics.render()

    def render_health(_: Request) -> tuple[int, bytes, bytes]:
        body = health()
        return (
            (200 if body.get("listening") else 503),
            b"application/json",
            json.dumps(body).encode(),
        )

    root: Any = Resource()  # type: ignore[no-untyped-call]  # twisted.web is untyped
    root.putChild(b"metrics", _Leaf(render_metrics))
    root.putChild(b"healthz", _Leaf(render_health))
    site: Site = Site(root)  # type: ignore[no-untyped-call]  # twisted.web is untyped
    return site
