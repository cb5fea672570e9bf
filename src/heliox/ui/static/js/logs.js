import {
  ApiError, api, badge, cacheKind, checkSession, clearErrors, fmtDate, fmtMs, fmtTime, h, itemsOf,
  listAll, reportError, showErrors, statusKind, svgIcon,
} from "./common.js";
import { openLogDetail } from "./logdetail.js";

const MAX_TAIL_ROWS = 500;
const filters = document.getElementById("log-filters");
const tailBody = document.querySelector("#tail-table tbody");
const tailEmpty = document.getElementById("tail-empty");
const tailStatus = document.getElementById("tail-status");
const tailState = document.getElementById("tail-state");
const toggle = document.getElementById("tail-toggle");
const searchCard = document.getElementById("search-card");
const searchBody = document.querySelector("#search-table tbody");
const searchStatus = document.getElementById("search-status");
const moreButton = document.getElementById("search-more");

let source = null;
let paused = false;
let buffered = [];
let missed = 0;
let nextCursor = null;
let lastQuery = null;

function filterValues() {
  const data = new FormData(filters);
  const get = (name) => String(data.get(name) || "").trim();
  // One "Key" box: a number is a key id, anything else a name or prefix to match.
  const key = get("key");
  const numeric = /^[0-9]+$/.test(key);
  return {
    route: get("route"), key_id: numeric ? key : "", key: numeric ? "" : key,
    request_id: get("request_id"), status: get("status").toLowerCase(),
    cache_status: get("cache_status"), method: get("method"), path_prefix: get("path_prefix"),
  };
}

const REQUEST_ID = /^[A-Za-z0-9._:-]{1,128}$/;

// One log row as a table row; every value goes in as text.
function logRow(r, fresh) {
  const ua = r.user_agent || "";
  // Focusable and opened with Enter or a click: the row is the way to its details.
  const tr = h("tr", {
    class: "row-link" + (fresh ? " fresh" : ""), tabindex: 0, dataset: { id: r.id, requestId: r.request_id },
    "aria-label": `${r.method} ${r.path} ${r.status}, ${fmtDate(r.ts)}: show details`,
  },
    h("td", { title: fmtDate(r.ts) }, fmtTime(r.ts)),
    h("td", null, r.method),
    h("td", null, r.route_name || h("span", { class: "muted" }, "–")),
    h("td", { class: "path" }, r.path),
    h("td", { class: "num" }, badge(String(r.status), statusKind(r.status))),
    h("td", null, r.cache_status ? badge(r.cache_status, cacheKind(r.cache_status)) : h("span", { class: "muted" }, "–")),
    h("td", { class: "num" }, fmtMs(r.latency_ms)),
    h("td", { class: "num" }, r.key_id ?? "–"),
    h("td", { class: "mono opt" }, r.client_ip || "–"),
    h("td", { class: "truncate opt", title: ua }, ua || "–"),
  );
  tr.addEventListener("click", () => openLogDetail(r, tr));
  tr.addEventListener("keydown", (event) => {
    if (event.key === "Enter" || event.key === " ") {
      event.preventDefault();
      openLogDetail(r, tr);
    }
  });
  return tr;
}

function setState(state, text) {
  tailState.dataset.state = state;
  tailStatus.textContent = text;
}

function addRows(rows, initial) {
  if (!rows.length) return;
  const fragment = document.createDocumentFragment();
  // Newest first: the rows arrive oldest first.
  for (let i = rows.length - 1; i >= 0; i -= 1) fragment.appendChild(logRow(rows[i], !initial));
  tailBody.insertBefore(fragment, tailBody.firstChild);
  while (tailBody.rows.length > MAX_TAIL_ROWS) tailBody.deleteRow(-1);
  tailEmpty.hidden = tailBody.rows.length > 0;
}

function connect() {
  if (source) source.close();
  const f = filterValues();
  if (f.status && !/^[1-5]([0-9][0-9]|xx)$/.test(f.status)) {
    setState("down", "Status must be a code such as 404, or a class such as 5xx");
    return;
  }
  if (f.key_id && !/^[0-9]{1,10}$/.test(f.key_id)) {
    setState("down", "Key id must be a number");
    return;
  }
  if (f.request_id && !REQUEST_ID.test(f.request_id)) {
    setState("down", "A request id has only letters, digits and . _ : - (at most 128)");
    return;
  }
  const params = new URLSearchParams();
  for (const [k, v] of Object.entries(f)) if (v) params.set(k, v);
  source = new EventSource("/ui/stream/logs" + (params.toString() ? "?" + params : ""));
  setState("connecting", "Connecting…");
  source.addEventListener("open", () => setState(paused ? "paused" : "live", paused ? "Paused" : "Live"));
  source.addEventListener("rows", (event) => {
    const data = JSON.parse(event.data);
    if (paused) {
      // Only the newest rows are kept while paused; the count says how many arrived.
      buffered.push(...data.rows);
      missed += data.rows.length;
      if (buffered.length > MAX_TAIL_ROWS) buffered.splice(0, buffered.length - MAX_TAIL_ROWS);
      setState("paused", `Paused · ${missed} new`);
      return;
    }
    addRows(data.rows, data.initial);
    setState("live", "Live");
  });
  source.addEventListener("problem", (event) => {
    setState("down", JSON.parse(event.data).detail || "The log stream has a problem");
  });
  source.addEventListener("invalid", (event) => {
    source.close();
    setState("down", `Filter not accepted: ${JSON.parse(event.data).detail || "check the filters"}`);
  });
  source.addEventListener("unavailable", (event) => {
    source.close();
    setState("down", JSON.parse(event.data).detail || "Not available");
  });
  source.addEventListener("unauthorized", () => {
    source.close();
    location.assign("/ui/login?next=" + encodeURIComponent(location.pathname));
  });
  source.addEventListener("error", () => {
    // EventSource reconnects by itself (the server ends each stream after a few seconds); it
    // gives up only when refused, which after a restart or an expiry means: sign in again.
    if (source.readyState === EventSource.CLOSED) {
      setState("down", "Disconnected");
      checkSession();
    }
  });
}

function setPaused(value) {
  paused = value;
  toggle.setAttribute("aria-pressed", String(paused));
  toggle.replaceChildren(svgIcon(paused ? "play" : "pause"), h("span", null, paused ? "Resume" : "Pause"));
  if (!paused && buffered.length) addRows(buffered, false);
  buffered = [];
  missed = 0;
  setState(paused ? "paused" : "live", paused ? "Paused" : "Live");
}

// --- search over stored logs ----------------------------------------------------------------------
function isoFromLocal(value) {
  if (!value) return null;
  const d = new Date(value);
  return Number.isNaN(d.getTime()) ? null : d.toISOString();
}

async function search(cursor) {
  const f = filterValues();
  const data = new FormData(filters);
  const query = {
    ...f,
    since: isoFromLocal(String(data.get("since") || "")),
    until: isoFromLocal(String(data.get("until") || "")),
    limit: 100,
    before_id: cursor || null,
  };
  lastQuery = query;
  clearErrors(filters);
  searchCard.hidden = false;
  searchStatus.textContent = "Searching…";
  try {
    const page = await api("GET", "/admin/analytics/logs", { query });
    const rows = itemsOf(page);
    if (!cursor) searchBody.replaceChildren();
    for (const r of rows) searchBody.appendChild(logRow(r, false));
    nextCursor = page && (page.next_cursor ?? null);
    moreButton.hidden = nextCursor === null || nextCursor === undefined;
    const shown = searchBody.rows.length;
    searchStatus.textContent = shown ? `${shown} row${shown === 1 ? "" : "s"}${moreButton.hidden ? "" : " so far"}` : "No stored request matches.";
  } catch (err) {
    // A rejected filter must not leave the previous search's rows looking like its answer.
    searchBody.replaceChildren();
    moreButton.hidden = true;
    nextCursor = null;
    searchStatus.textContent = "Search failed.";
    if (err instanceof ApiError && err.status === 422) showErrors(filters, err);
    else if (!(err instanceof ApiError && err.status === 401)) reportError(err, "Searching logs");
  }
}

async function loadRoutes() {
  try {
    const routes = await listAll("/admin/routes");
    const select = document.getElementById("lf-route");
    select.append(...routes.map((r) => h("option", { value: r.name }, r.name)));
  } catch (err) {
    reportError(err, "Loading routes");
  }
}

// The page has no log section when the gateway does not serve request logs.
if (filters) {
  filters.addEventListener("submit", (event) => {
    event.preventDefault();
    search(null).catch(() => {});
  });
  for (const name of ["route", "key", "request_id", "status", "cache_status", "method", "path_prefix"]) {
    filters.elements.namedItem(name).addEventListener("change", () => {
      tailBody.replaceChildren();
      tailEmpty.hidden = false;
      buffered = [];
      missed = 0;
      connect();
    });
  }
  document.getElementById("reset-filters").addEventListener("click", () => {
    filters.reset();
    tailBody.replaceChildren();
    tailEmpty.hidden = false;
    searchCard.hidden = true;
    connect();
  });
  toggle.addEventListener("click", () => setPaused(!paused));
  document.getElementById("tail-clear").addEventListener("click", () => {
    tailBody.replaceChildren();
    tailEmpty.hidden = false;
  });
  moreButton.addEventListener("click", () => { if (lastQuery) search(nextCursor); });
  window.addEventListener("pagehide", () => { if (source) source.close(); });

  // /ui/logs?request_id=…&key=… (links from elsewhere): filled in and searched at once.
  const given = new URLSearchParams(location.search);
  let prefilled = false;
  for (const name of ["request_id", "key", "path_prefix", "status"]) {
    const value = given.get(name);
    if (value) { filters.elements.namedItem(name).value = value; prefilled = true; }
  }
  loadRoutes();
  connect();
  if (prefilled) search(null).catch(() => {});
}
