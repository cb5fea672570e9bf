import {
  ApiError, api, badge, clearErrors, emptyRow, fmtDate, fmtRelative, h, itemsOf, reportError, showErrors,
} from "./common.js";

const form = document.getElementById("audit-filters");
const tbody = document.querySelector("#audit-table tbody");
const status = document.getElementById("audit-status");
const more = document.getElementById("audit-more");
const failuresOnly = document.getElementById("af-failures");
let cursor = null;

// Where a change came from: every entry records it (`client_ip`; null from the CLI and on
// entries older than the field), and failed sign-ins also hold it in their `after`.
function clientIp(entry) {
  if (typeof entry.client_ip === "string" && entry.client_ip) return entry.client_ip;
  for (const side of [entry.after, entry.before]) {
    if (side && typeof side.client_ip === "string" && side.client_ip) return side.client_ip;
  }
  return null;
}

function actionKind(action) {
  if (action === "auth.failure") return "danger";
  if (/\.(delete|revoke|block|purge)$/.test(action)) return "warn";
  if (/\.create$/.test(action)) return "ok";
  return "info";
}

// before → after, one line per field that differs; every value goes in as text.
function changeCell(entry) {
  const before = entry.before || {};
  const after = entry.after || {};
  const names = [...new Set([...Object.keys(before), ...Object.keys(after)])].sort();
  const lines = [];
  for (const name of names) {
    const a = JSON.stringify(before[name]);
    const b = JSON.stringify(after[name]);
    if (a === b) continue;
    const text = entry.before && entry.after ? `${a ?? "–"} → ${b ?? "–"}` : (b ?? a);
    lines.push(h("div", { class: "change-line" }, h("span", { class: "muted" }, `${name}: `), text));
  }
  if (!lines.length) return h("span", { class: "muted" }, "–");
  return h("details", null, h("summary", null, `${lines.length} field${lines.length === 1 ? "" : "s"}`), lines);
}

function row(entry) {
  const ip = clientIp(entry);
  return h("tr", { dataset: { id: entry.id, action: entry.action } },
    h("td", { class: "nowrap", title: fmtDate(entry.ts) }, fmtDate(entry.ts), h("div", { class: "cell-sub" }, fmtRelative(entry.ts))),
    h("td", { class: "mono" }, entry.actor),
    h("td", null, badge(entry.action, actionKind(entry.action))),
    h("td", null, entry.entity_type, entry.entity_id ? h("span", { class: "muted" }, ` #${entry.entity_id}`) : null),
    h("td", { class: "mono" }, ip || h("span", { class: "muted", title: "not recorded: a change from the CLI, or an entry older than this record" }, "–")),
    h("td", null, changeCell(entry)));
}

function query() {
  const data = new FormData(form);
  const get = (name) => String(data.get(name) || "").trim() || null;
  return {
    action: failuresOnly.checked ? "auth.failure" : get("action"),
    entity_type: get("entity_type"),
    entity_id: get("entity_id"),
    actor: get("actor"),
    limit: 100,
  };
}

async function load(older) {
  clearErrors(form);
  status.textContent = "Loading…";
  try {
    const page = await api("GET", "/admin/audit", { query: { ...query(), cursor: older ? cursor : null } });
    const items = itemsOf(page);
    if (!older) tbody.replaceChildren();
    tbody.append(...items.map(row));
    cursor = page && (page.next_cursor ?? null);
    more.hidden = cursor === null;
    const shown = tbody.querySelectorAll("tr[data-id]").length;
    if (!shown) {
      const filtered = Object.entries(query()).some(([k, v]) => k !== "limit" && v);
      emptyRow(tbody, 6, filtered
        ? "No audit entry matches these filters."
        : "No changes recorded yet. Changes made here or through the admin API appear in this list.");
    }
    status.textContent = shown ? `${shown} entr${shown === 1 ? "y" : "ies"}${more.hidden ? "" : " so far"}` : "";
  } catch (err) {
    // A rejected filter leaves no stale entries on the page.
    tbody.replaceChildren();
    more.hidden = true;
    status.textContent = "Could not load the audit log.";
    if (err instanceof ApiError && err.status === 422) showErrors(form, err);
    else reportError(err, "Loading the audit log");
  }
}

if (form) {
  form.addEventListener("submit", (event) => { event.preventDefault(); load(false); });
  failuresOnly.addEventListener("change", () => load(false));
  document.getElementById("audit-reset").addEventListener("click", () => { form.reset(); load(false); });
  more.addEventListener("click", () => load(true));
  load(false);
}
