"""Live readings from the nodes' admin endpoints (``/healthz``, ``/metrics``).

The Redis heartbeats refresh once a second, too coarse for a progress line on a herd that
lasts a few seconds, so the demo asks the nodes directly while it runs. Every probe is
best effort: a node that does not answer in time reads as "no data", never as an error.
"""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request
from typing import Any

_SAMPLE = re.compile(r"^gateway_(\w+?)(?:_total)?\{[^}]*\} (\S+)$", re.MULTILINE)


def _get(url: str, timeout: float) -> bytes | None:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            body: bytes = response.read()
            return body
    except (OSError, urllib.error.URLError, ValueError):
        return None


def healthz(admin_url: str, timeout: float = 0.5) -> dict[str, Any] | None:
    """The node's /healthz JSON (``{"listening", "node_id", "redis", "in_flight"}``) or None."""
    body = _get(f"{admin_url}/healthz", timeout)
    if body is None:
        return None
    try:
        parsed = json.loads(body)
    except ValueError:
        return None
    return parsed if isinstance(parsed, dict) else None


def counters(admin_url: str, timeout: float = 0.5) -> dict[str, float]:
    """The node's ``gateway_*`` counters and gauges by short name (``calls``, ``in_flight``...);
    empty when the node does not answer."""
    body = _get(f"{admin_url}/metrics", timeout)
    if body is None:
        return {}
    values: dict[str, float] = {}
    for name, value in _SAMPLE.findall(body.decode("utf-8", "replace")):
        try:
            values[name] = float(value)
        except ValueError:
            continue
    return values
