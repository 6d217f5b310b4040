"""Text sections of ``gateway status`` below the node table: in flight, hot keys, history."""

from __future__ import annotations

from typing import Any


def render_in_flight(calls: list[dict[str, Any]]) -> str:
    if not calls:
        return "IN FLIGHT: none"
    rows = [
        [
            f"{c['age_s']:.1f}s",
            f"{c['backend']}.{c['method']}" if c["backend"] else c["method"],
            c["leader"] or "-",
            str(c["followers"]),
            c["key_id"],
        ]
        for c in calls
    ]
    return "IN FLIGHT (oldest first)\n" + _grid(
        ["AGE", "METHOD", "LEADER", "FOLLOWERS", "KEY_ID"], rows
    )


def render_hot_keys(hot: list[dict[str, Any]], minutes: int) -> str:
    title = f"HOT KEYS (last {minutes} min)"
    if not hot:
        return f"{title}: none"
    rows = [
        [
            str(h["callers"]),
            f"{h['backend']}.{h['method']}" if h["backend"] else h["method"],
            h["key_id"],
            h.get("preview", "-"),
        ]
        for h in hot
    ]
    return f"{title}\n" + _grid(["CALLERS", "METHOD", "KEY_ID", "PREVIEW"], rows)


_SPARKS = "▁▂▃▄▅▆▇█"


def render_history(history: dict[str, list[dict[str, Any]]]) -> str:
    """Per node: calls/s as a sparkline (one character per heartbeat), then the window's
    calls, backend calls and ratio."""
    if not any(history.values()):
        return "HISTORY: none"
    rows = []
    for node_id, entries in sorted(history.items()):
        rates = [e["calls"] / e["dt"] if e["dt"] > 0 else 0.0 for e in entries]
        top = max(rates, default=0.0)
        spark = "".join(_SPARKS[int(r / top * (len(_SPARKS) - 1))] if top else "▁" for r in rates)
        calls = sum(e["calls"] for e in entries)
        backend = sum(e["backend_calls"] for e in entries)
        seconds = sum(e["dt"] for e in entries)
        ratio = round(calls / backend, 2) if backend else None
        rows.append(
            [
                node_id,
                f"{seconds:.0f}s",
                str(calls),
                str(backend),
                "-" if ratio is None else f"{ratio:.2f}",
                f"{top:.0f}/s",
                spark or "-",
            ]
        )
    return "HISTORY (per heartbeat, calls/s)\n" + _grid(
        ["NODE", "SPAN", "CALLS", "BACKEND", "RATIO", "PEAK", "CALLS/S"], rows
    )


def _grid(header: list[str], rows: list[list[str]]) -> str:
    table = [header, *rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in table
    )
