// Shared helpers of the admin UI pages.
// Data from the API only ever reaches the page as text (textContent / text nodes), never as HTML.

export const config = JSON.parse(document.getElementById("page-config")?.textContent || "{}");
export const features = config.features || {};
const csrfToken = document.querySelector('meta[name="csrf-token"]')?.content || "";

export class ApiError extends Error {
  constructor(status, problem) {
    super((problem && (problem.detail || problem.title)) || `request failed (${status})`);
    this.status = status;
    this.problem = problem || {};
  }
}

function loginUrl() {
  const next = location.pathname + location.search;
  return "/ui/login?next=" + encodeURIComponent(next);
}

// Calls the admin API with the session cookie; state-changing calls carry the CSRF token.
export async function api(method, path, { body, query } = {}) {
  let url = path;
  if (query) {
    const params = new URLSearchParams();
    for (const [k, v] of Object.entries(query)) {
      if (v !== null && v !== undefined && v !== "") params.append(k, String(v));
    }
    const qs = params.toString();
    if (qs) url += "?" + qs;
  }
  const headers = { Accept: "application/json" };
  if (method !== "GET" && method !== "HEAD") headers["X-CSRF-Token"] = csrfToken;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const res = await fetch(url, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
    credentials: "same-origin",
    cache: "no-store",
  });
  if (res.status === 401) {
    location.assign(loginUrl());
    throw new ApiError(401, { detail: "session expired; sign in again" });
  }
  let data = null;
  const type = res.headers.get("content-type") || "";
  if (res.status !== 204 && type.includes("json")) {
    try { data = await res.json(); } catch { data = null; }
  }
  if (!res.ok) throw new ApiError(res.status, data);
  return data;
}

// After a live stream was refused: back to the sign-in page if the session is gone.
export async function checkSession() {
  try {
    await api("GET", "/admin/tenants", { query: { limit: 1 } });
  } catch {
    // api() has already sent the browser to the sign-in page on a 401.
  }
}

// Every page of a listing, up to `max` items.
export async function listAll(path, query = {}, max = 5000) {
  const items = [];
  let offset = 0;
  const limit = 500;
  for (;;) {
    const page = await api("GET", path, { query: { ...query, limit, offset } });
    const batch = itemsOf(page);
    items.push(...batch);
    offset += batch.length;
    const total = page && typeof page.total === "number" ? page.total : items.length;
    if (!batch.length || offset >= total || items.length >= max) return items;
  }
}

export function itemsOf(payload) {
  if (Array.isArray(payload)) return payload;
  if (payload && typeof payload === "object") {
    for (const name of ["items", "blocked", "events", "results", "data", "rows", "routes", "keys"]) {
      if (Array.isArray(payload[name])) return payload[name];
    }
  }
  return [];
}

// h("td", {class: "num", title: x}, "text", node, [more]) — strings become text nodes.
export function h(tag, props, ...children) {
  const el = document.createElement(tag);
  if (props) {
    for (const [key, value] of Object.entries(props)) {
      if (value === null || value === undefined || value === false) continue;
      if (key === "class") el.className = value;
      else if (key === "text") el.textContent = String(value);
      else if (key === "on") for (const [ev, fn] of Object.entries(value)) el.addEventListener(ev, fn);
      else if (key === "dataset") Object.assign(el.dataset, value);
      else if (key === "style") for (const [p, v] of Object.entries(value)) el.style.setProperty(p, v);
      else if (value === true) el.setAttribute(key, "");
      else el.setAttribute(key, String(value));
    }
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    if (Array.isArray(child)) append(el, child);
    else if (child instanceof Node) el.appendChild(child);
    else el.appendChild(document.createTextNode(String(child)));
  }
}

export function svgIcon(name) {
  const paths = {
    plus: "M12 5v14M5 12h14",
    pause: "M8 5v14M16 5v14",
    play: "M7 4l13 8-13 8z",
  };
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("class", "icon");
  svg.setAttribute("viewBox", "0 0 24 24");
  svg.setAttribute("width", "18");
  svg.setAttribute("height", "18");
  svg.setAttribute("aria-hidden", "true");
  const path = document.createElementNS(ns, "path");
  path.setAttribute("d", paths[name] || "");
  svg.appendChild(path);
  return svg;
}

export function badge(text, kind = "") {
  return h("span", { class: "badge" + (kind ? " badge-" + kind : "") }, text);
}

export function emptyRow(tbody, columns, text) {
  tbody.replaceChildren(h("tr", null, h("td", { colspan: columns, class: "empty" }, text)));
}

// An empty table that says what to do next, with a button that does it (when there is one).
export function emptyState(tbody, columns, text, action = null) {
  const box = h("div", { class: "empty-cta" }, h("p", null, text),
    action ? h("button", { type: "button", class: "btn btn-primary btn-sm", on: { click: action.onClick } }, action.label) : null);
  tbody.replaceChildren(h("tr", null, h("td", { colspan: columns, class: "empty" }, box)));
}

// On narrow screens tables become stacks of cards; each cell shows its column's name, kept here
// in data-label (from the table's header) for every row, including rows added later.
function labelCells(table) {
  const names = Array.from(table.tHead ? table.tHead.rows[0].cells : [], (th) =>
    th.querySelector(".sr-only") ? "" : th.textContent.trim());
  for (const row of table.tBodies[0]?.rows || []) {
    Array.from(row.cells).forEach((cell, i) => {
      if (cell.colSpan === 1 && !cell.hasAttribute("data-label")) cell.dataset.label = names[i] || "";
    });
  }
}

export function stackTables(root = document) {
  for (const table of root.querySelectorAll("table.table")) {
    labelCells(table);
    if (table.tBodies[0] && !table.dataset.stacked) {
      table.dataset.stacked = "1";
      new MutationObserver(() => labelCells(table)).observe(table.tBodies[0], { childList: true });
    }
  }
}

// --- toasts and dialogs -------------------------------------------------------------------------
export function toast(message, kind = "") {
  const box = document.getElementById("toasts");
  if (!box) return;
  const el = h("div", { class: "toast" + (kind ? " toast-" + kind : "") }, message);
  box.appendChild(el);
  setTimeout(() => el.remove(), kind === "error" ? 8000 : 4000);
}

export function reportError(err, what) {
  if (err instanceof ApiError && err.status === 401) return;
  const detail = err instanceof ApiError ? err.message : "the gateway could not be reached";
  toast(`${what}: ${detail}`, "error");
}

export function openDialog(dialog) {
  if (!dialog.dataset.wired) {
    dialog.dataset.wired = "1";
    for (const btn of dialog.querySelectorAll("[data-close]")) {
      btn.addEventListener("click", () => dialog.close());
    }
  }
  dialog.showModal();
  const first = dialog.querySelector("input:not([type=hidden]):not([disabled]), select, textarea");
  if (first) first.focus();
}

export function confirmDialog(message, { title = "Are you sure?", confirmLabel = "Confirm", danger = true } = {}) {
  const dialog = document.getElementById("confirm-dialog");
  dialog.querySelector("#confirm-title").textContent = title;
  dialog.querySelector("#confirm-message").textContent = message;
  const ok = dialog.querySelector("#confirm-ok");
  ok.textContent = confirmLabel;
  ok.className = "btn " + (danger ? "btn-danger" : "btn-primary");
  dialog.returnValue = "";
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => resolve(dialog.returnValue === "ok"), { once: true });
    dialog.showModal();
    dialog.querySelector("#confirm-cancel").focus();
  });
}

export async function copyText(text) {
  try {
    await navigator.clipboard.writeText(text);
    return true;
  } catch {
    // Clipboard API needs a secure context; fall back to a selected, temporary textarea.
    const area = h("textarea", { class: "sr-only", readonly: true });
    area.value = text;
    document.body.appendChild(area);
    area.select();
    let copied = false;
    try { copied = document.execCommand("copy"); } catch { copied = false; }
    area.remove();
    return copied;
  }
}

// --- forms ------------------------------------------------------------------------------------
export function fieldValue(form, name) {
  const el = form.elements.namedItem(name);
  if (!el) return undefined;
  if (el instanceof RadioNodeList) {
    return Array.from(el).filter((e) => e.checked).map((e) => e.value);
  }
  if (el.type === "checkbox") return el.checked;
  return el.value.trim();
}

// A number field: null when blank, the number when it parses, else the raw text (the API's 422
// then explains what is wrong, beside the field).
export function numberValue(form, name) {
  const raw = fieldValue(form, name);
  if (raw === "" || raw === undefined) return null;
  const n = Number(raw);
  return Number.isFinite(n) ? n : raw;
}

export function listValue(form, name) {
  const raw = fieldValue(form, name) || "";
  return raw.split(",").map((s) => s.trim()).filter(Boolean);
}

export function setField(form, name, value) {
  const el = form.elements.namedItem(name);
  if (!el) return;
  if (el instanceof RadioNodeList) {
    const wanted = new Set(value || []);
    for (const e of el) e.checked = wanted.has(e.value);
  } else if (el.type === "checkbox") {
    el.checked = Boolean(value);
  } else {
    el.value = value === null || value === undefined ? "" : String(value);
  }
}

export function clearErrors(form) {
  for (const el of form.querySelectorAll(".field-error")) el.remove();
  for (const el of form.querySelectorAll(".field.invalid")) el.classList.remove("invalid");
  for (const el of form.querySelectorAll("[aria-invalid]")) {
    el.removeAttribute("aria-invalid");
    const ids = (el.getAttribute("aria-describedby") || "").split(" ").filter((id) => !id.endsWith("-error"));
    if (ids.length) el.setAttribute("aria-describedby", ids.join(" "));
    else el.removeAttribute("aria-describedby");
  }
  const top = form.querySelector(".form-error");
  if (top) { top.hidden = true; top.textContent = ""; }
}

// Shows an API error on a form: each of a 422's field errors beside its field, the rest on top.
export function showErrors(form, err) {
  clearErrors(form);
  const messages = [];
  const problem = err instanceof ApiError ? err.problem : null;
  const errors = problem && Array.isArray(problem.errors) ? problem.errors : [];
  let firstInvalid = null;
  for (const e of errors) {
    const loc = Array.isArray(e.loc) ? e.loc : [];
    const name = loc[0] === "body" ? loc[1] : loc[loc.length - 1];
    const field = typeof name === "string" ? form.querySelector(`[data-field="${CSS.escape(name)}"]`) : null;
    if (!field) { messages.push(`${loc.slice(1).join(".") || "request"}: ${e.msg}`); continue; }
    // In a list field, say which entry is wrong ("entry 2: …").
    const index = loc[0] === "body" && typeof loc[2] === "number" ? `entry ${loc[2] + 1}: ` : "";
    field.classList.add("invalid");
    const id = `${form.id}-${name}-error`;
    let msg = field.querySelector(".field-error");
    if (!msg) {
      msg = h("p", { class: "field-error", id });
      field.appendChild(msg);
      msg.textContent = index + e.msg;
    } else {
      msg.textContent += "; " + index + e.msg;
    }
    const input = field.querySelector("input, select, textarea");
    if (input) {
      input.setAttribute("aria-invalid", "true");
      const described = (input.getAttribute("aria-describedby") || "").split(" ").filter(Boolean);
      if (!described.includes(id)) described.push(id);
      input.setAttribute("aria-describedby", described.join(" "));
      firstInvalid = firstInvalid || input;
    }
  }
  if (!errors.length) messages.push(err instanceof ApiError ? err.message : "the gateway could not be reached");
  const top = form.querySelector(".form-error");
  if (top && messages.length) {
    top.textContent = messages.join(" · ");
    top.hidden = false;
  } else if (messages.length) {
    toast(messages.join(" · "), "error");
  }
  if (firstInvalid) firstInvalid.focus();
}

// Submits a form through `action`, with its submit button disabled meanwhile.
export function onSubmit(form, action) {
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const button = form.querySelector('[type="submit"]');
    if (button) button.disabled = true;
    clearErrors(form);
    try {
      await action();
    } catch (err) {
      if (!(err instanceof ApiError && err.status === 401)) showErrors(form, err);
    } finally {
      if (button) button.disabled = false;
    }
  });
}

// --- formatting -------------------------------------------------------------------------------
const nf = new Intl.NumberFormat(undefined, { maximumFractionDigits: 1 });
const nf0 = new Intl.NumberFormat(undefined, { maximumFractionDigits: 0 });
const dtf = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "short" });
const df = new Intl.DateTimeFormat(undefined, { dateStyle: "medium" });
const tf = new Intl.DateTimeFormat(undefined, { hour: "2-digit", minute: "2-digit", second: "2-digit", hour12: false });

export function fmtNumber(n, digits = 1) {
  if (n === null || n === undefined || Number.isNaN(Number(n))) return "–";
  if (digits === 0) return nf0.format(n);
  if (digits === 1) return nf.format(n);
  return new Intl.NumberFormat(undefined, { maximumFractionDigits: digits }).format(n);
}

export function fmtCompact(n) {
  if (n === null || n === undefined) return "–";
  return new Intl.NumberFormat(undefined, { notation: "compact", maximumFractionDigits: 1 }).format(n);
}

export function fmtMs(ms) {
  if (ms === null || ms === undefined) return "–";
  if (ms >= 1000) return fmtNumber(ms / 1000, 2) + " s";
  if (ms >= 10) return fmtNumber(ms, 0) + " ms";
  return fmtNumber(ms, 2) + " ms";
}

export function fmtPct(ratio) {
  if (ratio === null || ratio === undefined) return "–";
  return fmtNumber(ratio * 100, 1) + "%";
}

export function toDate(value) {
  if (value === null || value === undefined || value === "") return null;
  const d = typeof value === "number" ? new Date(value * 1000) : new Date(value);
  return Number.isNaN(d.getTime()) ? null : d;
}

export function fmtDate(value) {
  const d = toDate(value);
  return d ? dtf.format(d) : "–";
}

export function fmtDay(value) {
  const d = toDate(value);
  return d ? df.format(d) : "–";
}

export function fmtTime(value) {
  const d = toDate(value);
  return d ? tf.format(d) : "–";
}

export function fmtRelative(value) {
  const d = toDate(value);
  if (!d) return "–";
  const seconds = Math.round((d.getTime() - Date.now()) / 1000);
  const abs = Math.abs(seconds);
  const rtf = new Intl.RelativeTimeFormat(undefined, { numeric: "auto" });
  if (abs < 60) return rtf.format(seconds, "second");
  if (abs < 3600) return rtf.format(Math.round(seconds / 60), "minute");
  if (abs < 86400) return rtf.format(Math.round(seconds / 3600), "hour");
  return rtf.format(Math.round(seconds / 86400), "day");
}

export function fmtBytes(n) {
  if (n === null || n === undefined) return "–";
  const units = ["B", "KiB", "MiB", "GiB"];
  let v = Number(n);
  let i = 0;
  while (v >= 1024 && i < units.length - 1) { v /= 1024; i += 1; }
  return fmtNumber(v, i ? 1 : 0) + " " + units[i];
}

export function fmtSeconds(s) {
  if (s === null || s === undefined) return "–";
  if (s === 0) return "0";
  if (s % 86400 === 0) return `${s / 86400} d`;
  if (s % 3600 === 0) return `${s / 3600} h`;
  if (s % 60 === 0) return `${s / 60} min`;
  return `${s} s`;
}

export function statusKind(status) {
  if (status >= 500) return "danger";
  if (status === 429) return "warn";
  if (status >= 400) return "warn";
  if (status >= 300) return "info";
  return "ok";
}

export function cacheKind(status) {
  switch (status) {
    case "HIT": case "STALE": case "NEGATIVE": case "UPDATING": case "REVALIDATED": return "ok";
    case "MISS": case "EXPIRED": return "primary";
    case "": case undefined: case null: return "";
    default: return "info";
  }
}

// Tables in the page's HTML; tables built later (the dashboard's) call stackTables themselves.
stackTables();
