import {
  ApiError, api, badge, config, confirmDialog, copyText, emptyRow, emptyState, features, fieldValue, fmtCompact,
  fmtDate, fmtDay, fmtNumber, fmtRelative, h, itemsOf, listAll, numberValue, onSubmit, openDialog, reportError,
  setField, toast,
} from "./common.js";

const tbody = document.querySelector("#keys-table tbody");
const tenantFilter = document.getElementById("filter-tenant");
const showRevoked = document.getElementById("show-revoked");
const keyDialog = document.getElementById("key-dialog");
const keyForm = document.getElementById("key-form");
const rotateDialog = document.getElementById("rotate-dialog");
const rotateForm = document.getElementById("rotate-form");
const secretDialog = document.getElementById("secret-dialog");
let tenants = new Map();
// Keys soft-blocked right now (abuse detection or by hand): key id -> the block.
let blocked = new Map();
let editing = null;
let rotating = null;

const STATUS_KIND = { active: "ok", expiring: "warn", disabled: "", revoked: "danger", expired: "danger" };

async function loadTenants() {
  const list = await listAll("/admin/tenants");
  tenants = new Map(list.map((t) => [t.id, t]));
  const wanted = new URLSearchParams(location.search).get("tenant") || tenantFilter.value;
  tenantFilter.replaceChildren(h("option", { value: "" }, "All tenants"),
    ...list.map((t) => h("option", { value: t.id }, t.name)));
  if (wanted && tenants.has(Number(wanted))) tenantFilter.value = wanted;
  const select = keyForm.elements.namedItem("tenant_id");
  select.replaceChildren(...list.map((t) => h("option", { value: t.id }, t.name)));
}

async function load() {
  try {
    const [keys] = await Promise.all([listAll("/admin/keys", {
      tenant_id: tenantFilter.value || null,
      include_revoked: showRevoked.checked ? true : null,
    }), loadBlocked()]);
    render(keys);
    loadUsage(keys);
  } catch (err) {
    emptyRow(tbody, 6, "Could not load keys.");
    reportError(err, "Loading keys");
  }
}

async function loadBlocked() {
  if (!features.abuse) return;
  try {
    const answer = await api("GET", "/admin/abuse/blocked");
    blocked = new Map(itemsOf(answer).filter((b) => b.key_id !== null).map((b) => [b.key_id, b]));
  } catch {
    blocked = new Map();  // the status column then shows what the key record says
  }
}

async function unblock(key) {
  const ok = await confirmDialog(`Lift the block on “${key.name}” (${key.key_prefix}…)? Its requests are admitted again on every instance.`, {
    title: "Unblock key", confirmLabel: "Unblock", danger: false,
  });
  if (!ok) return;
  try {
    await api("POST", `/admin/abuse/unblock/${key.id}`);
    toast(`Unblocked ${key.name}`, "ok");
  } catch (err) {
    reportError(err, "Unblocking");
  }
  load();
}

function rateText(k) {
  if (k.rate_limit_rps === null || k.rate_limit_rps === undefined) return h("span", { class: "muted" }, "gateway default");
  const algo = k.rate_limit_algorithm === "sliding_window" ? `window ${k.rate_limit_window_seconds}s` : `burst ${k.rate_limit_burst ?? "–"}`;
  return h("div", null, h("div", { class: "nowrap" }, `${fmtNumber(k.rate_limit_rps)} req/s`), h("div", { class: "cell-sub" }, algo));
}

// One quota bar. `used` is null until the gateway reports usage (see loadUsage).
function quotaBar(label, limit, used, resetsAt) {
  if (limit === null || limit === undefined) return null;
  const known = typeof used === "number";
  const ratio = known && limit > 0 ? Math.min(1, used / limit) : 0;
  const bar = h("div", {
    class: "bar" + (known ? (ratio >= 1 ? " full" : ratio >= 0.8 ? " warn" : "") : " unknown"),
    role: "progressbar", "aria-label": `${label} quota`, "aria-valuemin": 0, "aria-valuemax": limit,
    "aria-valuenow": known ? used : null,
  }, h("span", { style: { width: `${(ratio * 100).toFixed(1)}%` } }));
  const text = known ? `${fmtCompact(used)} / ${fmtCompact(limit)}` : `${fmtCompact(limit)} / ${label === "daily" ? "day" : "month"}`;
  return h("div", { class: "quota", dataset: { quota: label } },
    h("div", { class: "quota-label" }, h("span", null, label), h("span", { title: resetsAt ? `resets ${fmtDate(resetsAt)}` : null }, text)),
    bar);
}

function quotaCell(k, usage) {
  const daily = quotaBar("daily", k.daily_quota, usage?.daily?.used, usage?.daily?.resets_at);
  const monthly = quotaBar("monthly", k.monthly_quota, usage?.monthly?.used, usage?.monthly?.resets_at);
  if (!daily && !monthly) return h("span", { class: "muted" }, "unlimited");
  return [daily, monthly];
}

function render(keys) {
  document.getElementById("key-count").textContent = `${keys.length} key${keys.length === 1 ? "" : "s"}`;
  if (!keys.length) {
    const tenant = tenants.get(Number(tenantFilter.value));
    const text = tenant ? `${tenant.name} has no ${showRevoked.checked ? "" : "usable "}keys yet.`
      : "No API keys yet. Clients need one to call routes that are not public.";
    emptyState(tbody, 6, text, { label: "Create a key", onClick: () => openForm(null) });
    return;
  }
  tbody.replaceChildren(...keys.map((k) => {
    const tenant = tenants.get(k.tenant_id);
    const live = k.status !== "revoked" && k.status !== "expired";
    const block = live ? blocked.get(k.id) : undefined;
    const status = [badge(k.status, STATUS_KIND[k.status] ?? "")];
    status.push(h("div", { class: "cell-sub", title: fmtDate(k.created_at) }, `since ${fmtDay(k.created_at)}`));
    if (k.expires_at && live) status[1] = h("div", { class: "cell-sub", title: fmtDate(k.expires_at) }, `expires ${fmtRelative(k.expires_at)}`);
    if (block) {
      status.splice(1, 0, " ", badge("blocked", "danger"));
      status.push(h("div", { class: "cell-sub", title: block.reason || null, dataset: { blockedUntil: block.blocked_until || "" } },
        block.blocked_until ? `blocked until ${fmtDate(block.blocked_until)}` : "blocked"));
    }
    return h("tr", { dataset: { id: k.id, prefix: k.key_prefix } },
      h("td", null, h("div", { class: "cell-title" }, k.name),
        h("div", { class: "cell-sub", title: `created ${fmtDate(k.created_at)}` }, h("code", null, `${k.key_prefix}…`), ` · #${k.id}`)),
      h("td", null, tenant ? tenant.name : `#${k.tenant_id}`),
      h("td", null, status),
      h("td", null, rateText(k)),
      h("td", { class: "quota-cell" }, quotaCell(k, null)),
      h("td", null, h("div", { class: "row-actions" },
        live ? h("button", { type: "button", class: "btn btn-ghost btn-sm", on: { click: () => openForm(k) } }, "Edit") : null,
        live ? h("button", { type: "button", class: "btn btn-ghost btn-sm", on: { click: () => openRotate(k) } }, "Rotate") : null,
        live && features.block && !block ? h("button", { type: "button", class: "btn btn-ghost btn-sm", on: { click: () => openBlock(k) } }, "Block") : null,
        block && features.unblock ? h("button", { type: "button", class: "btn btn-ghost btn-sm", on: { click: () => unblock(k) } }, "Unblock") : null,
        k.status !== "revoked" ? h("button", { type: "button", class: "btn btn-link danger btn-sm", on: { click: () => revoke(k) } }, "Revoke") : null)));
  }));
}

// Quota use comes from GET /admin/keys/{id}/usage ({daily: {used, limit, resets_at}, monthly:
// {...}}); a gateway without that endpoint shows the configured quotas only.
async function loadUsage(keys) {
  if (!features.key_usage) return;
  await Promise.all(keys.filter((k) => k.daily_quota || k.monthly_quota).map(async (k) => {
    try {
      const usage = await api("GET", `/admin/keys/${k.id}/usage`);
      const cell = tbody.querySelector(`tr[data-id="${k.id}"] .quota-cell`);
      if (cell) cell.replaceChildren(...[quotaCell(k, usage)].flat().filter(Boolean));
    } catch {
      // Usage is decoration: the configured quota stays visible.
    }
  }));
}

function openForm(key) {
  editing = key;
  keyForm.reset();
  const isEdit = Boolean(key);
  for (const el of keyForm.querySelectorAll(".edit-only")) el.hidden = !isEdit;
  const tenantSelect = keyForm.elements.namedItem("tenant_id");
  tenantSelect.disabled = isEdit;
  if (!tenants.size && !isEdit) {
    toast("Create a tenant first: every key belongs to one.", "error");
    return;
  }
  if (isEdit) {
    for (const name of ["tenant_id", "name", "rate_limit_rps", "rate_limit_burst", "rate_limit_algorithm",
      "rate_limit_window_seconds", "daily_quota", "monthly_quota", "is_active", "abuse_mode",
      "abuse_zscore_threshold"]) setField(keyForm, name, key[name]);
  } else if (tenantFilter.value) {
    setField(keyForm, "tenant_id", tenantFilter.value);
  }
  document.getElementById("key-dialog-title").textContent = isEdit ? `Edit ${key.name}` : "New key";
  document.getElementById("key-save").textContent = isEdit ? "Save changes" : "Create key";
  openDialog(keyDialog);
}

onSubmit(keyForm, async () => {
  const body = {
    name: fieldValue(keyForm, "name"),
    rate_limit_rps: numberValue(keyForm, "rate_limit_rps"),
    rate_limit_burst: numberValue(keyForm, "rate_limit_burst"),
    rate_limit_algorithm: fieldValue(keyForm, "rate_limit_algorithm"),
    rate_limit_window_seconds: numberValue(keyForm, "rate_limit_window_seconds") ?? 1,
    daily_quota: numberValue(keyForm, "daily_quota"),
    monthly_quota: numberValue(keyForm, "monthly_quota"),
    abuse_mode: fieldValue(keyForm, "abuse_mode") || "default",
    abuse_zscore_threshold: numberValue(keyForm, "abuse_zscore_threshold"),
  };
  if (editing) {
    body.is_active = fieldValue(keyForm, "is_active");
    await api("PATCH", `/admin/keys/${editing.id}`, { body });
    keyDialog.close();
    toast(`Saved ${body.name}`, "ok");
  } else {
    body.tenant_id = numberValue(keyForm, "tenant_id");
    const created = await api("POST", "/admin/keys", { body });
    keyDialog.close();
    showSecret(created, `Key “${created.name}” (#${created.id}) for ${tenants.get(created.tenant_id)?.name ?? "its tenant"}.`);
  }
  load();
});

function openRotate(key) {
  rotating = key;
  rotateForm.reset();
  document.getElementById("rotate-text").textContent =
    `A new key replaces “${key.name}” (${key.key_prefix}…) with the same tenant, limits and quotas. The old key keeps working for the grace period below, then stops.`;
  setField(rotateForm, "grace_seconds", config.rotation_grace_seconds ?? 3600);
  openDialog(rotateDialog);
}

onSubmit(rotateForm, async () => {
  const rotated = await api("POST", `/admin/keys/${rotating.id}/rotate`, {
    body: { grace_seconds: numberValue(rotateForm, "grace_seconds") },
  });
  rotateDialog.close();
  const until = rotated.previous_key?.expires_at;
  showSecret(rotated, `Replaces #${rotating.id}${until ? `, which stops working ${fmtRelative(until)}` : ""}.`);
  load();
});

const blockDialog = document.getElementById("block-dialog");
const blockForm = document.getElementById("block-form");
let blocking = null;

function openBlock(key) {
  blocking = key;
  blockForm.reset();
  document.getElementById("block-text").textContent =
    `Soft-block “${key.name}” (${key.key_prefix}…): its requests are refused with 429 on every instance until the block expires or is lifted on the Abuse page.`;
  openDialog(blockDialog);
}

onSubmit(blockForm, async () => {
  const answer = await api("POST", `/admin/abuse/block/${blocking.id}`, {
    body: { duration_seconds: numberValue(blockForm, "duration_seconds"), reason: fieldValue(blockForm, "reason") },
  });
  blockDialog.close();
  toast(`Blocked ${blocking.name}${answer && answer.blocked_until ? ` until ${fmtDate(answer.blocked_until)}` : ""}`, "ok");
  load();
});

async function revoke(key) {
  const ok = await confirmDialog(`Revoke “${key.name}” (${key.key_prefix}…)? Requests with it are refused at once, on every instance. This cannot be undone.`, {
    title: "Revoke key", confirmLabel: "Revoke key",
  });
  if (!ok) return;
  try {
    await api("DELETE", `/admin/keys/${key.id}`);
    toast(`Revoked ${key.name}`, "ok");
    load();
  } catch (err) {
    reportError(err, "Revoking the key");
  }
}

function showSecret(created, meta) {
  document.getElementById("secret-value").textContent = created.key;
  document.getElementById("secret-meta").textContent = meta;
  const copy = document.getElementById("secret-copy");
  copy.textContent = "Copy";
  copy.onclick = async () => {
    const ok = await copyText(created.key);
    copy.textContent = ok ? "Copied" : "Select and copy";
  };
  // The plaintext leaves the page when the dialog closes; it is never stored anywhere.
  secretDialog.addEventListener("close", () => {
    document.getElementById("secret-value").textContent = "";
  }, { once: true });
  openDialog(secretDialog);
  copy.focus();
}

document.getElementById("new-key").addEventListener("click", () => openForm(null));
tenantFilter.addEventListener("change", () => {
  const url = new URL(location.href);
  if (tenantFilter.value) url.searchParams.set("tenant", tenantFilter.value);
  else url.searchParams.delete("tenant");
  history.replaceState(null, "", url);
  load();
});
showRevoked.addEventListener("change", load);

loadTenants().then(load).catch((err) => {
  if (!(err instanceof ApiError && err.status === 401)) reportError(err, "Loading tenants");
  load();
});
