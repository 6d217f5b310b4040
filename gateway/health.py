"""``gateway health URL``: a probe for container healthchecks (the image has no curl).

``http://HOST:PORT/path`` is healthy when it answers 200; ``tcp://HOST:PORT`` when the port
accepts a connection. Exit 0 (healthy) or 1, with one line saying why on failure.
"""

from __future__ import annotations

import argparse
import socket
import sys
import urllib.error
import urllib.request
from urllib.parse import urlsplit


def probe(target: str, timeout: float) -> str | None:
    """None when ``target`` is healthy, else why not (one line)."""
    parts = urlsplit(target)
    if parts.scheme == "tcp":
        if not parts.hostname or parts.port is None:
            return f"expected tcp://HOST:PORT, got {target!r}"
        try:
            with socket.create_connection((parts.hostname, parts.port), timeout=timeout):
                return None
        except OSError as exc:
            return f"{parts.hostname}:{parts.port}: {exc}"
    if parts.scheme not in ("http", "https"):
        return f"expected http://, https:// or tcp://, got {target!r}"
    try:
        with urllib.request.urlopen(target, timeout=timeout) as response:
            status: int = response.status
    except urllib.error.HTTPError as exc:
        status = exc.code
    except (OSError, ValueError) as exc:
        return f"{target}: {exc}"
    return None if status == 200 else f"{target}: HTTP {status}"


def run_health(args: argparse.Namespace) -> int:
    problem = probe(args.target, args.timeout)
    if problem is None:
        return 0
    print(f"gateway health: {problem}", file=sys.stderr)
    return 1
