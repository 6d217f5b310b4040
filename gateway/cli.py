"""``gateway`` command line: parses arguments, then hands them to the module that wires objects.

Each subcommand's runtime lives elsewhere and is imported lazily, so ``gateway --help`` stays
fast and a subcommand's dependencies are only loaded when it runs.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from gateway import __version__
from gateway.cluster.keys import DEFAULT_PREFIX  # tiny and import-free, unlike the runtimes


def _node_flags(parser: argparse.ArgumentParser, config_required: bool) -> None:
    """The flags of ``serve``, which ``check-config`` accepts too (they override the file)."""
    if config_required:
        parser.add_argument("config", metavar="FILE", help="TOML config file")
    else:
        parser.add_argument("--config", metavar="FILE", help="TOML config file (flags override it)")
    parser.add_argument("--listen", metavar="HOST:PORT", help="client-facing address")
    parser.add_argument("--backend", metavar="HOST:PORT", help="default backend address")
    parser.add_argument("--node-id", metavar="ID", help="node name in Redis keys and metrics")
    parser.add_argument("--admin", metavar="HOST:PORT", help="serve /metrics and /healthz here")
    parser.add_argument(
        "--advertise",
        metavar="HOST[:PORT]",
        help="address other machines reach this node at (default: listen, 0.0.0.0 -> hostname)",
    )
    parser.add_argument(
        "--redis", metavar="URL", help="redis://[:password@]host:port/db or rediss://"
    )
    parser.add_argument("--log-format", choices=["text", "json"], help="log line format")
    parser.add_argument(
        "--workers",
        metavar="N|auto",
        help="processes sharing the client port (default 1; auto: one per usable core)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gateway",
        description="Thrift coalescing gateway: identical in-flight calls reach the backend once.",
    )
    parser.add_argument("--version", action="version", version=f"gateway {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    serve = sub.add_parser("serve", help="run a gateway node")
    _node_flags(serve, config_required=False)
    _worker_flags(serve)
    _node_flags(
        sub.add_parser(
            "check-config", help="validate a config file (and flags) as serve would, then exit"
        ),
        config_required=True,
    )

    status = sub.add_parser("status", help="show the cluster's nodes and counters from Redis")
    _redis_view_flags(status)
    status.add_argument("--json", action="store_true", help="print one JSON object")
    status.add_argument("--watch", action="store_true", help="refresh every second until Ctrl-C")

    dashboard = sub.add_parser("dashboard", help="serve the live web dashboard of a cluster")
    _redis_view_flags(dashboard)
    dashboard.add_argument(
        "--listen", metavar="HOST:PORT", default="127.0.0.1:8080", help="(default %(default)s)"
    )
    dashboard.set_defaults(history=120)  # the chart's two minutes at one beat a second

    health = sub.add_parser("health", help="exit 0 if a URL answers 200 (or a TCP port accepts)")
    health.add_argument("target", metavar="URL", help="http://HOST:PORT/healthz or tcp://HOST:PORT")
    health.add_argument("--timeout", type=float, default=2.0, metavar="SECONDS")

    backend = sub.add_parser("example-backend", help="run an example Thrift backend")
    backend.add_argument("--listen", metavar="HOST:PORT", required=True)
    backend.add_argument("--service", choices=["supervisor", "poetry"], required=True)
    backend.add_argument("--delay", type=float, default=0.0, metavar="SECONDS")
    backend.add_argument("--protocol", choices=["binary", "compact"], default="binary")
    backend.add_argument("--transport", choices=["framed", "buffered"], default="framed")
    backend.add_argument("--multiplexed", action="store_true")
    backend.add_argument(
        "--slow-delay",
        type=float,
        default=2.0,
        metavar="SECONDS",
        help="delay of calls whose message or title starts with 'slow' (default 2)",
    )
    backend.add_argument(
        "--concurrent",
        action="store_true",
        help="answer a connection's calls concurrently, in completion order (default: one at"
        " a time, in order, as Apache Thrift's servers do)",
    )

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


def _worker_flags(parser: argparse.ArgumentParser) -> None:
    """Hidden: how a multi-worker node's supervisor starts ``serve`` as one of its workers
    (gateway.workers.role). Not for people: the supervisor passes them."""
    hidden = argparse.SUPPRESS
    parser.add_argument("--worker-index", type=int, help=hidden)
    parser.add_argument("--worker-fd", type=int, help=hidden)
    parser.add_argument("--worker-admin", help=hidden)
    parser.add_argument("--worker-redis", help=hidden)


def _redis_view_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--redis", metavar="URL", required=True)
    parser.add_argument("--prefix", default=DEFAULT_PREFIX, help="key prefix (default %(default)s)")
    parser.add_argument(
        "--hot-minutes", type=int, default=5, metavar="N", help="hot keys of the last N minutes"
    )
    parser.add_argument(
        "--history", type=int, default=60, metavar="N", help="history entries per node"
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "serve":
        from gateway.app import run_serve

        return run_serve(args)
    if args.command == "check-config":
        from gateway.app import run_check_config

        return run_check_config(args)
    if args.command == "status":
        from gateway.ops.status import run_status

        return run_status(args)
    if args.command == "dashboard":
        from gateway.dashboard import run_dashboard

        return run_dashboard(args)
    if args.command == "health":
        from gateway.health import run_health

        return run_health(args)
    if args.command == "example-backend":
        from gateway.examples.backend import run_backend

        return run_backend(args)
    if args.command == "demo":
        from gateway.demo import run_demo

        return run_demo(args)
    raise AssertionError(args.command)  # argparse enforces the choices


if __name__ == "__main__":
    sys.exit(main())
