import {
  ApiError, api, confirmDialog, emptyRow, features, fieldValue, fmtNumber, fmtPct, h, itemsOf, listAll,
  onSubmit, reportError,
} from "./common.js";

const hitBody = document.querySelector("#hit-table tbody");
const SERVED = ["HIT", "STALE", "NEGATIVE", "UPDATING"];
const LOOKUPS = [...SERVED, "MISS", "EXPIRED", "REVALIDATED"];

function hitRow(route, requests, hits, misses, stale, rate) {
  const pct = typeof rate === "number" ? Math.max(0, Math.min(1, rate)) : null;
  return h("tr", { dataset: { route } },
    h("td", { class: "cell-title" }, route),
    h("td", { class: "num" }, fmtNumber(requests, 0)),
    h("td", { class: "num" }, fmtNumber(hits, 0)),
    h("td", { class: "num" }, fmtNumber(misses, 0)),
    h("td", { class: "num" }, fmtNumber(stale, 0)),
    h("td", null, h("div", { class: "hit-cell" },
      h("div", { class: "bar" + (pct === null ? " unknown" : "") }, h("span", { style: { width: `${((pct ?? 0) * 100).toFixed(1)}%` } })),
      h("span", { class: "num" }, fmtPct(pct)))));
}

// From the analytics API (every instance's request logs) when there is one, else from this
// instance's counters at /metrics.
async function loadHitRates() {
  const source = document.getElementById("hit-source");
  try {
    if (features.cache_hit_rate) {
      const windowSelect = document.getElementById("hit-window");
      const payload = await api("GET", "/admin/analytics/cache-hit-rate", { query: { window: windowSelect.value, series: "false" } });
      const rows = itemsOf(payload.by_route ?? payload.routes ?? payload).filter((r) => (r.route ?? r.route_name) !== "");
      source.textContent = "all instances";
      if (!rows.length) { emptyRow(hitBody, 6, "No cacheable traffic yet."); return; }
      hitBody.replaceChildren(...rows.map((r) => hitRow(
        r.route ?? r.route_name ?? "–", r.requests ?? r.total ?? r.lookups, r.hits ?? r.hit,
        r.misses ?? r.miss, r.stale, r.hit_rate)));
      return;
    }
    const res = await fetch("/metrics", { credentials: "same-origin", cache: "no-store" });
    const metrics = await res.json();
    source.textContent = `this instance (${metrics.instance ?? "?"}) since it started`;
    const routes = Object.entries(metrics.routes || {}).filter(([name]) => name !== "(unknown)");
    if (!routes.length) { emptyRow(hitBody, 6, "No traffic yet."); return; }
    hitBody.replaceChildren(...routes.sort((a, b) => b[1].requests - a[1].requests).map(([name, r]) => {
      const c = r.cache || {};
      const served = SERVED.reduce((n, s) => n + (c[s] || 0), 0);
      const lookups = LOOKUPS.reduce((n, s) => n + (c[s] || 0), 0);
      return hitRow(name, r.requests, c.HIT || 0, c.MISS || 0, c.STALE || 0, lookups ? served / lookups : null);
    }));
  } catch (err) {
    emptyRow(hitBody, 6, "Could not load hit rates.");
    if (!(err instanceof ApiError && err.status === 401)) reportError(err, "Loading hit rates");
  }
}

async function loadRoutes() {
  const routes = await listAll("/admin/routes");
  for (const id of ["pr-route", "pp-route"]) {
    const select = document.getElementById(id);
    if (select) select.replaceChildren(...routes.map((r) => h("option", { value: r.name }, r.name)));
  }
}

function describe(body) {
  if (body.all) return "everything";
  return Object.entries(body).map(([k, v]) => `${k} “${v}”`).join(" and ");
}

async function purge(form, body) {
  const what = describe(body);
  const ok = await confirmDialog(`Purge ${what} from the cache on every instance?`, {
    title: "Purge cache", confirmLabel: body.all ? "Purge everything" : "Purge", danger: Boolean(body.all),
  });
  if (!ok) return;
  // The outcome shows under the button that asked for it, not somewhere else on the page.
  const outcome = form.querySelector(".purge-outcome");
  outcome.textContent = "";
  const answer = await api("POST", "/admin/cache/purge", { body });
  const n = answer && (answer.purged ?? answer.deleted ?? answer.count);
  outcome.textContent = typeof n === "number" ? `Purged ${n} entr${n === 1 ? "y" : "ies"} (${what}).` : `Purged ${what}.`;
  loadHitRates();
}

if (features.purge) {
  for (const form of document.querySelectorAll(".purge-form")) {
    onSubmit(form, async () => {
      const kind = form.dataset.kind;
      const body = {};
      if (kind === "all") body.all = true;
      if (kind === "tag") body.tag = fieldValue(form, "tag");
      if (kind === "url") body.url = fieldValue(form, "url");
      if (kind === "prefix") body.prefix = fieldValue(form, "prefix");
      if (kind === "route" || kind === "prefix") {
        const route = fieldValue(form, "route");
        if (route) body.route = route;
      }
      await purge(form, body);
    });
  }
  loadRoutes().catch((err) => reportError(err, "Loading routes"));
}
document.getElementById("cache-refresh").addEventListener("click", loadHitRates);
document.getElementById("hit-window")?.addEventListener("change", loadHitRates);
loadHitRates();
