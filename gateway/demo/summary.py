"""The demo's result: one dict (the ``--json`` output) and its human-readable rendering.

Three independent sources are combined on purpose, so each number can be checked against
another: the herd (what clients saw), the backends' own ``backendStats()`` (what really
reached them) and the nodes' Redis heartbeats (what each gateway node counted).
"""

from __future__ import annotations

from typing import Any

from gateway.demo.processes import Settings
from gateway.ops.status import render_table

DRIVEN = ("alertSupervisor", "getPoem")  # the methods the herd calls


def backend_calls(stats: dict[str, dict[str, int]]) -> dict[str, int]:
    """Calls per method over all backends, plus ``total``; ``backendStats`` itself (our own
    probe) and methods nobody called are left out."""
    merged: dict[str, int] = dict.fromkeys(DRIVEN, 0)
    for counts in stats.values():
        for method, count in counts.items():
            if method != "backendStats" and (count or method in merged):
                merged[method] = merged.get(method, 0) + count
    return {"total": sum(merged.values()), **merged}


def build_summary(
    settings: Settings,
    herd: dict[str, Any],
    backend_stats: dict[str, dict[str, int]],
    report: dict[str, Any],
    pids: dict[str, int],
    redis_url: str,
) -> dict[str, Any]:
    """``herd``: clients.herd's summary; ``report``: gateway.ops.status.collect()."""
    backend = backend_calls(backend_stats)
    totals = report["totals"]
    client_calls = int(herd["client_calls"])
    return {
        "ok": herd["wrong_replies"] == 0 and herd["errors"] == 0 and not herd["stray_replies"],
        "settings": {
            "nodes": settings.nodes,
            "clients": settings.clients,
            "keys": settings.keys,
            "poems": settings.poems,
            "rounds": settings.rounds,
            "delay": settings.delay,
            "protocols": ["binary", "compact"],
        },
        "client_calls": client_calls,
        "client_calls_per_method": {
            name: tally["client_calls"] for name, tally in herd["per_method"].items()
        },
        "backend_calls": backend,
        "coalescing_ratio": round(client_calls / backend["total"], 2) if backend["total"] else None,
        "coalesced_local": totals["coalesced_local"],
        "coalesced_remote": totals["coalesced_remote"],
        "cache_hits": totals["cache_hits"],
        "wrong_replies": herd["wrong_replies"],
        "errors": herd["errors"],
        "error_kinds": herd["error_kinds"],
        "stray_replies": herd["stray_replies"],
        "wrong_samples": herd["wrong_samples"],
        "latency_ms": herd["latency_ms"],
        "herd_elapsed_s": herd["elapsed_s"],
        "calls_per_s": herd["calls_per_s"],
        "gateway_totals": totals,
        "nodes": report["nodes"],
        "redis_url": redis_url,
        "pids": pids,
    }


def _methods(counts: dict[str, int]) -> str:
    return ", ".join(f"{name} {n}" for name, n in counts.items() if name != "total")


def render_summary(s: dict[str, Any]) -> str:
    """The summary table, then the per-node table ``gateway status`` prints."""
    cfg, lat = s["settings"], s["latency_ms"]
    ratio = "-" if s["coalescing_ratio"] is None else f"{s['coalescing_ratio']:.1f}"
    rows = [
        ("client calls", s["client_calls"], _methods(s["client_calls_per_method"])),
        ("backend calls", s["backend_calls"]["total"], _methods(s["backend_calls"])),
        ("coalescing ratio", ratio, "client calls answered per backend call"),
        ("joined locally", s["coalesced_local"], "joined an identical call on the same node"),
        ("joined remotely", s["coalesced_remote"], "followed another node's leader via Redis"),
        ("cache hits", s["cache_hits"], "answered from the shared getPoem cache"),
        ("wrong replies", s["wrong_replies"], "a caller got someone else's answer"),
        ("errors", s["errors"], ", ".join(f"{k} x{n}" for k, n in s["error_kinds"].items())),
        ("latency p50", f"{lat['p50']:.1f} ms", f"backend delay {cfg['delay'] * 1000:.0f} ms"),
        ("latency p99", f"{lat['p99']:.1f} ms", f"max {lat['max']:.1f} ms"),
        ("herd time", f"{s['herd_elapsed_s']:.2f} s", f"{s['calls_per_s']:.0f} calls/s"),
    ]
    width = max(len(str(value)) for _, value, _ in rows)
    lines = [
        f"{cfg['clients']} clients (binary + compact) x {cfg['rounds']} rounds over"
        f" {cfg['nodes']} nodes: alertSupervisor with {cfg['keys']} distinct messages per round"
        + (f", getPoem with {cfg['poems']} titles" if cfg["poems"] else ""),
        "",
        f"{'METRIC':<18}{'VALUE':>{width}}  NOTE",
    ]
    lines += [f"{name:<18}{value!s:>{width}}  {note}".rstrip() for name, value, note in rows]
    for sample in s["wrong_samples"]:
        lines.append(f"  wrong: expected {sample['expected']!r}, got {sample['got']}")
    if s["ok"]:
        verdict = f"OK: all {s['client_calls']} client calls got their own right answer."
    else:
        verdict = (
            f"FAILED: {s['wrong_replies']} wrong replies, {s['errors']} errors,"
            f" {s['stray_replies']} stray replies."
        )
    lines += [
        "",
        "Per node (Redis gw:node:<id> heartbeats):",
        render_table({"nodes": s["nodes"], "totals": s["gateway_totals"]}),
        "",
        verdict,
    ]
    return "\n".join(lines)
