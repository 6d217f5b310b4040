"""nginx's TCP stream proxy as a no-parsing baseline next to the gateway in passthrough mode.

    python -m benchmarks.nginx_baseline [--json] [--clients N] [--rounds R] [--repeat K]

nginx forwards bytes without looking at them (one backend connection per client
connection); the gateway in passthrough mode parses every frame's header, rewrites the
seqid and multiplexes callers onto its pooled backend connections. Both front the same
example backend (delay 0) and get the same herd, alternately, ``--repeat`` times; the run
with the median throughput of each is shown. nginx runs as one process (``master_process
off``, one worker), from a temporary prefix directory, stopped by PID.

When no nginx binary (or its stream module) is found this prints "nginx not available -
skipped" and exits 0: the benchmark suite must run on a machine without nginx.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.common import (
    CLIENT_NOTE,
    HerdRun,
    load_main,
    machine_info,
    markdown_table,
    median_run,
    raise_fd_limit,
    ratio,
    run_herd,
    spread,
    write_method_config,
)
from gateway.localredis import free_port
from gateway.testing import ManagedProcess, start_example_backend, start_gateway, wait_for_port

SKIPPED = "nginx not available — skipped"
MODULE_DIRS = ("/usr/lib/nginx/modules", "/usr/lib64/nginx/modules", "/usr/share/nginx/modules")


def find_nginx() -> tuple[str, str, str | None] | str:
    """``(binary, version, stream module to load or None if built in)``, or why not."""
    binary = shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if Path(p).exists()), None
    )
    if binary is None:
        return "no nginx binary on PATH, /usr/sbin or /usr/local/sbin"
    try:
        info = subprocess.run([binary, "-V"], capture_output=True, text=True, timeout=10).stderr
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"{binary} -V failed: {exc}"
    version_match = re.search(r"nginx/(\S+)", info)
    version = version_match.group(1) if version_match else "unknown"
    if re.search(r"--with-stream(\s|$)", info):
        return binary, version, None
    if "--with-stream=dynamic" not in info:
        return f"nginx {version} was built without the stream module"
    modules_match = re.search(r"--modules-path=(\S+)", info)
    dirs = ([modules_match.group(1)] if modules_match else []) + list(MODULE_DIRS)
    for directory in dirs:
        module = Path(directory) / "ngx_stream_module.so"
        if module.exists():
            return binary, version, str(module)
    return f"nginx {version} has a dynamic stream module, but ngx_stream_module.so is not installed"


def nginx_config(prefix: Path, port: int | str, backend_port: int | str, module: str | None) -> str:
    load = f"load_module {module};\n" if module else ""
    return f"""{load}daemon off;
master_process off;
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 4096; }}
stream {{
    server {{
        listen 127.0.0.1:{port};
        proxy_pass 127.0.0.1:{backend_port};
    }}
}}
"""


def start_nginx(
    binary: str, prefix: Path, backend_port: int, module: str | None
) -> tuple[ManagedProcess, int]:
    port = free_port()
    conf = prefix / "nginx.conf"
    conf.write_text(nginx_config(prefix, port, backend_port, module))
    argv = [binary, "-p", str(prefix), "-c", str(conf), "-e", str(prefix / "error.log")]
    process = ManagedProcess(argv)
    try:
        wait_for_port("127.0.0.1", port, timeout=10)
    except TimeoutError:
        process.stop()
        log = (prefix / "error.log").read_text() if (prefix / "error.log").exists() else ""
        raise RuntimeError(f"nginx did not listen: {process.describe_output()} {log}") from None
    return process, port


def run(clients: int, rounds: int, repeat: int, command: str) -> dict[str, Any]:
    found = find_nginx()
    base: dict[str, Any] = {"benchmark": "nginx", "command": command}
    if isinstance(found, str):
        return {**base, "available": False, "reason": found}
    binary, version, module = found
    raise_fd_limit()
    runs: dict[str, list[HerdRun]] = {"direct": [], "nginx": [], "gateway": []}
    with (
        tempfile.TemporaryDirectory(prefix="gw-bench-nginx-") as tmp,
        start_example_backend(delay=0.0) as backend,
    ):
        prefix = Path(tmp)
        try:
            nginx, nginx_port = start_nginx(binary, prefix, backend.port, module)
        except RuntimeError as exc:
            return {**base, "available": False, "reason": str(exc)[-500:]}
        config = write_method_config(prefix, "passthrough", mode="passthrough")
        gateway = None
        try:
            gateway = start_gateway(backend=backend.address, config=config, node_id="bench-nginx")
            targets = {
                "direct": ({"<backend>": backend.address}, {}),
                "nginx": ({"<nginx>": f"127.0.0.1:{nginx_port}"}, {"nginx": nginx.pid}),
                "gateway": ({"<gateway>": gateway.address}, {"gateway": gateway.pid}),
            }
            for _ in range(repeat):
                for path, (target, watch) in targets.items():
                    watch = {**watch, "backend": backend.process.pid}
                    runs[path].append(
                        run_herd(
                            target, clients, clients, rounds, watch=watch, backend=backend.address
                        )
                    )
        finally:
            if gateway is not None:
                gateway.stop()
            nginx.stop()
    chosen = {path: median_run(path_runs) for path, path_runs in runs.items()}
    direct = chosen["direct"].summary
    rows = {}
    for path, herd_run in chosen.items():
        row = herd_run.row()
        row["throughput_vs_direct"] = ratio(herd_run.summary["calls_per_s"], direct["calls_per_s"])
        row["p50_vs_direct"] = ratio(
            herd_run.summary["latency_ms"]["p50"], direct["latency_ms"]["p50"]
        )
        rows[path] = row
    return {
        **base,
        "available": True,
        "nginx": f"nginx {version} ({binary}), stream proxy_pass, master_process off, 1 worker",
        "nginx_config": nginx_config(Path("<prefix>"), "<port>", "<backend-port>", module),
        "gateway_command": "gateway serve --listen 127.0.0.1:0 --backend <backend>"
        ' --config passthrough.toml  # [methods.alertSupervisor] mode = "passthrough"',
        "clients": clients,
        "rounds": rounds,
        "repeat": repeat,
        "note": CLIENT_NOTE,
        "machine": machine_info(),
        "rows": rows,
        "calls_per_s_all_runs": {
            p: [r.summary["calls_per_s"] for r in rs] for p, rs in runs.items()
        },
    }


def render(result: dict[str, Any]) -> str:
    if not result["available"]:
        return f"{SKIPPED} ({result['reason']})"
    rows = result["rows"]
    labels = {
        "direct": "direct to backend",
        "nginx": "nginx stream proxy",
        "gateway": "gateway, passthrough",
    }
    table = markdown_table(
        [
            "path",
            "calls/s",
            "p50 ms",
            "p99 ms",
            "proxy CPU s/1k calls",
            "throughput vs direct",
            "p50 vs direct",
            "errors",
            "calls/s of every run",
        ],
        [
            [
                labels[p],
                r["calls_per_s"],
                r["p50_ms"],
                r["p99_ms"],
                r.get("nginx_cpu_s_per_1k", r.get("gateway_cpu_s_per_1k")),
                r["throughput_vs_direct"],
                r["p50_vs_direct"],
                r["errors"],
                spread(result["calls_per_s_all_runs"][p]),
            ]
            for p, r in rows.items()
        ],
    )
    return "\n".join(
        [
            f"Produced by `{result['command']}`: {result['clients']} clients x {result['rounds']}"
            f" rounds, distinct keys, backend delay 0; each path run {result['repeat']} times"
            " alternately, median-throughput run shown. " + result["nginx"] + ".",
            "",
            table,
            "",
            result["note"],
            "",
            f"* herd: `{rows['direct']['command']}` (`--targets` `<backend>`, `<nginx>` or"
            " `<gateway>`)",
            f"* gateway: `{result['gateway_command']}`",
            "* nginx: `nginx -p <prefix> -c <prefix>/nginx.conf -e <prefix>/error.log` with",
            "",
            "```nginx",
            result["nginx_config"].rstrip(),
            "```",
        ]
    )


def main(argv: Sequence[str] | None = None) -> int:
    return load_main(
        "benchmarks.nginx_baseline",
        __doc__,
        run,
        render,
        argv,
        repeat_help="runs per path (median shown)",
    )


if __name__ == "__main__":
    sys.exit(main())
