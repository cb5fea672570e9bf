import {
  checkSession, fmtCompact, fmtMs, fmtNumber, fmtPct, fmtTime, h, itemsOf, stackTables,
} from "./common.js";

const HISTORY_SECONDS = 15 * 60;
let rangeSeconds = 5 * 60;
const css = getComputedStyle(document.documentElement);
const color = (name) => css.getPropertyValue(name).trim();
const points = [];
const charts = [];

const liveDot = document.getElementById("live-state");
const liveLabel = document.getElementById("live-label");
const problem = document.getElementById("stream-problem");

function setLive(state, text) {
  liveDot.dataset.state = state;
  liveLabel.textContent = text;
}

// --- charts -----------------------------------------------------------------------------------
function axisValues(format) {
  return (u, values) => values.map((v) => (v === null ? "" : format(v)));
}

const MIN_SPAN = 60;

function xRange() {
  const now = Date.now() / 1000;
  const first = points.length ? points[0].ts : now;
  const span = Math.min(rangeSeconds, Math.max(MIN_SPAN, now - first));
  return [now - span, now];
}

function isolated(u, seriesIdx) {
  const ys = u.data[seriesIdx];
  const out = [];
  for (let i = 0; i < ys.length; i += 1) {
    if (ys[i] !== null && (i === 0 || ys[i - 1] === null) && (i === ys.length - 1 || ys[i + 1] === null)) out.push(i);
  }
  return out;
}

function makeChart(id, series, { format = (v) => fmtNumber(v), max = null } = {}) {
  const el = document.getElementById(id);
  const opts = {
    width: Math.max(200, el.clientWidth),
    height: el.clientHeight || 220,
    legend: { show: false },
    cursor: { drag: { x: false, y: false }, points: { size: 6 } },
    padding: [8, 8, 0, 0],
    scales: {
      // A window ending now; while there is less history than the window, the history (a
      // minute at least), so a fresh gateway's first minutes are not a sliver at the edge.
      x: { time: true, range: () => xRange() },
      y: { range: (u, lo, hi) => [0, max !== null ? max : Math.max(hi * 1.15, 1)] },
    },
    axes: [
      { stroke: color("--muted"), grid: { stroke: "#eef0f5", width: 1 }, ticks: { stroke: "#eef0f5", width: 1 }, font: "11px system-ui" },
      { stroke: color("--muted"), grid: { stroke: "#eef0f5", width: 1 }, ticks: { show: false }, size: 56, font: "11px system-ui", values: axisValues(format) },
    ],
    series: [
      {},
      ...series.map((s) => ({
        label: s.label,
        stroke: color(s.color),
        width: 2,
        fill: s.fill ? color(s.color) + "1f" : undefined,
        // A value with no neighbour (one busy interval among idle ones) still shows, as a dot.
        points: { show: true, size: 5, filter: isolated },
        spanGaps: Boolean(s.spanGaps),
      })),
    ],
  };
  const chart = new uPlot(opts, [[], ...series.map(() => [])], el);
  charts.push({ chart, el, series });
  return chart;
}

const CHARTS = [
  { id: "chart-rps", series: [
    { label: "requests/s", color: "--c1", fill: true, value: (p) => p.rps },
    { label: "429/s", color: "--c4", value: (p) => p.rejected_429 / p.seconds },
  ] },
  { id: "chart-latency", format: (v) => fmtMs(v), series: [
    { label: "p50", color: "--c1", spanGaps: true, value: (p) => p.p50 },
    { label: "p95", color: "--c2", spanGaps: true, value: (p) => p.p95 },
    { label: "p99", color: "--c4", spanGaps: true, value: (p) => p.p99 },
  ] },
  { id: "chart-hit", max: 100, format: (v) => `${fmtNumber(v, 0)}%`, series: [
    { label: "hit rate", color: "--c3", fill: true, spanGaps: true, value: (p) => (p.hit_rate === null ? null : p.hit_rate * 100) },
  ] },
  { id: "chart-saved", series: [
    { label: "saved/s", color: "--c3", fill: true, value: (p) => p.upstream_saved / p.seconds },
    { label: "upstream/s", color: "--c5", value: (p) => p.upstream_calls / p.seconds },
  ] },
];

function redraw() {
  const xs = points.map((p) => p.ts);
  CHARTS.forEach((spec, i) => {
    const data = [xs, ...spec.series.map((s) => points.map((p) => {
      const v = s.value(p);
      return v === null || v === undefined || Number.isNaN(v) ? null : v;
    }))];
    charts[i].chart.setData(data);
  });
}

function resize() {
  for (const { chart, el } of charts) chart.setSize({ width: Math.max(200, el.clientWidth), height: el.clientHeight || 220 });
}

// --- figures ----------------------------------------------------------------------------------
function setText(id, text, bad = false) {
  const el = document.getElementById(id);
  el.textContent = text;
  el.classList.toggle("bad", bad);
}

function renderKpis(k, latest) {
  if (!k) return;
  setText("kpi-rps", fmtNumber(k.rps, k.rps < 10 ? 2 : 1));
  setText("kpi-hit", fmtPct(k.hit_rate));
  setText("kpi-p50", fmtMs(k.p50));
  setText("kpi-p95", fmtMs(k.p95));
  setText("kpi-p99", fmtMs(k.p99));
  setText("kpi-429", fmtCompact(k.rejected_429), k.rejected_429 > 0);
  setText("kpi-saved", fmtCompact(k.upstream_saved));
  setText("kpi-5xx", fmtCompact(k.errors_5xx), k.errors_5xx > 0);
  const blocked = latest ? latest.blocked_keys : k.blocked_keys;
  setText("kpi-blocked", blocked === null || blocked === undefined ? "–" : String(blocked), blocked > 0);
  document.getElementById("kpi-rps-sub").textContent = `last ${fmtNumber(k.seconds, 0)} s`;
}

function addPoints(list) {
  const last = points.length ? points[points.length - 1].ts : -Infinity;
  for (const p of list) if (p.ts > last) points.push(p);
  const cutoff = Date.now() / 1000 - HISTORY_SECONDS;
  while (points.length && points[0].ts < cutoff) points.shift();
}

// --- top keys and routes -----------------------------------------------------------------------
const pick = (obj, ...names) => {
  for (const n of names) if (obj && obj[n] !== undefined && obj[n] !== null) return obj[n];
  return null;
};

function topTable(rows, nameOf, subOf) {
  if (!rows.length) return h("p", { class: "empty" }, "No traffic in this window.");
  const max = Math.max(...rows.map((r) => Number(pick(r, "requests", "count", "total")) || 0), 1);
  return h("table", { class: "table table-dense" },
    h("thead", null, h("tr", null,
      h("th", { scope: "col" }, "Name"), h("th", { scope: "col", class: "num" }, "Requests"),
      h("th", { scope: "col", class: "num" }, "5xx"), h("th", { scope: "col", class: "num" }, "Hit rate"))),
    h("tbody", null, rows.map((r) => {
      const requests = Number(pick(r, "requests", "count", "total")) || 0;
      const errors = pick(r, "error_rate");
      const hit = pick(r, "cache_hit_rate", "hit_rate");
      return h("tr", null,
        h("td", null, h("div", { class: "cell-title" }, nameOf(r)), subOf(r) ? h("div", { class: "cell-sub" }, subOf(r)) : null,
          h("div", { class: "bar" }, h("span", { style: { width: `${((requests / max) * 100).toFixed(1)}%` } }))),
        h("td", { class: "num" }, fmtCompact(requests)),
        h("td", { class: "num" }, fmtPct(errors)),
        h("td", { class: "num" }, hit === null ? "–" : fmtPct(hit)));
    })));
}

function renderSummary(summary) {
  const box = document.getElementById("cluster-summary");
  const set = (name, text) => { box.querySelector(`[data-stat="${name}"]`).textContent = text; };
  if (!summary || summary.error) {
    for (const dd of box.querySelectorAll("dd")) dd.textContent = "–";
    return;
  }
  set("requests", fmtCompact(summary.requests));
  set("rps", fmtNumber(summary.requests_per_second, 2));
  set("hit_rate", fmtPct(summary.cache ? summary.cache.hit_rate : null));
  set("p95", fmtMs(summary.latency_ms ? summary.latency_ms.p95 : null));
  set("error_rate", fmtPct(summary.error_rate));
  set("rate_limited", fmtCompact(summary.rate_limited));
  set("saved", fmtCompact(summary.upstream_calls_saved));
}

function renderTop(top) {
  const keysBox = document.getElementById("top-keys");
  const routesBox = document.getElementById("top-routes");
  if (!top.available) {
    const note = () => h("p", { class: "empty" }, "Analytics not available on this gateway yet.");
    keysBox.replaceChildren(note());
    routesBox.replaceChildren(note());
    return;
  }
  renderSummary(top.summary);
  for (const el of document.querySelectorAll(".top-window")) el.textContent = top.window ? `last ${top.window}` : "";
  const failed = (part) => part && part.error;
  keysBox.replaceChildren(failed(top.keys)
    ? h("p", { class: "empty" }, "Could not load top keys.")
    : topTable(itemsOf(top.keys),
      (r) => pick(r, "key_name", "name") || `Key #${pick(r, "key_id", "id") ?? "?"}`,
      (r) => [pick(r, "key_prefix") ? `${pick(r, "key_prefix")}…` : null, pick(r, "tenant_name")].filter(Boolean).join(" · ")));
  routesBox.replaceChildren(failed(top.routes)
    ? h("p", { class: "empty" }, "Could not load top routes.")
    : topTable(itemsOf(top.routes), (r) => pick(r, "route", "route_name", "name") || "(no route)", (r) => {
      const p95 = r.latency_ms ? r.latency_ms.p95 : pick(r, "p95_ms");
      return p95 !== null ? `p95 ${fmtMs(p95)}` : "";
    }));
  stackTables(keysBox.parentElement.parentElement);
}

// --- the stream -------------------------------------------------------------------------------
function connect() {
  const source = new EventSource("/ui/stream/dashboard");
  source.addEventListener("points", (event) => {
    const data = JSON.parse(event.data);
    addPoints(data.points || []);
    redraw();
    renderKpis(data.kpi, points[points.length - 1]);
    problem.hidden = true;
    setLive("live", `Live · updated ${fmtTime(Date.now() / 1000)}`);
  });
  source.addEventListener("top", (event) => renderTop(JSON.parse(event.data)));
  source.addEventListener("problem", (event) => {
    problem.textContent = JSON.parse(event.data).detail || "Live figures are unavailable.";
    problem.hidden = false;
  });
  source.addEventListener("error", () => {
    // The server ends each stream after a few seconds; EventSource reconnects by itself.
    if (source.readyState === EventSource.CLOSED) {
      setLive("down", "Disconnected");
      checkSession();
    }
  });
  window.addEventListener("pagehide", () => source.close());
}

for (const button of document.querySelectorAll(".seg[data-range]")) {
  button.addEventListener("click", () => {
    rangeSeconds = Number(button.dataset.range);
    for (const other of document.querySelectorAll(".seg[data-range]")) other.setAttribute("aria-pressed", String(other === button));
    redraw();
  });
}

for (const spec of CHARTS) makeChart(spec.id, spec.series, spec);
new ResizeObserver(resize).observe(document.querySelector(".charts"));
connect();
