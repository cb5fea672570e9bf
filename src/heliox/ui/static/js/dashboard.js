import {
  api, checkSession, config, features, fmtCompact, fmtMs, fmtNumber, fmtPct, fmtTime, h, itemsOf, stackTables,
} from "./common.js";

const HISTORY_SECONDS = 60 * 60;
const HISTORY_REFRESH_MS = 60_000;
let rangeSeconds = 60 * 60;
const css = getComputedStyle(document.documentElement);
const color = (name) => css.getPropertyValue(name).trim();
// Live points: this instance's samples since the page opened (or the server's recent ones).
const points = [];
// The last hour before that, per minute, from the request logs (every instance).
let history = [];
const charts = [];
const SAMPLE_SECONDS = Number(config.sample_interval) || 2;

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
  const all = merged();
  const first = all.length ? all[0].ts - all[0].seconds : now;
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
      { stroke: color("--muted"), grid: { stroke: color("--grid"), width: 1 }, ticks: { stroke: color("--grid"), width: 1 }, font: "11px system-ui" },
      { stroke: color("--muted"), grid: { stroke: color("--grid"), width: 1 }, ticks: { show: false }, size: 56, font: "11px system-ui", values: axisValues(format) },
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
        // Never drawn across a gap: a null (nothing measured, or no request to time) breaks it.
        spanGaps: false,
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
    { label: "p50", color: "--c1", value: (p) => p.p50 },
    { label: "p95", color: "--c2", value: (p) => p.p95 },
    { label: "p99", color: "--c4", value: (p) => p.p99 },
  ] },
  { id: "chart-hit", max: 100, format: (v) => `${fmtNumber(v, 0)}%`, series: [
    { label: "hit rate", color: "--c3", fill: true, value: (p) => (p.hit_rate === null ? null : p.hit_rate * 100) },
  ] },
  { id: "chart-refused", series: [
    { label: "4xx/s", color: "--c6", fill: true, value: (p) => (p.errors_4xx ?? null) === null ? null : p.errors_4xx / p.seconds },
    { label: "401/s", color: "--c2", value: (p) => (p.unauthorized_401 ?? null) === null ? null : p.unauthorized_401 / p.seconds },
    { label: "429/s", color: "--c4", value: (p) => p.rejected_429 / p.seconds },
  ] },
  { id: "chart-saved", series: [
    { label: "saved/s", color: "--c3", fill: true, value: (p) => p.upstream_saved / p.seconds },
    { label: "upstream/s", color: "--c5", value: (p) => p.upstream_calls / p.seconds },
  ] },
];

// History up to where the live points begin, then the live points. Each point covers
// (ts - seconds, ts]; where the next one starts well after the previous ended, nothing was
// measured, and a row of nulls goes in between so every line breaks there.
function merged() {
  const liveStart = points.length ? points[0].ts - points[0].seconds : Infinity;
  const out = [];
  for (const p of [...history.filter((q) => q.ts <= liveStart + SAMPLE_SECONDS), ...points]) {
    const prev = out[out.length - 1];
    if (prev && p.ts <= prev.ts) continue;
    out.push(p);
  }
  return out;
}

function withGaps(list) {
  const out = [];
  for (const p of list) {
    const prev = out[out.length - 1];
    if (prev) {
      const allowed = Math.max(prev.seconds, p.seconds, SAMPLE_SECONDS) * 1.5;
      if (p.ts - p.seconds - prev.ts > allowed || p.ts - prev.ts > allowed + p.seconds) {
        out.push({ ts: (prev.ts + p.ts - p.seconds) / 2, gap: true });
      }
    }
    out.push(p);
  }
  return out;
}

function redraw() {
  const rows = withGaps(merged());
  const xs = rows.map((p) => p.ts);
  CHARTS.forEach((spec, i) => {
    const data = [xs, ...spec.series.map((s) => rows.map((p) => {
      if (p.gap) return null;
      const v = s.value(p);
      return v === null || v === undefined || Number.isNaN(v) ? null : v;
    }))];
    charts[i].chart.setData(data);
  });
}

// --- history from the server ------------------------------------------------------------------
// One point per minute of the last hour: the cache-hit-rate series (traffic, hit rate, latency)
// joined with the refusals series (4xx, 401, 429) on the bucket start.
function historyPoints(cache, refused) {
  const byStart = new Map((refused ? refused.series : []).map((r) => [r.ts, r]));
  return (cache ? cache.series : []).filter((s) => s.seconds > 0).map((s) => {
    const r = byStart.get(s.ts);
    const end = Date.parse(s.ts) / 1000 + s.seconds;
    return {
      ts: end, seconds: s.seconds, history: true,
      requests: s.requests, rps: s.requests_per_second, hit_rate: s.hit_rate,
      p50: s.p50_ms, p95: s.p95_ms, p99: s.p99_ms,
      rejected_429: s.rate_limited, upstream_calls: s.upstream_calls, upstream_saved: s.hits,
      errors_4xx: r ? r.client_errors : s.client_errors, unauthorized_401: r ? r.unauthorized : null,
    };
  });
}

async function loadHistory() {
  if (!features.cache_hit_rate) return;
  // 59 minutes, widened back to a whole minute, stay within the hour that the analytics answer
  // from the raw request logs (exact percentiles); longer ranges come from the roll-ups.
  const query = { window: "59m", bucket: "1m" };
  try {
    const [cache, refused] = await Promise.all([
      api("GET", "/admin/analytics/cache-hit-rate", { query }),
      features.refusals ? api("GET", "/admin/analytics/refusals", { query: { ...query, limit: 8 } }) : null,
    ]);
    history = historyPoints(cache, refused);
    document.body.dataset.history = String(history.length);
    if (refused) renderRefused(refused);
    redraw();
  } catch {
    // The live samples still draw; the note under the charts says where history comes from.
  }
}

function renderRefused(refused) {
  const box = document.getElementById("refused-keys");
  const rows = refused.by_key || [];
  if (!rows.length) {
    box.replaceChildren(h("p", { class: "empty" }, "No key was refused in the last hour."));
    return;
  }
  box.replaceChildren(h("table", { class: "table table-dense", id: "refused-table" },
    h("thead", null, h("tr", null,
      h("th", { scope: "col" }, "Key"), h("th", { scope: "col" }, "Tenant"),
      h("th", { scope: "col", class: "num" }, "Requests"), h("th", { scope: "col", class: "num" }, "4xx"),
      h("th", { scope: "col", class: "num" }, "429"), h("th", { scope: "col", class: "num" }, "Refused"))),
    h("tbody", null, rows.map((k) => h("tr", { dataset: { keyId: k.key_id } },
      h("td", null, h("a", { href: `/ui/logs?key=${encodeURIComponent(k.key_prefix || k.name || "")}`, title: "Show this key's requests" },
        k.name || `Key #${k.key_id}`), k.key_prefix ? h("div", { class: "cell-sub" }, `${k.key_prefix}…`) : null),
      h("td", null, k.tenant_name || (k.tenant_id ? `#${k.tenant_id}` : "–")),
      h("td", { class: "num" }, fmtCompact(k.requests)),
      h("td", { class: "num" }, fmtCompact(k.client_errors)),
      h("td", { class: "num" }, fmtCompact(k.rate_limited)),
      h("td", { class: "num" }, fmtPct(k.refused_rate)))))));
  stackTables(box);
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
  while (history.length && history[0].ts < cutoff) history.shift();
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
loadHistory();
setInterval(loadHistory, HISTORY_REFRESH_MS);
connect();
