"""``gateway`` command line: parses arguments, then hands them to the module that wires objects.

Each subcommand's runtime lives elsewhere and is imported lazily, so ``gateway --help`` stays
fast and a subcommand's dependencies are only loaded when it runs.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from gateway.cluster.keys import DEFAULT_PREFIX  # tiny and import-free, unlike the runtimes


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gateway",
        description="Thrift coalescing gateway: identical in-flight calls reach the backend once.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    serve = sub.add_parser("serve", help="run a gateway node")
    serve.add_argument("--config", metavar="FILE", help="TOML config file (flags override it)")
    serve.add_argument("--listen", metavar="HOST:PORT", help="client-facing address")
    serve.add_argument("--backend", metavar="HOST:PORT", help="default backend address")
    serve.add_argument("--node-id", metavar="ID", help="node name in Redis keys and metrics")
    serve.add_argument("--admin", metavar="HOST:PORT", help="serve /metrics and /healthz here")
    serve.add_argument(
        "--redis", metavar="URL", help="redis://[:password@]host:port/db or rediss://"
    )
    serve.add_argument("--log-format", choices=["text", "json"], help="log line format")

    status = sub.add_parser("status", help="show the cluster's nodes and counters from Redis")
    status.add_argument("--redis", metavar="URL", required=True)
    status.add_argument("--prefix", default=DEFAULT_PREFIX, help="key prefix (default %(default)s)")
    status.add_argument("--json", action="store_true", help="print one JSON object")
    status.add_argument("--watch", action="store_true", help="refresh every second until Ctrl-C")

    backend = sub.add_parser("example-backend", help="run an example Thrift backend")
    backend.add_argument("--listen", metavar="HOST:PORT", required=True)
    backend.add_argument("--service", choices=["supervisor", "poetry"], required=True)
    backend.add_argument("--delay", type=float, default=0.0, metavar="SECONDS")
    backend.add_argument("--protocol", choices=["binary", "compact"], default="binary")
    backend.add_argument("--transport", choices=["framed", "buffered"], default="framed")
    backend.add_argument("--multiplexed", action="store_true")

    demo = sub.add_parser("demo", help="start a local cluster and drive a thundering herd")
    demo.add_argument("--nodes", type=int, default=3, help="gateway nodes (default 3)")
    demo.add_argument("--clients", type=int, default=500, help="concurrent clients (default 500)")
    demo.add_argument(
        "--keys", type=int, default=5, help="distinct alertSupervisor messages a round (default 5)"
    )
    demo.add_argument("--poems", type=int, default=3, help="distinct getPoem titles (0: none)")
    demo.add_argument("--rounds", type=int, default=3, help="herd rounds (default 3)")
    demo.add_argument("--delay", type=float, default=0.5, help="backend delay, seconds")
    demo.add_argument(
        "--timeout", type=float, default=30.0, help="per client call, seconds (default 30)"
    )
    demo.add_argument("--json", action="store_true", help="print the summary as JSON")
    demo.add_argument(
        "--keep-running", action="store_true", help="leave the cluster up until Ctrl-C"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "serve":
        from gateway.app import run_serve

        return run_serve(args)
    if args.command == "status":
        from gateway.cluster.status import run_status

        return run_status(args)
    if args.command == "example-backend":
        from gateway.examples.backend import run_backend

        return run_backend(args)
    if args.command == "demo":
        from gateway.demo import run_demo

        return run_demo(args)
    raise AssertionError(args.command)  # argparse enforces the choices


if __name__ == "__main__":
    sys.exit(main())
