import {
  api, badge, confirmDialog, emptyRow, emptyState, fieldValue, fmtDate, fmtDay, h, listAll, onSubmit, openDialog,
  numberValue, reportError, setField, toast,
} from "./common.js";

const tbody = document.querySelector("#tenants-table tbody");
const onlyActive = document.getElementById("only-active");
const dialog = document.getElementById("tenant-dialog");
const form = document.getElementById("tenant-form");
let editing = null;

async function load() {
  try {
    const tenants = await listAll("/admin/tenants", { is_active: onlyActive.checked ? true : null });
    render(tenants);
  } catch (err) {
    emptyRow(tbody, 5, "Could not load tenants.");
    reportError(err, "Loading tenants");
  }
}

function render(tenants) {
  document.getElementById("tenant-count").textContent = `${tenants.length} tenant${tenants.length === 1 ? "" : "s"}`;
  if (!tenants.length) {
    if (onlyActive.checked) { emptyRow(tbody, 5, "No active tenant."); return; }
    emptyState(tbody, 5, "No tenants yet. Every API key belongs to a tenant: create one first.",
      { label: "Create a tenant", onClick: () => openForm(null) });
    return;
  }
  tbody.replaceChildren(...tenants.map((t) => h("tr", { dataset: { id: t.id } },
    h("td", null,
      h("div", { class: "cell-title" }, t.name),
      t.description ? h("div", { class: "cell-sub", title: t.description }, t.description) : null),
    h("td", null, t.is_active ? badge("active", "ok") : badge("inactive")),
    h("td", { class: "num" },
      h("a", { href: `/ui/keys?tenant=${encodeURIComponent(t.id)}`, title: "Show this tenant's keys" },
        `${t.active_key_count} / ${t.key_count}`)),
    h("td", { class: "nowrap", title: fmtDate(t.created_at) }, fmtDay(t.created_at)),
    h("td", null, h("div", { class: "row-actions" },
      h("button", { type: "button", class: "btn btn-ghost btn-sm", on: { click: () => edit(t) } }, "Edit"),
      h("button", { type: "button", class: "btn btn-link danger btn-sm", on: { click: () => remove(t) } }, "Delete"))),
  )));
}

function openForm(tenant) {
  editing = tenant;
  form.reset();
  setField(form, "name", tenant ? tenant.name : "");
  setField(form, "description", tenant ? tenant.description : "");
  setField(form, "is_active", tenant ? tenant.is_active : true);
  setField(form, "abuse_mode", tenant ? tenant.abuse_mode : "default");
  setField(form, "abuse_zscore_threshold", tenant ? tenant.abuse_zscore_threshold : "");
  document.getElementById("tenant-dialog-title").textContent = tenant ? `Edit ${tenant.name}` : "New tenant";
  document.getElementById("tenant-save").textContent = tenant ? "Save changes" : "Create tenant";
  openDialog(dialog);
}

function edit(tenant) { openForm(tenant); }

async function remove(tenant) {
  const keys = tenant.key_count ? ` and its ${tenant.key_count} key${tenant.key_count === 1 ? "" : "s"}` : "";
  const ok = await confirmDialog(`Delete tenant “${tenant.name}”${keys}? Requests with those keys are refused at once.`, {
    title: "Delete tenant", confirmLabel: "Delete tenant",
  });
  if (!ok) return;
  try {
    await api("DELETE", `/admin/tenants/${tenant.id}`);
    toast(`Deleted ${tenant.name}`, "ok");
    load();
  } catch (err) {
    reportError(err, "Deleting the tenant");
  }
}

onSubmit(form, async () => {
  const body = {
    name: fieldValue(form, "name"),
    description: fieldValue(form, "description"),
    is_active: fieldValue(form, "is_active"),
    abuse_mode: fieldValue(form, "abuse_mode") || "default",
    abuse_zscore_threshold: numberValue(form, "abuse_zscore_threshold"),
  };
  if (editing) {
    await api("PATCH", `/admin/tenants/${editing.id}`, { body });
    toast(`Saved ${body.name}`, "ok");
  } else {
    const created = await api("POST", "/admin/tenants", { body });
    toast(`Created tenant ${created.name}`, "ok");
  }
  dialog.close();
  load();
});

document.getElementById("new-tenant").addEventListener("click", () => openForm(null));
onlyActive.addEventListener("change", load);
load();
