"""nginx (stream proxy) and haproxy (tcp mode) for the comparison: finding the installed
binaries, or why they cannot be used, and the one-process configs they run with."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

MODULE_DIRS = ("/usr/lib/nginx/modules", "/usr/lib64/nginx/modules", "/usr/share/nginx/modules")


def _binary(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    candidates = (f"/usr/sbin/{name}", f"/usr/local/sbin/{name}")
    return next((p for p in candidates if Path(p).exists()), None)


def find_nginx() -> tuple[str, str, str | None] | str:
    """``(binary, version, stream module to load or None if built in)``, or why not."""
    binary = _binary("nginx")
    if binary is None:
        return "no nginx binary (apt-get install nginx-core libnginx-mod-stream)"
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
    return f"nginx {version}: ngx_stream_module.so not installed (libnginx-mod-stream)"


def nginx_config(prefix: str, port: int | str, backend_port: int | str, module: str | None) -> str:
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


def find_haproxy() -> tuple[str, str] | str:
    """``(binary, version)``, or why not."""
    binary = _binary("haproxy")
    if binary is None:
        return "no haproxy binary (apt-get install haproxy)"
    try:
        info = subprocess.run([binary, "-v"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"{binary} -v failed: {exc}"
    match = re.search(r"version (\S+)", info)
    return binary, match.group(1) if match else "unknown"


def haproxy_config(port: int | str, backend_port: int | str) -> str:
    return f"""global
    nbthread 1
    maxconn 8192
defaults
    mode tcp
    timeout connect 5s
    timeout client 60s
    timeout server 60s
listen thrift
    bind 127.0.0.1:{port}
    server backend 127.0.0.1:{backend_port}
"""
