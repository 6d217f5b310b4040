"""Send several ``alertSupervisor`` calls at once with the generated py:twisted ``Client``.

    python -m clients.twisted_alert --gateway 127.0.0.1:9090 "disk full" "fan failed" ...

This is the stock way to call a Thrift service from Twisted: thrift's
``TTwisted.ThriftClientProtocol`` (framed transport only) wrapping the generated
``Supervisor.Client``, whose methods return Deferreds. All messages go out concurrently on one
connection; each reply (or error) is printed as ``message -> reply`` in argument order.
Exit status 0 when every call succeeded, 1 otherwise.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any, cast

from thrift.protocol.TMultiplexedProtocol import TMultiplexedProtocol
from thrift.transport import TTwisted
from twisted.internet import defer, task
from twisted.internet.protocol import ClientCreator
from twisted.python.failure import Failure

from clients.calls import describe_error, parse_target, protocol_factory
from gateway.examples.gen.supervisor import Supervisor


class MultiplexedProtocolFactory:
    """Output protocol factory that prefixes method names with ``Service:``."""

    def __init__(self, base: Any, service: str) -> None:
        self._base = base
        self._service = service

    def getProtocol(self, trans: Any) -> Any:
        return TMultiplexedProtocol(self._base.getProtocol(trans), self._service)


@defer.inlineCallbacks
def send_alerts(
    reactor: Any,
    host: str,
    port: int,
    messages: Sequence[str],
    *,
    protocol: str = "binary",
    multiplexed: bool = False,
    timeout: float = 30.0,
) -> Any:
    """Fires with ``[(message, reply-or-Failure), ...]`` in the order given."""
    iprot_factory = protocol_factory(protocol)
    oprot_factory = (
        MultiplexedProtocolFactory(iprot_factory, "Supervisor") if multiplexed else iprot_factory
    )
    creator = cast(Any, ClientCreator)(
        reactor, TTwisted.ThriftClientProtocol, Supervisor.Client, iprot_factory, oprot_factory
    )
    # ClientCreator fires after connectionMade, when the protocol has built its ``client``.
    proto = yield creator.connectTCP(host, port, timeout=timeout)
    try:
        # Each call gets its own timeout, so a slow one is reported as TimeoutError while the
        # others still print their replies. (The generated client keeps a timed-out call in
        # its table until a reply comes; the cancelled Deferred then ignores it.)
        calls = [proto.client.alertSupervisor(m).addTimeout(timeout, reactor) for m in messages]
        results = yield defer.DeferredList(calls, consumeErrors=True)
    finally:
        proto.transport.loseConnection()
    return [(m, value) for m, (_, value) in zip(messages, results, strict=True)]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m clients.twisted_alert", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--gateway", required=True, metavar="HOST:PORT")
    parser.add_argument("--protocol", choices=["binary", "compact"], default="binary")
    parser.add_argument("--multiplexed", action="store_true")
    parser.add_argument("--timeout", type=float, default=30.0)
    parser.add_argument("messages", nargs="+", metavar="message")
    args = parser.parse_args(argv)
    try:
        host, port = parse_target(args.gateway, "--gateway")
    except ValueError as exc:
        parser.error(str(exc))
    failed = []

    @defer.inlineCallbacks
    def run(reactor: Any) -> Any:
        replies = yield send_alerts(
            reactor,
            host,
            port,
            args.messages,
            protocol=args.protocol,
            multiplexed=args.multiplexed,
            timeout=args.timeout,
        )
        for message, reply in replies:
            if isinstance(reply, Failure):
                failed.append(message)
                reply = describe_error(reply.value)
            print(f"{message} -> {reply}", flush=True)

    try:
        task.react(run)
    except SystemExit as exit_:
        if exit_.code:
            return int(exit_.code)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
