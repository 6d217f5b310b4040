"""Send one ``alertSupervisor`` call and print the reply (blocking client).

    python -m clients.alert --gateway 127.0.0.1:9090 [--protocol compact]
        [--transport buffered] [--multiplexed] "disk full"

Exit status: 0 with the reply on stdout; 1 when the server answered ``SupervisorBusy`` or a
``TApplicationException`` or could not be reached (reason on stderr); 2 on bad arguments.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from thrift.Thrift import TApplicationException
from thrift.transport.TTransport import TTransportException

from clients.calls import PROTOCOLS, parse_target
from clients.sync_client import ExampleClient
from gateway.examples.gen.supervisor.ttypes import SupervisorBusy


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m clients.alert", description=__doc__.split("\n")[0])
    p.add_argument("--gateway", required=True, metavar="HOST:PORT", help="gateway or backend")
    p.add_argument("--protocol", choices=PROTOCOLS, default="binary")
    p.add_argument("--transport", choices=["framed", "buffered"], default="framed")
    p.add_argument("--multiplexed", action="store_true", help="use TMultiplexedProtocol")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds (default 30)")
    p.add_argument("message")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        host, port = parse_target(args.gateway, "--gateway")
    except ValueError as exc:
        parser.error(str(exc))  # exits 2
    try:
        with ExampleClient(
            host,
            port,
            protocol=args.protocol,
            transport=args.transport,
            multiplexed=args.multiplexed,
            timeout=args.timeout,
        ) as client:
            print(client.alert(args.message), flush=True)
    except SupervisorBusy as busy:
        print(f"SupervisorBusy: {busy.reason}", file=sys.stderr)
        return 1
    except TApplicationException as exc:
        print(f"TApplicationException({exc.type}): {exc.message}", file=sys.stderr)
        return 1
    except (TTransportException, OSError) as exc:
        print(f"cannot reach {args.gateway}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
