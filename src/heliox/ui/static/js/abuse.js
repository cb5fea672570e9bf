import {
  ApiError, api, badge, confirmDialog, emptyRow, features, fmtDate, fmtNumber, fmtRelative, h, itemsOf,
  listAll, reportError, toast,
} from "./common.js";

const blockedBody = document.querySelector("#blocked-table tbody");
const eventsBody = document.querySelector("#events-table tbody");
let keys = new Map();

// The abuse API's field names, with the alternatives it might use.
const pick = (obj, ...names) => {
  for (const n of names) if (obj && obj[n] !== undefined && obj[n] !== null) return obj[n];
  return null;
};

function keyIdOf(item) {
  const id = pick(item, "key_id");
  if (typeof id === "number") return id;
  const subject = String(pick(item, "subject", "principal") || "");
  const m = /^k:(\d+)$/.exec(subject);
  return m ? Number(m[1]) : null;
}

function keyCell(item) {
  const id = keyIdOf(item);
  const key = id !== null ? keys.get(id) : null;
  const name = pick(item, "key_name", "name") || (key && key.name);
  const prefix = pick(item, "key_prefix") || (key && key.key_prefix);
  return h("td", null,
    h("div", { class: "cell-title" }, name || (id !== null ? `Key #${id}` : String(pick(item, "subject") || "–"))),
    h("div", { class: "cell-sub" }, prefix ? h("code", null, `${prefix}…`) : null, id !== null ? ` #${id}` : null));
}

function ratio(observed, baseline) {
  if (typeof observed !== "number") return h("span", { class: "muted" }, "–");
  const times = typeof baseline === "number" && baseline > 0 ? observed / baseline : null;
  return h("div", null,
    h("div", null, `${fmtNumber(observed)} vs ${typeof baseline === "number" ? fmtNumber(baseline) : "–"}`),
    h("div", { class: "cell-sub" }, times !== null ? `${fmtNumber(times)}× the baseline rate` : "requests per window"));
}

async function loadKeys() {
  try {
    const list = await listAll("/admin/keys", { include_revoked: true });
    keys = new Map(list.map((k) => [k.id, k]));
  } catch (err) {
    if (!(err instanceof ApiError && err.status === 401)) reportError(err, "Loading keys");
  }
}

async function loadBlocked() {
  if (!features.abuse || !blockedBody) return;
  try {
    const items = itemsOf(await api("GET", "/admin/abuse/blocked"));
    document.getElementById("blocked-count").textContent = `${items.length} blocked`;
    if (!items.length) { emptyRow(blockedBody, 6, "No key is blocked."); return; }
    blockedBody.replaceChildren(...items.map((b) => {
      const info = b.info && typeof b.info === "object" ? { ...b.info, ...b } : b;
      const id = keyIdOf(info);
      const until = pick(info, "until", "expires_at", "blocked_until");
      const score = pick(info, "score", "z_score", "zscore");
      const manual = pick(info, "action") === "manual";
      return h("tr", { dataset: { keyId: id ?? "" } },
        keyCell(info),
        h("td", null, pick(info, "reason") || "–", manual ? h("div", null, badge("manual", "warn")) : null),
        h("td", { class: "num" }, typeof score === "number" ? fmtNumber(score, 2) : "–"),
        h("td", null, ratio(pick(info, "observed_rate", "observed"), pick(info, "baseline_rate", "baseline"))),
        h("td", { title: fmtDate(until) }, until ? fmtRelative(until) : "–"),
        h("td", null, h("div", { class: "row-actions" },
          features.unblock && id !== null
            ? h("button", { type: "button", class: "btn btn-primary btn-sm", on: { click: () => unblock(id, info) } }, "Unblock")
            : null)));
    }));
  } catch (err) {
    emptyRow(blockedBody, 6, "Could not load blocked keys.");
    reportError(err, "Loading blocked keys");
  }
}

async function loadEvents() {
  if (!features.abuse_events || !eventsBody) return;
  try {
    const items = itemsOf(await api("GET", "/admin/abuse/events", { query: { limit: 100 } }));
    if (!items.length) { emptyRow(eventsBody, 7, "No abuse events recorded."); return; }
    eventsBody.replaceChildren(...items.map((e) => {
      const action = pick(e, "action") || "";
      // A block by hand has no detector figures.
      const measured = action !== "manual";
      const score = measured ? pick(e, "score") : null;
      return h("tr", null,
        h("td", { title: fmtDate(pick(e, "ts", "time", "created_at")) }, fmtRelative(pick(e, "ts", "time", "created_at"))),
        keyCell(e),
        h("td", null, pick(e, "reason") || "–"),
        h("td", { class: "num" }, typeof score === "number" ? fmtNumber(score, 2) : "–"),
        h("td", { class: "num" }, measured ? fmtNumber(pick(e, "observed_rate", "observed")) : "–"),
        h("td", { class: "num" }, measured ? fmtNumber(pick(e, "baseline_rate", "baseline")) : "–"),
        h("td", null, action ? badge(action, action === "block" ? "danger" : action === "unblock" ? "ok" : "warn") : "–"));
    }));
  } catch (err) {
    emptyRow(eventsBody, 7, "Could not load abuse events.");
    reportError(err, "Loading abuse events");
  }
}

async function unblock(id, info) {
  const key = keys.get(id);
  const ok = await confirmDialog(`Unblock ${key ? `“${key.name}”` : `key #${id}`} now? Its requests are admitted again on every instance.`, {
    title: "Unblock key", confirmLabel: "Unblock", danger: false,
  });
  if (!ok) return;
  try {
    await api("POST", `/admin/abuse/unblock/${encodeURIComponent(id)}`);
    toast(`Unblocked ${key ? key.name : `key #${id}`}`, "ok");
  } catch (err) {
    reportError(err, "Unblocking");
  }
  refresh();
}

async function refresh() {
  await Promise.all([loadBlocked(), loadEvents()]);
}

document.getElementById("abuse-refresh").addEventListener("click", refresh);
loadKeys().then(refresh);
setInterval(refresh, 15000);
