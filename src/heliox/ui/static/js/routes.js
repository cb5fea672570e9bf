import {
  api, badge, confirmDialog, emptyRow, emptyState, features, fieldValue, fmtBytes, fmtNumber, fmtSeconds, h,
  listAll, listValue, numberValue, onSubmit, openDialog, reportError, setField, toast,
} from "./common.js";

const routesBody = document.querySelector("#routes-table tbody");
const policiesBody = document.querySelector("#policies-table tbody");
const routeDialog = document.getElementById("route-dialog");
const routeForm = document.getElementById("route-form");
const policyDialog = document.getElementById("policy-dialog");
const policyForm = document.getElementById("policy-form");
let policies = [];
let editingRoute = null;
let editingPolicy = null;

async function load() {
  try {
    const [routeList, policyList] = await Promise.all([listAll("/admin/routes"), listAll("/admin/policies")]);
    policies = policyList;
    renderRoutes(routeList);
    renderPolicies(policyList);
  } catch (err) {
    emptyRow(routesBody, 7, "Could not load routes.");
    emptyRow(policiesBody, 9, "Could not load cache policies.");
    reportError(err, "Loading routes");
  }
}

function limitText(r) {
  if (r.rate_limit_rps === null || r.rate_limit_rps === undefined) return h("span", { class: "muted" }, "per key");
  return `${fmtNumber(r.rate_limit_rps)} req/s` + (r.rate_limit_burst ? ` · burst ${r.rate_limit_burst}` : "");
}

function renderRoutes(routes) {
  document.getElementById("route-count").textContent = `${routes.length} route${routes.length === 1 ? "" : "s"}`;
  if (!routes.length) {
    emptyState(routesBody, 7, "No routes yet. A route maps /g/<name>/… to an upstream; the gateway proxies nothing without one.",
      { label: "Add a route", onClick: () => openRoute(null) });
    return;
  }
  routesBody.replaceChildren(...routes.map((r) => h("tr", { dataset: { id: r.id, name: r.name } },
    h("td", null, h("div", { class: "cell-title" }, r.name), h("div", { class: "cell-sub mono" }, `/g/${r.name}${r.path_pattern === "/*" ? "/…" : r.path_pattern}`)),
    h("td", null, h("div", { class: "truncate mono", title: r.upstream_url }, r.upstream_url),
      r.timeout_seconds ? h("div", { class: "cell-sub" }, `timeout ${fmtNumber(r.timeout_seconds)} s`) : null),
    h("td", null, h("div", { class: "tags" }, r.methods.length === 7 ? badge("any") : r.methods.map((m) => badge(m)))),
    h("td", { class: "policy-cell" }, r.cache_policy ? badge(r.cache_policy, "primary") : h("span", { class: "muted" }, "no caching")),
    h("td", null, limitText(r), h("div", { class: "cell-sub" }, `fails ${r.fail_mode}`)),
    h("td", null, h("div", { class: "tags" }, r.is_active ? badge("active", "ok") : badge("inactive"),
      r.is_public ? badge("public", "info") : badge("API key"))),
    h("td", null, h("div", { class: "row-actions" },
      h("button", { type: "button", class: "btn btn-ghost btn-sm", on: { click: () => openRoute(r) } }, "Edit"),
      features.purge ? h("button", { type: "button", class: "btn btn-ghost btn-sm", title: `Purge every cached response of ${r.name}`, on: { click: () => purge(r) } }, "Purge") : null,
      h("button", { type: "button", class: "btn btn-link danger btn-sm", on: { click: () => removeRoute(r) } }, "Delete"))),
  )));
}

function renderPolicies(list) {
  document.getElementById("policy-count").textContent = `${list.length} polic${list.length === 1 ? "y" : "ies"}`;
  if (!list.length) {
    emptyState(policiesBody, 9, "No cache policies yet. Routes without one follow the upstream's Cache-Control.",
      { label: "Add a cache policy", onClick: () => openPolicy(null) });
    return;
  }
  policiesBody.replaceChildren(...list.map((p) => h("tr", { dataset: { id: p.id, name: p.name } },
    h("td", null, h("div", { class: "cell-title" }, p.name),
      h("div", { class: "cell-sub" }, [p.shared ? "shared" : "per tenant", p.negative_cache ? "negative cache" : null, p.cache_with_cookies ? "cookies cached" : null].filter(Boolean).join(" · "))),
    h("td", null, p.mode === "origin" ? badge("origin", "info") : badge("policy")),
    h("td", { class: "num ttl-cell" }, fmtSeconds(p.ttl_seconds)),
    h("td", { class: "num" }, fmtSeconds(p.stale_while_revalidate_seconds)),
    h("td", { class: "num" }, fmtSeconds(p.stale_if_error_seconds)),
    h("td", null, p.vary_headers.length ? h("div", { class: "tags" }, p.vary_headers.map((v) => badge(v))) : h("span", { class: "muted" }, "–")),
    h("td", null, h("div", { class: "cell-sub", title: `statuses ${p.cacheable_statuses.join(", ")}` },
      `${p.cacheable_methods.join(", ")} · ${p.cacheable_statuses.length} statuses · ≤ ${fmtBytes(p.max_object_bytes)}`)),
    h("td", { class: "num" }, String(p.route_count)),
    h("td", null, h("div", { class: "row-actions" },
      h("button", { type: "button", class: "btn btn-ghost btn-sm", on: { click: () => openPolicy(p) } }, "Edit"),
      h("button", { type: "button", class: "btn btn-link danger btn-sm", on: { click: () => removePolicy(p) } }, "Delete"))),
  )));
}

// --- routes -------------------------------------------------------------------------------------
const ROUTE_FIELDS = ["name", "path_pattern", "upstream_url", "methods", "cache_policy_id", "fail_mode",
  "rate_limit_rps", "rate_limit_burst", "rate_limit_algorithm", "timeout_seconds", "max_request_body_bytes",
  "request_body_timeout_seconds", "request_body_min_rate", "max_upstream_connections", "is_public", "is_active", "hide_ratelimit_headers", "allow_private_upstream"];

function openRoute(route) {
  editingRoute = route;
  routeForm.reset();
  const select = routeForm.elements.namedItem("cache_policy_id");
  select.replaceChildren(h("option", { value: "" }, "No caching"),
    ...policies.map((p) => h("option", { value: p.id }, `${p.name} (TTL ${fmtSeconds(p.ttl_seconds)})`)));
  if (route) for (const name of ROUTE_FIELDS) setField(routeForm, name, route[name]);
  document.getElementById("route-dialog-title").textContent = route ? `Edit route ${route.name}` : "New route";
  document.getElementById("route-save").textContent = route ? "Save changes" : "Create route";
  openDialog(routeDialog);
}

onSubmit(routeForm, async () => {
  const policy = fieldValue(routeForm, "cache_policy_id");
  const body = {
    name: fieldValue(routeForm, "name"),
    path_pattern: fieldValue(routeForm, "path_pattern"),
    upstream_url: fieldValue(routeForm, "upstream_url"),
    methods: fieldValue(routeForm, "methods"),
    cache_policy_id: policy ? Number(policy) : null,
    fail_mode: fieldValue(routeForm, "fail_mode"),
    rate_limit_rps: numberValue(routeForm, "rate_limit_rps"),
    rate_limit_burst: numberValue(routeForm, "rate_limit_burst"),
    rate_limit_algorithm: fieldValue(routeForm, "rate_limit_algorithm") || null,
    timeout_seconds: numberValue(routeForm, "timeout_seconds"),
    max_request_body_bytes: numberValue(routeForm, "max_request_body_bytes"),
    request_body_timeout_seconds: numberValue(routeForm, "request_body_timeout_seconds"),
    request_body_min_rate: numberValue(routeForm, "request_body_min_rate"),
    max_upstream_connections: numberValue(routeForm, "max_upstream_connections"),
    is_public: fieldValue(routeForm, "is_public"),
    is_active: fieldValue(routeForm, "is_active"),
    hide_ratelimit_headers: fieldValue(routeForm, "hide_ratelimit_headers"),
    allow_private_upstream: fieldValue(routeForm, "allow_private_upstream"),
  };
  if (editingRoute) {
    await api("PATCH", `/admin/routes/${editingRoute.id}`, { body });
    toast(`Saved route ${body.name}`, "ok");
  } else {
    await api("POST", "/admin/routes", { body });
    toast(`Created route ${body.name}`, "ok");
  }
  routeDialog.close();
  load();
});

async function removeRoute(route) {
  const ok = await confirmDialog(`Delete route “${route.name}”? /g/${route.name}/ stops answering on every instance.`, {
    title: "Delete route", confirmLabel: "Delete route",
  });
  if (!ok) return;
  try {
    await api("DELETE", `/admin/routes/${route.id}`);
    toast(`Deleted route ${route.name}`, "ok");
    load();
  } catch (err) {
    reportError(err, "Deleting the route");
  }
}

async function purge(route) {
  const ok = await confirmDialog(`Purge every cached response of “${route.name}” on every instance?`, {
    title: "Purge route cache", confirmLabel: "Purge", danger: false,
  });
  if (!ok) return;
  try {
    const result = await api("POST", "/admin/cache/purge", { body: { route: route.name } });
    const n = result && (result.purged ?? result.deleted ?? result.count);
    toast(typeof n === "number" ? `Purged ${n} entr${n === 1 ? "y" : "ies"} of ${route.name}` : `Purged ${route.name}`, "ok");
  } catch (err) {
    reportError(err, "Purging");
  }
}

// --- cache policies -----------------------------------------------------------------------------
function openPolicy(policy) {
  editingPolicy = policy;
  policyForm.reset();
  if (policy) {
    for (const name of ["name", "mode", "ttl_seconds", "stale_while_revalidate_seconds", "stale_if_error_seconds",
      "max_object_bytes", "shared", "negative_cache", "cache_with_cookies", "keep_seconds", "max_variants",
      "lock_timeout_seconds", "lock_age_seconds"]) setField(policyForm, name, policy[name]);
    setField(policyForm, "vary_headers", policy.vary_headers.join(", "));
    setField(policyForm, "cacheable_methods", policy.cacheable_methods.join(", "));
    setField(policyForm, "cacheable_statuses", policy.cacheable_statuses.join(", "));
  }
  document.getElementById("policy-dialog-title").textContent = policy ? `Edit cache policy ${policy.name}` : "New cache policy";
  document.getElementById("policy-save").textContent = policy ? "Save changes" : "Create policy";
  openDialog(policyDialog);
}

onSubmit(policyForm, async () => {
  const statuses = listValue(policyForm, "cacheable_statuses").map((s) => (/^\d+$/.test(s) ? Number(s) : s));
  const body = {
    name: fieldValue(policyForm, "name"),
    mode: fieldValue(policyForm, "mode"),
    ttl_seconds: numberValue(policyForm, "ttl_seconds") ?? 0,
    stale_while_revalidate_seconds: numberValue(policyForm, "stale_while_revalidate_seconds") ?? 0,
    stale_if_error_seconds: numberValue(policyForm, "stale_if_error_seconds") ?? 0,
    max_object_bytes: numberValue(policyForm, "max_object_bytes") ?? 0,
    vary_headers: listValue(policyForm, "vary_headers"),
    cacheable_methods: listValue(policyForm, "cacheable_methods").map((m) => m.toUpperCase()),
    cacheable_statuses: statuses,
    shared: fieldValue(policyForm, "shared"),
    negative_cache: fieldValue(policyForm, "negative_cache"),
    cache_with_cookies: fieldValue(policyForm, "cache_with_cookies"),
    // Blank: 0 for the keep window (not kept), as for the stale windows; max_variants has no
    // "none", so blank means the default a new policy gets.
    keep_seconds: numberValue(policyForm, "keep_seconds") ?? 0,
    max_variants: numberValue(policyForm, "max_variants") ?? 8,
    // Blank is null: the gateway's CACHE_LOCK_TIMEOUT / CACHE_LOCK_AGE apply.
    lock_timeout_seconds: numberValue(policyForm, "lock_timeout_seconds"),
    lock_age_seconds: numberValue(policyForm, "lock_age_seconds"),
  };
  if (editingPolicy) {
    await api("PATCH", `/admin/policies/${editingPolicy.id}`, { body });
    toast(`Saved cache policy ${body.name}`, "ok");
  } else {
    await api("POST", "/admin/policies", { body });
    toast(`Created cache policy ${body.name}`, "ok");
  }
  policyDialog.close();
  load();
});

async function removePolicy(policy) {
  const routes = policy.route_count ? ` ${policy.route_count} route${policy.route_count === 1 ? "" : "s"} using it will stop caching.` : "";
  const ok = await confirmDialog(`Delete cache policy “${policy.name}”?${routes}`, {
    title: "Delete cache policy", confirmLabel: "Delete policy",
  });
  if (!ok) return;
  try {
    await api("DELETE", `/admin/policies/${policy.id}`);
    toast(`Deleted cache policy ${policy.name}`, "ok");
    load();
  } catch (err) {
    reportError(err, "Deleting the cache policy");
  }
}

document.getElementById("new-route").addEventListener("click", () => openRoute(null));
document.getElementById("new-policy").addEventListener("click", () => openPolicy(null));
load();
