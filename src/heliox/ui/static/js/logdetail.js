// The request-detail drawer of the logs page: everything one log row holds, from
// GET /admin/analytics/logs/{request_id}. Values reach the page as text only.
import {
  ApiError, api, badge, cacheKind, copyText, features, fmtBytes, fmtDate, fmtMs, h, statusKind, toast,
} from "./common.js";

const drawer = document.getElementById("log-drawer");
const fields = document.getElementById("drawer-fields");
const title = document.getElementById("drawer-title");
const status = document.getElementById("drawer-status");
const sameBox = document.getElementById("drawer-same");
const sameList = document.getElementById("drawer-same-list");
const missing = document.getElementById("drawer-missing");
let returnFocus = null;
let current = 0;

const plural = (n, word) => `${n} ${word}${n === 1 ? "" : "s"}`;
const PER = { key: "the key's own counter", key_route: "the key's counter on this route", address: "per client address (public route)" };

// The limit that refused the request, from the row's `refused_by` and its numbers (`refusal`).
function refusedBy(row) {
  const r = row.refusal || {};
  const per = PER[r.per] ? ` — ${PER[r.per]}` : "";
  const retry = r.retry_after !== undefined ? ` Retry after ${plural(r.retry_after, "second")}${r.retry_at ? ` (${r.retry_at})` : ""}.` : "";
  switch (row.refused_by) {
    case "rate": {
      const bucket = r.algorithm === "token_bucket"
        ? ` Token bucket of ${r.burst} refilled at ${r.rate}/s: a burst and the steady rate empty the same bucket, so the log cannot tell which one it was.`
        : r.algorithm ? ` Sliding window at ${r.rate}/s.` : "";
      return `Rate limit (429): ${plural(r.quota, "request")} per ${plural(r.window_seconds, "second")}, ${r.remaining} left${per}.${bucket}${retry}${r.slowed ? " The key was slowed down after unusual traffic (abuse multiplier)." : ""}`;
    }
    case "daily_quota":
    case "monthly_quota": {
      const period = row.refused_by === "daily_quota" ? "day" : "calendar month";
      return `${row.refused_by === "daily_quota" ? "Daily" : "Monthly"} quota (429): ${plural(r.quota, "request")} per ${period}, ${r.remaining} left; it resets in ${plural(r.reset_after, "second")} (${r.reset_at}).`;
    }
    case "blocked":
      return `Abuse block (429): the key is blocked until ${r.blocked_until || r.reset_at}.${retry} An administrator can lift the block.`;
    case "bad_key":
      return `Too many requests without a valid API key from this address (429): at most ${r.burst} at once, refilled at ${r.rate}/s.${retry}`;
    case "unavailable":
      return `The rate limiter's store was unreachable and the route fails closed (503).${retry}`;
    default:
      break;
  }
  if (row.refused_by) return `${row.refused_by}${retry}`;
  // Not refused by a limit; or a row written before the gateway recorded which one.
  if (row.status === 401) return "No valid API key (401): missing, unknown, revoked or expired.";
  if (row.status === 429) return "Refused by a limit (429); this row does not record which one.";
  if (row.status >= 400 && row.cache_status === "" && row.upstream_latency_ms === null) {
    return `Answered by the gateway itself (${row.status}), before the cache and the upstream.`;
  }
  return null;
}

// The refusing limit's numbers as recorded, name=value, for whoever compares them with the 429.
function refusalNumbers(row) {
  if (!row.refusal) return null;
  return Object.entries(row.refusal).map(([name, value]) => `${name}=${value}`).join(" ");
}

// Rows written before these were recorded have them null: say so rather than show a blank.
function olderRow(row) {
  return "upstream_status" in row && row.upstream_status === null && row.upstream_latency_ms !== null;
}

function item(name, value, { mono = false } = {}) {
  const empty = value === null || value === undefined || value === "";
  return [h("dt", null, name),
    h("dd", { class: mono && !empty ? "mono" : null, dataset: { field: name } }, empty ? h("span", { class: "muted" }, "–") : value)];
}

function render(row) {
  title.textContent = `${row.method} ${row.status} · ${row.request_id}`;
  const key = row.key_id === null ? null
    : [row.key_name || ("key_name" in row ? "deleted key" : "key"), row.key_prefix ? h("code", null, ` ${row.key_prefix}…`) : null, h("span", { class: "muted" }, ` #${row.key_id}`)];
  const tenant = row.tenant_id === null ? null : [row.tenant_name || "deleted tenant", h("span", { class: "muted" }, ` #${row.tenant_id}`)];
  const copy = h("button", { type: "button", class: "btn btn-link btn-sm", on: { click: async () => {
    toast((await copyText(row.request_id)) ? "Request id copied." : "Could not copy.", "ok");
  } } }, "Copy");
  fields.replaceChildren(
    ...item("Request id", [h("code", null, row.request_id), " ", copy]),
    ...item("Time", fmtDate(row.ts) + ` (${row.ts})`),
    ...item("Route", row.route_name || "no route matched"),
    ...item("Key", key),
    ...item("Tenant", tenant),
    ...item("Method", row.method),
    ...item("Path", row.path, { mono: true }),
    ...item("Status", badge(String(row.status), statusKind(row.status))),
    ...item("Refused by", refusedBy(row)),
    ...item("Limit numbers", refusalNumbers(row), { mono: true }),
    ...item("Cache outcome", row.cache_status ? badge(row.cache_status, cacheKind(row.cache_status)) : "not looked up"),
    ...item("Cache key", row.cache_key, { mono: true }),
    ...item("Latency", fmtMs(row.latency_ms)),
    ...item("Upstream status", row.upstream_status === null || row.upstream_status === undefined ? null : badge(String(row.upstream_status), statusKind(row.upstream_status))),
    ...item("Upstream latency", row.upstream_latency_ms === null ? "no upstream call" : fmtMs(row.upstream_latency_ms)),
    ...item("Upstream error", row.error, { mono: true }),
    ...item("Bytes in / out", `${fmtBytes(row.bytes_in)} / ${fmtBytes(row.bytes_out)}`),
    ...item("Client IP", row.client_ip, { mono: true }),
    ...item("User agent", row.user_agent),
    ...item("Log row", `#${row.id}`),
  );
  const others = row.same_request_id || [];
  sameBox.hidden = !others.length;
  sameList.replaceChildren(...others.map((o) => h("li", null,
    h("button", { type: "button", class: "btn btn-link btn-sm", on: { click: () => load(row.request_id, o.id) } },
      `${fmtDate(o.ts)} · ${o.method} ${o.path} · ${o.status}`))));
  if (row.more_same_request_id) sameList.append(h("li", { class: "muted" }, "… and older ones"));
  missing.textContent = olderRow(row)
    ? "Written before the gateway recorded the cache key, the upstream's own status and the refusing limit: those are blank here."
    : "";
}

async function load(requestId, logId) {
  const ticket = ++current;
  status.textContent = "Loading…";
  try {
    const row = await api("GET", `/admin/analytics/logs/${encodeURIComponent(requestId)}`, { query: { log_id: logId } });
    if (ticket !== current) return;
    status.textContent = "";
    render(row);
  } catch (err) {
    if (ticket !== current) return;
    fields.replaceChildren();
    sameBox.hidden = true;
    status.textContent = err instanceof ApiError && err.status === 404
      ? "This request is no longer in the log (removed by retention)."
      : `Could not load the request: ${err.message}`;
  }
}

export function openLogDetail(row, origin) {
  if (!drawer || !features.log_detail) return;
  returnFocus = origin;
  // Shown at once from the row in hand; the full record (names, other rows) replaces it.
  render({ ...row, same_request_id: [] });
  if (!drawer.open) drawer.showModal();
  document.getElementById("drawer-close").focus();
  load(row.request_id, row.id);
}

if (drawer) {
  document.getElementById("drawer-close").addEventListener("click", () => drawer.close());
  // A click on the backdrop (outside the panel) closes it too.
  drawer.addEventListener("click", (event) => { if (event.target === drawer) drawer.close(); });
  drawer.addEventListener("close", () => {
    current += 1;
    if (returnFocus && returnFocus.isConnected) returnFocus.focus();
    returnFocus = null;
  });
}
