// Gateway dashboard: polls api/status (the `gateway status --json` report) every second and
// renders it. No framework and nothing fetched from elsewhere: the page must work offline.
// Every value from the report reaches the page through textContent (previews and node ids
// are data, never markup).
"use strict";

const POLL_MS = 1000;
const RATIO_WINDOW_S = 10; // the chart's ratio line: calls / backend calls over this window
const RATE_WINDOW_S = 10; // the calls/s tiles average this many seconds
const OLD_CALL_S = 30; // in-flight calls older than this are highlighted
const SVG = "http://www.w3.org/2000/svg";

const $ = (id) => document.getElementById(id);
const state = { updates: 0, failures: 0, last: null };
window.gatewayDashboard = state; // for people (and tests) poking at the page

function fmt(n, digits = 0) {
  if (n === null || n === undefined || Number.isNaN(n)) return "–";
  return Number(n).toLocaleString("en-US", {
    minimumFractionDigits: digits,
    maximumFractionDigits: digits,
  });
}

function fmtAge(seconds) {
  if (seconds < 60) return `${seconds.toFixed(1)}s`;
  if (seconds < 3600) return `${Math.floor(seconds / 60)}m ${Math.floor(seconds % 60)}s`;
  return `${Math.floor(seconds / 3600)}h ${Math.floor((seconds % 3600) / 60)}m`;
}

function cell(row, text, className) {
  const td = document.createElement("td");
  td.textContent = text;
  if (className) td.className = className;
  row.appendChild(td);
  return td;
}

function fillTable(id, items, columns, emptyText, rowClass) {
  const body = $(id).tBodies[0];
  const rows = [];
  for (const item of items) {
    const tr = document.createElement("tr");
    if (rowClass) tr.className = rowClass(item);
    for (const [value, className] of columns) cell(tr, value(item), className);
    rows.push(tr);
  }
  if (rows.length === 0) {
    const tr = document.createElement("tr");
    cell(tr, emptyText, "empty").colSpan = $(id).tHead.rows[0].cells.length;
    rows.push(tr);
  }
  body.replaceChildren(...rows);
}

// Per second of the window: client and backend calls summed over nodes. A history entry
// covers `dt` seconds ending at `t` (longer after a Redis outage): its calls are spread
// evenly over the seconds it covers.
function series(history, end, span) {
  const start = Math.floor(end) - span + 1;
  const calls = new Array(span).fill(0);
  const backend = new Array(span).fill(0);
  const seen = new Array(span).fill(false);
  for (const entries of Object.values(history)) {
    for (const e of entries) {
      const covered = Math.max(1, Math.round(e.dt));
      const last = Math.floor(e.t);
      for (let s = last - covered + 1; s <= last; s++) {
        const i = s - start;
        if (i < 0 || i >= span) continue;
        calls[i] += e.calls / covered;
        backend[i] += e.backend_calls / covered;
        seen[i] = true;
      }
    }
  }
  return { start, calls, backend, seen };
}

function windowRatio(data, from, to) {
  let calls = 0;
  let backend = 0;
  for (let i = Math.max(0, from); i < to; i++) {
    calls += data.calls[i];
    backend += data.backend[i];
  }
  return backend > 0 ? calls / backend : null;
}

function niceMax(value) {
  if (value <= 0) return 1;
  const power = 10 ** Math.floor(Math.log10(value));
  for (const step of [1, 2, 2.5, 5, 10]) if (value <= step * power) return step * power;
  return 10 * power;
}

function svg(tag, attrs, text) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (text !== undefined) node.textContent = text;
  return node;
}

function drawChart(data) {
  const chart = $("chart");
  const W = 900, H = 240, L = 48, R = 44, T = 10, B = 22;
  const span = data.calls.length;
  const ratios = data.calls.map((_, i) =>
    data.seen[i] ? windowRatio(data, i - RATIO_WINDOW_S + 1, i + 1) : null);
  const top = niceMax(Math.max(...data.calls, ...data.backend));
  const ratioTop = niceMax(Math.max(0, ...ratios.filter((r) => r !== null)));
  const x = (i) => L + (i / Math.max(1, span - 1)) * (W - L - R);
  const y = (v, max) => T + (1 - v / max) * (H - T - B);
  const parts = [];
  for (let k = 0; k <= 4; k++) {
    const v = (top * k) / 4;
    parts.push(svg("line", { class: "grid", x1: L, x2: W - R, y1: y(v, top), y2: y(v, top) }));
    parts.push(svg("text", { class: "axis", x: L - 6, y: y(v, top) + 4, "text-anchor": "end" }, fmt(v, v % 1 ? 1 : 0)));
    const r = (ratioTop * k) / 4;
    parts.push(svg("text", { class: "axis", x: W - R + 6, y: y(r, ratioTop) + 4 }, fmt(r, r % 1 ? 1 : 0)));
  }
  for (const back of [span - 1, Math.round((span - 1) / 2), 0]) {
    const label = back === span - 1 ? "now" : `-${span - 1 - back}s`;
    parts.push(svg("text", { class: "axis", x: x(back), y: H - 6, "text-anchor": back === 0 ? "start" : back === span - 1 ? "end" : "middle" }, label));
  }
  const line = (values, max, className) => {
    // One polyline per run of known values: gaps (no data, no ratio) stay gaps.
    let points = [];
    const flush = () => {
      if (points.length > 1) parts.push(svg("polyline", { class: className, points: points.join(" ") }));
      points = [];
    };
    values.forEach((v, i) => {
      if (v === null || !data.seen[i]) flush();
      else points.push(`${x(i).toFixed(1)},${y(Math.min(v, max), max).toFixed(1)}`);
    });
    flush();
  };
  line(data.calls, top, "calls");
  line(data.backend, top, "backend");
  line(ratios, ratioTop, "ratio");
  chart.replaceChildren(...parts);
  $("chart-span").textContent = `(last ${span} s, all nodes)`;
}

function render(report) {
  const totals = report.totals;
  const redis = report.redis || {};
  $("redis").textContent = `Redis: ${redis.mode || "unknown mode"}` +
    (redis.version ? ` ${redis.version}` : "");
  $("nodes-up").textContent = `${totals.alive} / ${totals.nodes}`;

  const end = Math.max(report.time, ...Object.values(report.history).flat().map((e) => e.t));
  const span = Math.max(30, ...Object.values(report.history).map((h) => h.length));
  const data = series(report.history, end, span);
  // The newest second is usually still being filled by the nodes' next beat: rates use
  // the complete seconds before it.
  const from = span - 1 - RATE_WINDOW_S, to = span - 1;
  const sum = (values) => values.slice(from, to).reduce((a, b) => a + b, 0);
  $("calls-rate").textContent = fmt(sum(data.calls) / RATE_WINDOW_S, 1);
  $("backend-rate").textContent = fmt(sum(data.backend) / RATE_WINDOW_S, 1);
  const recent = windowRatio(data, 0, span);
  $("ratio").textContent = fmt(totals.coalescing_ratio, 2);
  $("ratio-window").textContent =
    `all time · last ${span} s: ${recent === null ? "–" : fmt(recent, 2)}`;
  $("waiting").textContent = fmt(totals.in_flight);
  $("errors").textContent = fmt(totals.errors);
  drawChart(data);

  fillTable("nodes", report.nodes, [
    [(n) => n.node_id, "node"],
    [(n) => n.state, null],
    [(n) => `${n.age.toFixed(1)}s ago`, null],
    [(n) => n.address || "–", null],
    [(n) => n.redis_mode || "–", null],
    [(n) => fmt(n.calls), "num"],
    [(n) => fmt(n.backend_calls), "num"],
    [(n) => fmt(n.coalesced_local), "num"],
    [(n) => fmt(n.coalesced_remote), "num"],
    [(n) => fmt(n.cache_hits), "num"],
    [(n) => fmt(n.errors), "num"],
    [(n) => fmt(n.in_flight), "num"],
    [(n) => fmt(n.coalescing_ratio, 2), "num ratio"],
  ], "no gateway node has sent a heartbeat yet", (n) => n.state);
  for (const tr of $("nodes").tBodies[0].rows) {
    if (tr.cells.length < 5) continue;
    tr.cells[1].className = `state ${tr.cells[1].textContent}`;
    tr.cells[4].className = `mode ${tr.cells[4].textContent}`;
  }

  const method = (item) => (item.backend ? `${item.backend}.${item.method}` : item.method);
  fillTable("in-flight", report.in_flight, [
    [(c) => fmtAge(c.age_s), "num age"],
    [method, null],
    [(c) => c.leader || "–", null],
    [(c) => fmt(c.followers), "num"],
    [(c) => c.key_id, "key"],
  ], "nothing in flight", (c) => (c.age_s > OLD_CALL_S ? "old" : ""));

  $("hot-window").textContent = `(last ${report.hot_keys_minutes} min)`;
  fillTable("hot-keys", report.hot_keys, [
    [(h) => fmt(h.callers), "num"],
    [method, null],
    [(h) => h.key_id, "key"],
    [(h) => (h.preview === undefined ? "–" : h.preview), "preview"],
  ], "no hot keys recorded");

  const kinds = Object.entries(totals.errors_by_kind || {}).sort((a, b) => b[1] - a[1]);
  fillTable("error-kinds", kinds, [
    [([kind]) => kind, null],
    [([, count]) => fmt(count), "num"],
  ], totals.errors ? `${fmt(totals.errors)} (no kinds reported)` : "none");
}

function setFreshness(kind, text) {
  const pill = $("freshness");
  pill.className = `pill ${kind}`;
  pill.textContent = text;
}

async function poll() {
  try {
    const response = await fetch("api/status", { cache: "no-store" });
    const body = await response.json();
    if (!response.ok) throw new Error(body.error || `HTTP ${response.status}`);
    render(body);
    state.updates += 1;
    state.last = body;
    $("problem").hidden = true;
    setFreshness("live", `live · ${new Date(body.time * 1000).toLocaleTimeString()}`);
  } catch (err) {
    state.failures += 1;
    $("problem").textContent = `Cannot refresh: ${err.message}`;
    $("problem").hidden = false;
    setFreshness("down", "not updating");
  } finally {
    setTimeout(poll, POLL_MS);
  }
}

poll();
