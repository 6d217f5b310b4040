"""CPU per call of TLS on the client port: the gateway's TLS listener vs its plain one, and vs
nginx ``stream`` terminating TLS, under the same load (:mod:`benchmarks.compare`'s engine).

    python -m benchmarks.tls [--json] [--repeat 3] [--seconds 1.5] [--shapes sync,pipelined]

Targets, all in front of the cheap backend (:mod:`benchmarks.responder`), passthrough:

* ``plain``: ``gateway serve``, plain client port (the baseline);
* ``tls``: the same node's ``tls_listen`` port (TLS 1.3, ECDSA P-256 certificate by trustme);
* ``nginx_tls``: nginx ``stream`` with ``listen ... ssl`` (TLS termination), plain upstream;
* ``nginx``: nginx ``stream``, plain, for reference.

The load generator (:mod:`benchmarks.rawload`) speaks only plain TCP, so every target is
reached through one more nginx process (the *originator*, one server per target) that opens
TLS connections to the TLS targets (``proxy_ssl on``) and plain ones to the others: each
target has the same hop in front of it, so the same calls per reactor turn. The originator
plays the clients' part: its CPU is not counted as the proxy's.
Connections are made before the recorded window, so the figures are steady-state record
encryption, not handshakes. CPU is the proxy process's utime+stime per correct reply.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.common import machine_info, raise_fd_limit, stop_children_on_sigterm
from benchmarks.compare import SHAPES, closed_loads, interleaved
from benchmarks.targets import Fleet, Responder, Target
from benchmarks.thirdparty import find_nginx
from gateway.localredis import free_port
from gateway.processes import GatewayProcess, gateway_argv, start_process, wait_for_port

TARGETS = ("plain", "tls", "nginx_tls", "nginx")


def nginx_stream(prefix: Path, module: str | None, servers: str) -> str:
    load = f"load_module {module};\n" if module else ""
    return (
        f"{load}daemon off;\nmaster_process off;\nworker_processes 1;\npid {prefix}/nginx.pid;\n"
        f"error_log {prefix}/error.log warn;\nevents {{ worker_connections 4096; }}\n"
        f"stream {{\n{servers}}}\n"
    )


def terminating(port: int, backend: int, cert: Path, key: Path) -> str:
    """An nginx stream server terminating TLS in front of ``backend`` (plain upstream)."""
    return (
        f"    server {{\n        listen 127.0.0.1:{port} ssl;\n"
        f"        ssl_certificate {cert};\n        ssl_certificate_key {key};\n"
        f"        ssl_protocols TLSv1.2 TLSv1.3;\n        proxy_pass 127.0.0.1:{backend};\n    }}\n"
    )


def plain_server(port: int, upstream: int) -> str:
    """An nginx stream server forwarding plain TCP."""
    return f"    server {{ listen 127.0.0.1:{port}; proxy_pass 127.0.0.1:{upstream}; }}\n"


def originating(port: int, upstream: int) -> str:
    """An nginx stream server taking plain connections and opening TLS ones upstream."""
    return (
        f"    server {{\n        listen 127.0.0.1:{port};\n"
        f"        proxy_pass 127.0.0.1:{upstream};\n"
        f"        proxy_ssl on;\n        proxy_ssl_protocols TLSv1.3;\n    }}\n"
    )


class TLSFleet:
    """The processes of one run, on top of :class:`benchmarks.targets.Fleet`."""

    def __init__(self, fleet: Fleet, only: Sequence[str]) -> None:
        self.fleet, self.only = fleet, only
        self.nginx = find_nginx()
        self.cert, self.key = self._certificate(fleet.tmp)

    @staticmethod
    def _certificate(tmp: Path) -> tuple[Path, Path]:
        import trustme  # the test extra: certificates for 127.0.0.1

        leaf = trustme.CA().issue_cert("127.0.0.1")
        cert, key = tmp / "server.pem", tmp / "server.key"
        leaf.cert_chain_pems[0].write_to_path(str(cert))
        leaf.private_key_pem.write_to_path(str(key))
        return cert, key

    def _nginx(self, name: str, servers: str, port: int) -> int | None:
        if isinstance(self.nginx, str):
            self.fleet.skipped[name] = self.nginx
            return None
        binary, version, module = self.nginx
        prefix = self.fleet.tmp / name
        prefix.mkdir()
        conf = prefix / "nginx.conf"
        conf.write_text(nginx_stream(prefix, module, servers))
        argv = [binary, "-p", str(prefix), "-c", str(conf), "-e", str(prefix / "error.log")]
        process = self.fleet._own(start_process(argv))
        wait_for_port("127.0.0.1", port, timeout=10)
        self.fleet.versions["nginx"] = f"nginx {version}"
        return process.pid

    def start(self) -> list[Target]:
        """Every target, each reached through its own server of the one originating nginx
        (plain ones too: every target then has the same hop in front of it)."""
        fleet = self.fleet
        responder: Responder = fleet.responder()
        node = self._gateway(responder)
        tls_port = int(node.process.wait_for_line(r" tls 127\.0\.0\.1:(\d+)").group(1))
        # slug -> (label, port the originator forwards to, over TLS?, the proxy's pids)
        behind: dict[str, tuple[str, int, bool, list[int]]] = {
            "plain": ("gateway, plain port", node.port, False, [node.pid]),
            "tls": ("gateway, tls_listen", tls_port, True, [node.pid]),
        }
        for slug, tls in (("nginx_tls", True), ("nginx", False)):
            if slug not in self.only:
                continue
            port = free_port()
            if tls:
                servers = terminating(port, responder.port, self.cert, self.key)
            else:
                servers = plain_server(port, responder.port)
            pid = self._nginx(slug, servers, port)
            if pid is not None:
                label = "nginx stream, TLS termination" if tls else "nginx stream, plain"
                behind[slug] = (label, port, tls, [pid])
        wanted = [slug for slug in TARGETS if slug in self.only and slug in behind]
        fronts = {slug: free_port() for slug in wanted}
        servers = "".join(
            originating(fronts[slug], behind[slug][1])
            if behind[slug][2]
            else plain_server(fronts[slug], behind[slug][1])
            for slug in wanted
        )
        if not wanted or self._nginx("originator", servers, fronts[wanted[0]]) is None:
            return []
        return [
            Target(slug, behind[slug][0], "127.0.0.1", fronts[slug], behind[slug][3], responder.pid)
            for slug in wanted
        ]

    def _gateway(self, responder: Responder) -> GatewayProcess:
        config = self.fleet.tmp / "gateway.toml"
        config.write_text(
            f'[gateway]\ntls_listen = "127.0.0.1:0"\ntls_cert = "{self.cert}"\n'
            f'tls_key = "{self.key}"\n[methods.alertSupervisor]\nmode = "passthrough"\n'
        )
        argv = gateway_argv(backend=responder.address, config=config, node_id="bench-tls")
        return GatewayProcess.from_process(self.fleet._own(start_process(argv)), timeout=60.0)


def render(result: dict[str, Any]) -> str:
    lines = [f"# TLS on the client port ({result['command']})", ""]
    for shape, rows in result["summary"].items():
        lines += [
            f"## {shape}",
            "",
            "| target | calls/s | proxy CPU µs/call | p50 ms | p99 ms |",
            "|---|---:|---:|---:|---:|",
        ]
        for slug, row in rows.items():
            lat = row["latency_ms"]
            lines.append(
                f"| {slug} | {row['calls_per_s']:,.0f} | {row['proxy_cpu_us_per_call_median']} "
                f"| {lat.get('p50')} | {lat.get('p99')} |"
            )
        lines.append("")
    for slug, why in result["skipped"].items():
        lines.append(f"skipped {slug}: {why}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.tls", description=__doc__)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--repeat", type=int, default=3, help="rounds over all targets")
    parser.add_argument("--seconds", type=float, default=1.5, help="recorded window of a sync run")
    parser.add_argument("--warmup", type=float, default=0.3, help="unrecorded seconds per run")
    parser.add_argument("--only", default=",".join(TARGETS), help="comma list of targets")
    parser.add_argument("--shapes", default="sync,pipelined", help="comma list of loads")
    args = parser.parse_args(argv)
    args.only = [t for t in args.only.split(",") if t]
    wanted = args.shapes.split(",")
    args.shapes = [s for s in SHAPES if s.slug in wanted]
    if not args.shapes or set(args.only) - set(TARGETS):
        parser.error(f"--only from {', '.join(TARGETS)}; --shapes from sync,pipelined,light")
    stop_children_on_sigterm()
    raise_fd_limit()
    command = f"python -m benchmarks.tls --repeat {args.repeat} --seconds {args.seconds:g}"
    with Fleet() as fleet:
        targets = TLSFleet(fleet, args.only).start()
        runs, summary = interleaved(targets, args.repeat, closed_loads(args))
        result = {
            "benchmark": "tls",
            "command": command,
            "machine": machine_info(),
            "summary": summary,
            "skipped": dict(fleet.skipped),
            "versions": dict(fleet.versions),
            "runs": runs,
        }
    print(json.dumps(result, sort_keys=True) if args.json else render(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
