"""``gateway dashboard``: a live web page of one cluster, read from its Redis alone.

``gateway dashboard --redis URL --listen HOST:PORT`` serves the page (``site.py``, assets in
``static/``) and ``/api/status``, the report of ``gateway status --json``. It needs no gateway
node: any machine that reaches the Redis can run it. Prints one line once listening:
``gateway dashboard listening on http://HOST:PORT/ (redis redis://host:6379/0)``.

May import: gateway.ops, gateway.redis, gateway.config, gateway.primitives,
gateway.reactors.
"""

from __future__ import annotations

import argparse
import signal
import sys
from typing import Any

import redis


def run_dashboard(args: argparse.Namespace) -> int:
    from gateway.config import ConfigError, parse_address
    from gateway.ops.status import collect, open_client
    from gateway.redis.url import InvalidRedisURL

    try:
        listen = parse_address(args.listen, "--listen", allow_zero=True)
        shown, client = open_client(args)
    except (InvalidRedisURL, ValueError, ConfigError) as exc:
        print(f"gateway dashboard: {exc}", file=sys.stderr)
        return 2

    # Only now: bad arguments are answered without loading Twisted's reactor.
    from twisted.internet import reactor as global_reactor
    from twisted.internet.error import CannotListenError
    from twisted.web.server import Site

    from gateway.dashboard.site import dashboard_resource
    from gateway.reactors import as_reactor

    def read() -> dict[str, Any]:
        return collect(client, args.prefix, hot_minutes=args.hot_minutes, history=args.history)

    def describe(exc: BaseException) -> str:
        if isinstance(exc, redis.RedisError):
            return f"cannot read cluster state from {shown}: {exc}"
        return f"cannot build the report: {exc.__class__.__name__}"

    reactor = as_reactor(global_reactor)
    site: Any = Site(dashboard_resource(read, reactor, describe))  # type: ignore[no-untyped-call]  # twisted.web is untyped
    site.displayTracebacks = False
    try:
        port = reactor.listenTCP(listen.port, site, interface=listen.host)
    except CannotListenError as exc:
        print(f"gateway dashboard: cannot listen on {listen}: {exc.socketError}", file=sys.stderr)
        return 1

    def shutdown(signum: int, _frame: object) -> None:
        reactor.callFromThread(reactor.stop)

    signal.signal(signal.SIGTERM, shutdown)
    signal.signal(signal.SIGINT, shutdown)
    host = f"[{listen.host}]" if ":" in listen.host else listen.host
    print(
        f"gateway dashboard listening on http://{host}:{port.getHost().port}/ (redis {shown})",
        flush=True,
    )
    reactor.run(installSignalHandlers=False)
    client.close()
    return 0
