"""Markdown for :mod:`benchmarks.compare` (results.md and the README copy its tables)."""

from __future__ import annotations

import statistics
from typing import Any

from benchmarks.common import markdown_table

CLOSED_HEADERS = [
    "target",
    "calls/s",
    "proxy CPU µs/call",
    "proxy CPU µs/call, every run",
    "backend CPU µs/call",
    "generator CPU µs/call",
    "p50 ms",
    "p99 ms",
    "p99.9 ms",
    "errors",
    "join / cache-hit rate",
]


def _cpu_runs(row: dict[str, Any]) -> str:
    values = row["proxy_cpu_us_per_call_runs"]
    return " ".join("-" if v is None else f"{v:.1f}" for v in values)


def _rates(row: dict[str, Any]) -> str:
    join, hit = row.get("join_rate"), row.get("cache_hit_rate")
    if join is None and hit is None:
        return "-"
    return f"{join or 0:.3f} / {hit or 0:.3f}"


def _in_order(result: dict[str, Any], rows: dict[str, Any]) -> list[tuple[str, Any]]:
    """``rows`` (slug -> row) in the order the targets were started (JSON sorts keys)."""
    return [(t["slug"], rows[t["slug"]]) for t in result["targets"] if t["slug"] in rows]


def closed_table(result: dict[str, Any], shape: str) -> str:
    labels = {t["slug"]: t["label"] for t in result["targets"]}
    rows = []
    for slug, row in _in_order(result, result["summary"][shape]):
        lat = row["latency_ms"]
        rows.append(
            [
                labels[slug],
                row["calls_per_s"],
                row["proxy_cpu_us_per_call_median"],
                _cpu_runs(row) if row["proxy_cpu_us_per_call_median"] is not None else "-",
                row["backend_cpu_us_per_call"],
                row["generator_cpu_us_per_call"],
                lat.get("p50"),
                lat.get("p99"),
                lat.get("p99.9"),
                row["errors"],
                _rates(row),
            ]
        )
    return markdown_table(CLOSED_HEADERS, rows)


def light_table(result: dict[str, Any]) -> str:
    labels = {t["slug"]: t["label"] for t in result["targets"]}
    light = result["summary"]["light"]
    direct = light.get("direct", {}).get("latency_ms", {})
    delayed = {t["slug"] for t in result["targets"] if t["backend_delay_s"]}
    rows = []
    for slug, row in _in_order(result, light):
        lat = row["latency_ms"]
        comparable = slug != "direct" and slug not in delayed  # same backend, no delay
        added = [
            round(lat[q] - direct[q], 4) if q in lat and q in direct and comparable else None
            for q in ("p50", "p99")
        ]
        rows.append(
            [
                labels[slug],
                row["calls_per_s"],
                lat.get("p50"),
                lat.get("p99"),
                lat.get("p99.9"),
                *added,
                row["proxy_cpu_us_per_call_median"],
                row["errors"],
            ]
        )
    headers = ["target", "calls/s", "p50 ms", "p99 ms", "p99.9 ms"]
    headers += ["added p50 ms vs direct", "added p99 ms vs direct", "proxy CPU µs/call", "errors"]
    return markdown_table(headers, rows)


def open_table(result: dict[str, Any]) -> str:
    open_loop = result["open_loop"]
    labels = {t["slug"]: t["label"] for t in result["targets"]}
    names = list(open_loop["rates"])
    headers = ["target"]
    for name in names:
        headers += [f"{name}: calls/s", "p50 ms", "p99 ms", "p99.9 ms", "proxy CPU µs/call"]
    headers += ["errors", "not sent"]
    rows = []
    for slug, _ in _in_order(result, open_loop["summary"][names[0]]):
        row: list[Any] = [labels[slug]]
        errors = not_sent = 0
        for name in names:
            r = open_loop["summary"][name][slug]
            lat = r["latency_ms"]
            row += [r["calls_per_s"], lat.get("p50"), lat.get("p99"), lat.get("p99.9")]
            row.append(r["proxy_cpu_us_per_call_median"])
            errors += r["errors"]
            not_sent += r["not_sent"]
        row += [errors, not_sent]
        rows.append(row)
    return markdown_table(headers, rows)


def generator_table(result: dict[str, Any]) -> str:
    """The generator's own CPU per call next to the passthrough gateway's, per load shape."""
    shapes = result["settings"]["shapes"]
    groups = [(s["title"], s["slug"], result["summary"][s["slug"]]) for s in shapes]
    if result["open_loop"]:
        ol = result["open_loop"]
        groups += [
            (f"open loop {name} ({rate:,} calls/s)", f"open {name}", ol["summary"][name])
            for name, rate in ol["rates"].items()
        ]
    all_runs = result["runs"] + (result["open_loop"] or {}).get("runs", [])
    rows = []
    for title, shape, summary in groups:
        runs = [r for r in all_runs if r["shape"] == shape]
        own = [r["generator_cpu_us_per_call"] for r in runs if r["generator_cpu_us_per_call"]]
        gw = summary.get("passthrough", {}).get("proxy_cpu_us_per_call_median")
        median = round(statistics.median(own), 2) if own else None
        rows.append(
            [title, median, min(own, default=None), max(own, default=None), gw, _ratio(median, gw)]
        )
    headers = [
        "load",
        "generator CPU µs/call (median of all runs)",
        "min",
        "max",
        "gateway passthrough CPU µs/call",
        "generator / gateway",
    ]
    return markdown_table(headers, rows)


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 2) if a is not None and b else None


def targets_table(result: dict[str, Any]) -> str:
    """Issue 12's section-2 targets, as ratios of this run's figures."""
    rows = []
    for shape in ("sync", "pipelined"):
        if shape not in result["summary"]:
            continue
        s = result["summary"][shape]

        def cpu(slug: str, s: dict[str, Any] = s) -> float | None:
            return s[slug]["proxy_cpu_us_per_call_median"] if slug in s else None

        pt = cpu("passthrough")
        rows += [
            [shape, "passthrough CPU / nginx CPU", _ratio(pt, cpu("nginx")), "<= 3.5"],
            [shape, "passthrough CPU / haproxy CPU", _ratio(pt, cpu("haproxy")), "-"],
            [
                shape,
                "coalesce (distinct) CPU / passthrough CPU",
                _ratio(cpu("coalesce"), pt),
                "<= 1.2",
            ],
            [shape, "hot-key join CPU / passthrough CPU", _ratio(cpu("join"), pt), "<= 0.5"],
            [shape, "cache hit CPU / passthrough CPU", _ratio(cpu("cache"), pt), "<= 0.5"],
        ]
        if "base_passthrough" in s:
            rows.append(
                [
                    shape,
                    "passthrough CPU / baseline passthrough CPU",
                    _ratio(pt, cpu("base_passthrough")),
                    "<= 0.5",
                ]
            )
        if "passthrough_2w" in s and "passthrough" in s:
            calls = {k: s[k]["calls_per_s"] for k in ("passthrough", "passthrough_2w")}
            rows += [
                [
                    shape,
                    "2 workers calls/s / 1 worker calls/s",
                    _ratio(calls["passthrough_2w"], calls["passthrough"]),
                    "-",
                ],
                [shape, "2 workers CPU / 1 worker CPU", _ratio(cpu("passthrough_2w"), pt), "-"],
            ]
        if "coalesce_2w" in s and "coalesce" in s:
            rows.append(
                [
                    shape,
                    "coalesce: 2 workers calls/s / 1 worker calls/s",
                    _ratio(s["coalesce_2w"]["calls_per_s"], s["coalesce"]["calls_per_s"]),
                    "-",
                ]
            )
    light = result["summary"].get("light", {})
    if "passthrough" in light and "direct" in light:
        added = light["passthrough"]["latency_ms"]["p50"] - light["direct"]["latency_ms"]["p50"]
        rows.append(["light", "passthrough added latency p50, ms", round(added, 4), "<= 0.15"])
    return markdown_table(["load", "figure", "this run", "issue 12 target"], rows)


def render(result: dict[str, Any]) -> str:
    machine = result["machine"]
    settings = result["settings"]
    lines = [
        f"Produced by `{result['command']}` in {result['elapsed_s']:.0f} s on {machine['cores']}"
        f" cores ({machine['cpu']}, {machine['os']}, {machine['python']}); load average (1 min)"
        f" {result['load_avg_1m_before']} before, {machine['load_avg_1m']} after."
        + "".join(f" {v}." for v in result["versions"].values()),
        "",
        f"Each closed-loop row: {settings['repeat']} runs interleaved with every other target"
        f" (order rotated per round), each {settings['warmup']:g} s warm-up + a recorded window"
        f" ({settings['seconds']:g} s for sync and open loop, x0.7 for the others). Proxy CPU:"
        " the median of the runs (each listed); calls/s, backend and generator CPU: the"
        " median-throughput run; latency: over every call of every run. CPU per call ="
        " utime+stime over the window / correct replies in it. The generator is"
        " `benchmarks.rawload` (one Python thread, epoll, pre-encoded calls, every reply"
        " checked by seqid and content); every target fronts the cheap backend"
        " `benchmarks.responder` unless it says otherwise.",
    ]
    if result.get("baseline_rev"):
        lines += [
            "",
            f"Baseline: the same gateway modes from a `git worktree` of {result['baseline_rev']}"
            " (`--baseline-rev`), in the same interleaved rounds.",
        ]
    for slug, why in result["skipped"].items():
        lines += ["", f"**{slug} skipped:** {why}"]
    for shape in result["settings"]["shapes"]:
        if shape["slug"] == "light":
            continue
        lines += ["", f"#### {shape['title']}", "", closed_table(result, shape["slug"])]
    if "light" in result["summary"]:
        lines += ["", "#### 1 connection, sequential calls (added latency at light load)", ""]
        lines.append(light_table(result))
        lines += [
            "",
            "Added latency = this row's percentile minus the direct row's (same cheap backend);"
            " not shown for a target whose backend has a delay.",
        ]
    if result["open_loop"]:
        ol = result["open_loop"]
        lines += [
            "",
            f"#### Open loop at 50% and 90% of the passthrough gateway's capacity"
            f" ({ol['capacity_calls_per_s']:,.0f} calls/s, its 64 x 1 throughput above)",
            "",
            f"Calls due at a fixed rate, round-robin over {ol['connections']} connections (at"
            f" most {ol['max_in_flight_per_connection']} in flight each); latency from each"
            " call's due time, so queueing in front of a slow target counts. Not sent: calls"
            " due but still waiting for a free slot when the window closed (the target fell"
            " behind the rate); they are not in the latencies. Proxy CPU per call is higher"
            " than in the closed loop: at these rates every call wakes the proxy on its own.",
            "",
            open_table(result),
        ]
    lines += ["", "#### Issue 12 section 2 targets, as ratios of this run", ""]
    lines.append(targets_table(result))
    lines += ["", "#### The load generator's own cost (utime+stime of its process)", ""]
    lines.append(generator_table(result))
    lines += [
        "",
        "Setup (`<responder>`: the cheap backend's port; `<tmp>`: a temporary directory):",
        "",
    ]
    for target in result["targets"]:
        body = "\n".join(target["setup"]).strip().replace("\n", "\n  ")
        lines.append(f"* {target['label']}: {body}")
    return "\n".join(lines)
