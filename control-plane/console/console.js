// The opsgate admin console. Plain JavaScript, no framework: every action is a call to the
// admin API (/admin/v1/*) with the console's HttpOnly session cookie and the
// X-Console-Request header (the CSRF rule). Nothing secret is stored in the browser.
"use strict";

const PLANS = ["trial", "starter", "professional", "enterprise", "vip_founder", "byok"];
const COLORS = ["#2563eb", "#16a34a", "#d97706", "#9333ea", "#dc2626", "#0891b2", "#6b7280"];
const SVG = "http://www.w3.org/2000/svg";

// ---- helpers ------------------------------------------------------------------------------

/** An element: el("td", {class: "num"}, "text", child…). Text is always text, never HTML. */
function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat()) {
    if (c === undefined || c === null) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}

function svg(tag, attrs, ...children) {
  const e = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, String(v));
  for (const c of children) e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return e;
}

/** Credits as the CLI and the gateway's headers print them: three decimals. */
function credits(x) {
  return Number(x || 0).toFixed(3);
}

function when(unix) {
  return unix ? new Date(unix * 1000).toISOString().replace("T", " ").slice(0, 19) + " UTC" : "";
}

function day(unix) {
  return new Date(unix * 1000).toISOString().slice(0, 10);
}

function status(text, isError) {
  const s = document.getElementById("status");
  s.textContent = text || "";
  s.className = isError ? "error" : "";
}

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

/** A call to the control plane, with the console's header; JSON in and out. */
async function api(method, path, body, extra) {
  const headers = { "X-Console-Request": "1", ...(extra || {}) };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const r = await fetch(path, {
    method,
    headers,
    credentials: "same-origin",
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await r.text();
  let json = null;
  try {
    json = text ? JSON.parse(text) : null;
  } catch (_) {
    json = null;
  }
  if (!r.ok) {
    if (r.status === 401 && !path.startsWith("/admin/v1/console/session")) showSignIn("Your session has ended: sign in again.");
    throw new ApiError(r.status, (json && json.error && json.error.message) || `HTTP ${r.status}`);
  }
  return json;
}

/** Runs an action, reporting its outcome in the status line. */
async function act(what, fn) {
  try {
    status(`${what}…`);
    const out = await fn();
    status(`${what}: done.`);
    return out;
  } catch (e) {
    status(`${what}: ${e.message}`, true);
    return undefined;
  }
}

/** A form whose fields are labelled inputs; `submit(values)` runs on submit. */
function form(id, legend, fields, button, submit) {
  const f = el("form", { id, "aria-label": legend });
  for (const fd of fields) {
    const inputId = `${id}-${fd.name}`;
    let input;
    if (fd.options) {
      input = el("select", { id: inputId, name: fd.name },
        fd.options.map((o) => el("option", { value: o, selected: o === fd.value }, o)));
    } else {
      input = el("input", {
        id: inputId, name: fd.name, type: fd.type || "text", required: fd.required !== false,
        value: fd.value, placeholder: fd.placeholder, autocomplete: "off", step: fd.step,
      });
    }
    f.append(el("label", { for: inputId }, fd.label, input));
  }
  f.append(el("button", { type: "submit" }, button));
  f.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const values = Object.fromEntries(new FormData(f).entries());
    if ((await submit(values)) !== false) f.reset();
  });
  return f;
}

/** A table; columns are [label, row => value, {num, sort}]; headers sort when asked. */
function table(caption, columns, rows, opts) {
  const o = opts || {};
  const t = el("table", { id: o.id });
  if (caption) t.append(el("caption", {}, caption));
  const tbody = el("tbody");
  let order = { col: -1, dir: 1 };
  const draw = () => {
    let list = rows.slice();
    if (order.col >= 0) {
      const get = columns[order.col][1];
      list.sort((a, b) => {
        const x = get(a), y = get(b);
        const c = typeof x === "number" && typeof y === "number" ? x - y : String(x).localeCompare(String(y));
        return c * order.dir;
      });
    }
    tbody.replaceChildren(...list.map((r) => el("tr", o.rowAttrs ? o.rowAttrs(r) : {},
      columns.map(([, get, c]) => {
        const v = get(r);
        const shown = c && c.credits ? credits(v) : v;
        return el("td", { class: c && (c.num || c.credits) ? "num" : undefined }, shown instanceof Node ? shown : String(shown ?? ""));
      }))));
    if (!list.length) tbody.append(el("tr", {}, el("td", { colspan: columns.length }, "None.")));
  };
  const head = el("tr", {}, columns.map(([label, , c], i) => {
    const num = c && (c.num || c.credits) ? "num" : undefined;
    if (!o.sortable) return el("th", { scope: "col", class: num }, label);
    const th = el("th", { scope: "col", class: num, "aria-sort": "none" });
    th.append(el("button", {
      type: "button",
      onclick: () => {
        order = { col: i, dir: order.col === i ? -order.dir : (c && (c.num || c.credits) ? -1 : 1) };
        head.querySelectorAll("th").forEach((h) => h.setAttribute("aria-sort", "none"));
        th.setAttribute("aria-sort", order.dir > 0 ? "ascending" : "descending");
        draw();
      },
    }, label));
    return th;
  }));
  t.append(el("thead", {}, head), tbody);
  draw();
  return t;
}

/** A CSV download of rows (the same columns as the table). */
function csvButton(name, columns, rows) {
  return el("button", {
    type: "button",
    onclick: () => {
      const cell = (v) => {
        const s = String(v ?? "");
        return /[",\n]/.test(s) ? `"${s.replace(/"/g, '""')}"` : s;
      };
      const lines = [columns.map(([label]) => cell(label)).join(",")]
        .concat(rows.map((r) => columns.map(([, get, c]) => cell(c && c.credits ? credits(get(r)) : get(r))).join(",")));
      const url = URL.createObjectURL(new Blob([lines.join("\n") + "\n"], { type: "text/csv" }));
      const a = el("a", { href: url, download: `${name}.csv` });
      document.body.append(a);
      a.click();
      a.remove();
      setTimeout(() => URL.revokeObjectURL(url), 1000);
    },
  }, `Export ${name}.csv`);
}

/** A secret shown once, with a copy button. */
function secretBox(id, label, secret, note) {
  const copy = el("button", {
    type: "button",
    onclick: async () => {
      try {
        await navigator.clipboard.writeText(secret);
        status("Copied to the clipboard.");
      } catch (_) {
        const range = document.createRange();
        range.selectNodeContents(code);
        getSelection().removeAllRanges();
        getSelection().addRange(range);
        status("Selected: copy it with Ctrl+C.");
      }
    },
  }, "Copy");
  const code = el("code", { id }, secret);
  return el("div", { class: "secret", role: "region", "aria-label": label }, el("strong", {}, label + ":"), code, copy, el("span", {}, note));
}

// ---- sign-in ------------------------------------------------------------------------------

function showSignIn(message) {
  document.getElementById("nav").hidden = true;
  document.getElementById("page").replaceChildren();
  document.getElementById("sign-in").hidden = false;
  document.getElementById("sign-in-error").textContent = message || "";
  document.getElementById("admin-token").focus();
}

async function signedIn(session) {
  document.getElementById("sign-in").hidden = true;
  document.getElementById("nav").hidden = false;
  document.getElementById("who").textContent = `Signed in as ${session.actor} until ${when(session.expires_at)}`;
  if (!location.hash) location.hash = "#orgs";
  else await route();
}

async function start() {
  document.getElementById("sign-in-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const input = document.getElementById("admin-token");
    const token = input.value;
    input.value = "";
    try {
      // An admin JWT (three dot-separated parts) goes as a bearer, for the gateway's
      // jwt_authn to verify; the admin token goes in the body. Neither is kept.
      const jwt = /^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*$/.test(token);
      const s = jwt
        ? await api("POST", "/admin/v1/console/session", undefined, { Authorization: `Bearer ${token}` })
        : await api("POST", "/admin/v1/console/session", { token });
      status("");
      await signedIn(s);
    } catch (e) {
      showSignIn(`Sign-in refused: ${e.message}`);
    }
  });
  document.getElementById("sign-out").addEventListener("click", async () => {
    await act("Sign out", () => api("DELETE", "/admin/v1/console/session"));
    showSignIn("Signed out.");
  });
  window.addEventListener("hashchange", route);
  try {
    await signedIn(await api("GET", "/admin/v1/console/session"));
  } catch (_) {
    showSignIn("");
  }
}

// ---- pages --------------------------------------------------------------------------------

const PAGES = {
  orgs: ["Organisations", orgsPage],
  users: ["Users", usersPage],
  "service-keys": ["Service keys", serviceKeysPage],
  "provider-keys": ["Provider keys", providerKeysPage],
  usage: ["Usage", usagePage],
  audit: ["Audit log", auditPage],
};

async function route() {
  if (document.getElementById("nav").hidden) return;
  const name = (location.hash || "#orgs").slice(1).split("/")[0];
  const [title, render] = PAGES[name] || PAGES.orgs;
  document.querySelectorAll("nav a").forEach((a) => {
    if (a.getAttribute("href") === `#${name}`) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  });
  document.title = `${title} · opsgate console`;
  const page = el("section", { id: `page-${name}`, "aria-labelledby": "page-title" }, el("h2", { id: "page-title" }, title));
  document.getElementById("page").replaceChildren(page);
  try {
    await render(page);
    page.setAttribute("data-ready", "1");
  } catch (e) {
    page.append(el("p", { class: "error", role: "alert" }, e.message));
  }
  document.getElementById("main").focus();
}

function rerender() {
  return route();
}

async function orgsPage(page) {
  const orgs = (await api("GET", "/admin/v1/orgs")).data;
  page.append(table("Organisations and their credit pools", [
    ["Id", (o) => o.id], ["Name", (o) => o.name], ["Plan", (o) => o.plan],
    ["Total", (o) => o.credits_total, { credits: 1 }], ["Used", (o) => o.credits_used, { credits: 1 }],
    ["Held", (o) => o.credits_held, { credits: 1 }], ["Available", (o) => o.credits_available, { credits: 1 }],
    ["", (o) => el("button", { type: "button", onclick: () => act(`Details of ${o.id}`, () => showOrg(page, o.id)) }, `Details of ${o.id}`)],
  ], orgs, { id: "orgs-table", sortable: true, rowAttrs: (o) => ({ "data-org": o.id }) }));
  page.append(el("h3", {}, "Create an organisation"));
  page.append(form("create-org", "Create an organisation", [
    { name: "id", label: "Id" }, { name: "name", label: "Name" },
    { name: "plan", label: "Plan (tier)", options: PLANS, value: "enterprise" },
    { name: "credits", label: "Credits", type: "number", step: "0.001", required: false },
  ], "Create", async (v) => {
    const body = { id: v.id, name: v.name, plan: v.plan };
    if (v.credits) body.credits = Number(v.credits);
    if (await act(`Create ${v.id}`, () => api("POST", "/admin/v1/orgs", body))) await rerender();
    return false;
  }));
  page.append(el("div", { id: "org-detail" }));
}

async function showOrg(page, id) {
  const box = page.querySelector("#org-detail");
  const [org, users, allocs, usage] = await Promise.all([
    api("GET", `/admin/v1/orgs/${encodeURIComponent(id)}`),
    api("GET", `/admin/v1/users?org=${encodeURIComponent(id)}`),
    api("GET", `/admin/v1/orgs/${encodeURIComponent(id)}/allocations`),
    api("GET", "/admin/v1/usage/daily?days=30&by=user"),
  ]);
  const alloc = Object.fromEntries(allocs.data.map((a) => [a.user_id, a]));
  const spent = {};
  for (const r of usage.data) {
    const s = (spent[r.key] = spent[r.key] || { calls: 0, credits: 0 });
    s.calls += r.calls;
    s.credits += r.credits;
  }
  box.replaceChildren(
    el("h3", { id: "org-detail-title", tabindex: "-1" }, `${org.name} (${org.id})`),
    el("p", {}, `Plan ${org.plan}; ${credits(org.credits_available)} of ${credits(org.credits_total)} credits available (${credits(org.credits_used)} used, ${credits(org.credits_held)} held).`),
    table("Members, their allocations, and their last 30 days", [
      ["User", (u) => u.id], ["Plan", (u) => u.plan], ["Kind", (u) => u.kind], ["Role", (u) => u.role],
      ["Allocated", (u) => (alloc[u.id] ? credits(alloc[u.id].allocated) : "none"), { num: 1 }],
      ["Allocation used", (u) => (alloc[u.id] ? credits(alloc[u.id].used) : ""), { num: 1 }],
      ["Calls (30 days)", (u) => (spent[u.id] || {}).calls || 0, { num: 1 }],
      ["Credits (30 days)", (u) => (spent[u.id] || {}).credits || 0, { credits: 1 }],
    ], users.data, { id: "members-table", sortable: true }),
    form("grant", `Grant credits to ${id}`, [
      { name: "credits", label: `Credits to grant to ${id} (negative removes)`, type: "number", step: "0.001" },
    ], "Grant", async (v) => {
      if (await act(`Grant ${v.credits} credits to ${id}`, () => api("POST", `/admin/v1/orgs/${encodeURIComponent(id)}/grants`, { credits: Number(v.credits) }))) {
        await rerender();
        await showOrg(document.getElementById("page"), id);
      }
      return false;
    }),
  );
  box.querySelector("h3").focus();
}

async function usersPage(page) {
  const [users, keys] = await Promise.all([api("GET", "/admin/v1/users"), api("GET", "/admin/v1/api-keys")]);
  page.append(el("div", { id: "issued" }));
  page.append(table("Users", [
    ["Id", (u) => u.id], ["Organisation", (u) => u.org_id], ["Plan", (u) => u.plan],
    ["Kind", (u) => u.kind], ["Role", (u) => u.role], ["Created", (u) => when(u.created_at)],
    ["", (u) => (u.kind === "user" ? el("button", { type: "button", onclick: () => issueKey(page, u.id) }, `Issue a key for ${u.id}`) : "")],
  ], users.data, { id: "users-table", sortable: true }));
  page.append(el("h3", {}, "Create a user"));
  page.append(form("create-user", "Create a user", [
    { name: "id", label: "Id" }, { name: "org_id", label: "Organisation" },
    { name: "plan", label: "Plan", options: PLANS, value: "professional" },
    { name: "kind", label: "Kind", options: ["user", "service"], value: "user" },
  ], "Create", async (v) => {
    if (await act(`Create ${v.id}`, () => api("POST", "/admin/v1/users", v))) await rerender();
    return false;
  }));
  page.append(el("h3", {}, "Plan and allocation"));
  page.append(form("user-plan", "Change a user's plan", [
    { name: "id", label: "User" }, { name: "plan", label: "Plan", options: PLANS, value: "professional" },
  ], "Set plan", async (v) => {
    if (await act(`Plan of ${v.id}`, () => api("PUT", `/admin/v1/users/${encodeURIComponent(v.id)}/plan`, { plan: v.plan }))) await rerender();
    return false;
  }));
  page.append(form("allocate", "Set a user's allocation", [
    { name: "id", label: "User" }, { name: "credits", label: "Allocation (credits)", type: "number", step: "0.001" },
  ], "Allocate", async (v) => {
    const out = await act(`Allocation of ${v.id}`, () => api("PUT", `/admin/v1/users/${encodeURIComponent(v.id)}/allocation`, { credits: Number(v.credits) }));
    if (out && out.warning) status(`Allocated, with a warning: ${out.warning}`);
  }));
  page.append(table("API keys (uc_): never the keys themselves", [
    ["Id", (k) => k.id], ["User", (k) => k.user_id], ["Prefix", (k) => k.prefix], ["Name", (k) => k.name || ""],
    ["Created", (k) => when(k.created_at)], ["Last used", (k) => when(k.last_used_at)], ["Revoked", (k) => when(k.revoked_at)],
    ["", (k) => (k.revoked_at ? "" : el("button", {
      type: "button", class: "danger",
      onclick: async () => {
        if (!confirm(`Revoke ${k.prefix}… of ${k.user_id}?`)) return;
        if (await act(`Revoke ${k.id}`, () => api("DELETE", `/admin/v1/api-keys/${encodeURIComponent(k.id)}`)) !== undefined) await rerender();
      },
    }, `Revoke ${k.id}`))],
  ], keys.data, { id: "keys-table", sortable: true }));
  page.append(el("h3", {}, "A user's own (BYOK) provider keys"));
  page.append(el("div", { id: "byok-keys" }));
  page.append(form("byok-lookup", "Show a user's own provider keys (masked)", [{ name: "user", label: "User" }], "Show", async (v) => {
    await showByok(page, v.user);
    return false;
  }));
}

/** A user's own keys, masked, each removable (adding or rotating them is the user's act). */
async function showByok(page, user) {
  const out = await act(`BYOK keys of ${user}`, () => api("GET", `/admin/v1/users/${encodeURIComponent(user)}/byok-keys`));
  if (!out) return;
  page.querySelector("#byok-keys").replaceChildren(table(`${user}'s own provider keys`, [
    ["Provider", (k) => k.provider], ["Key", (k) => k.masked_key], ["Description", (k) => k.description || ""],
    ["Stored", (k) => when(k.rotated_at || k.created_at)],
    ["", (k) => el("button", {
      type: "button", class: "danger",
      onclick: async () => {
        if (!confirm(`Remove ${user}'s ${k.provider} key?`)) return;
        if (await act(`Remove ${k.id}`, () => api("DELETE", `/admin/v1/users/${encodeURIComponent(user)}/byok-keys/${encodeURIComponent(k.id)}`)) !== undefined) await showByok(page, user);
      },
    }, `Remove ${k.provider}`)],
  ], out.data, { id: "byok-table", sortable: true }));
}

async function issueKey(page, user) {
  const out = await act(`Issue a key for ${user}`, () => api("POST", `/admin/v1/users/${encodeURIComponent(user)}/api-keys`, { name: "console" }));
  if (!out) return;
  const box = page.querySelector("#issued");
  box.replaceChildren(secretBox("issued-key", `New key for ${user}`, out.api_key, out.note));
  box.querySelector("button").focus();
}

async function serviceKeysPage(page) {
  const keys = await api("GET", "/admin/v1/service-keys");
  page.append(el("div", { id: "minted" }));
  page.append(table("Service keys: names and owners, never the keys", [
    ["Name", (k) => k.name], ["Service user", (k) => k.user_id], ["Created", (k) => when(k.created_at)], ["Revoked", (k) => when(k.revoked_at)],
  ], keys.data, { id: "service-keys-table", sortable: true }));
  page.append(el("h3", {}, "Mint a strong key"));
  page.append(form("mint", "Mint a service key", [{ name: "service", label: "Service name" }], "Mint", async (v) => {
    const out = await act(`Mint a key for ${v.service}`, () => api("POST", "/admin/v1/service-keys/mint", { service: v.service }));
    if (out) page.querySelector("#minted").replaceChildren(secretBox("minted-key", `New service key for ${v.service}`, out.key, out.note));
  }));
  page.append(el("h3", {}, "Bind a key to a service user"));
  page.append(form("bind", "Bind a service key", [
    { name: "key", label: "Service key", type: "password" }, { name: "user_id", label: "Service user" },
  ], "Bind", async (v) => {
    const out = await act(`Bind a key to ${v.user_id}`, () => api("POST", "/admin/v1/service-keys", { key: v.key, user_id: v.user_id }));
    if (out && out.warning) {
      page.querySelector("#minted").replaceChildren(el("p", { class: "warning", role: "alert" }, `Bound, but: ${out.warning}`));
    } else if (out) await rerender();
  }));
  page.append(el("h3", {}, "Revoke a key"));
  page.append(form("revoke-service-key", "Revoke a service key", [{ name: "key", label: "Service key", type: "password" }], "Revoke", async (v) => {
    if (await act("Revoke the service key", () => api("DELETE", "/admin/v1/service-keys", { key: v.key })) !== undefined) await rerender();
  }));
}

async function providerKeysPage(page) {
  const keys = await api("GET", "/admin/v1/provider-keys");
  page.append(table("The platform's provider keys, masked", [
    ["Provider", (k) => k.provider], ["Source", (k) => k.source], ["Key", (k) => k.masked_key || ""],
    ["Description", (k) => k.description || ""], ["Rotated", (k) => when(k.rotated_at || k.created_at)],
    ["", (k) => (k.source === "stored" ? el("button", {
      type: "button", class: "danger",
      onclick: async () => {
        if (!confirm(`Remove the stored ${k.provider} key?`)) return;
        if (await act(`Remove the ${k.provider} key`, () => api("DELETE", `/admin/v1/provider-keys/${encodeURIComponent(k.provider)}`)) !== undefined) await rerender();
      },
    }, `Remove ${k.provider}`) : "")],
  ], keys.data, { id: "provider-keys-table", sortable: true }));
  page.append(el("h3", {}, "Add or rotate a key"));
  page.append(form("set-provider-key", "Add or rotate a provider key", [
    { name: "provider", label: "Provider", options: keys.data.map((k) => k.provider) },
    { name: "api_key", label: "Key", type: "password" }, { name: "description", label: "Description", required: false },
  ], "Store (encrypted)", async (v) => {
    const body = { api_key: v.api_key };
    if (v.description) body.description = v.description;
    if (await act(`Store the ${v.provider} key`, () => api("PUT", `/admin/v1/provider-keys/${encodeURIComponent(v.provider)}`, body))) await rerender();
  }));
  page.append(el("p", {}, "Users' own (BYOK) keys are theirs to add and rotate (/api/v1/llm/byok/keys); the Users page shows a user's, masked, and can remove one."));
}

// ---- usage --------------------------------------------------------------------------------

const usageState = { days: "30", by: "org", filter: "" };

async function usagePage(page) {
  const controls = el("form", { id: "usage-controls", "aria-label": "Period and breakdown" },
    el("label", { for: "usage-days" }, "Period",
      el("select", { id: "usage-days" }, ["7", "30", "90"].map((d) => el("option", { value: d, selected: d === usageState.days }, `${d} days`)))),
    el("label", { for: "usage-by" }, "By",
      el("select", { id: "usage-by" }, ["org", "user", "model", "provider"].map((b) => el("option", { value: b, selected: b === usageState.by }, b)))),
    el("label", { for: "usage-filter" }, "Only those containing",
      el("input", { id: "usage-filter", type: "search", value: usageState.filter, placeholder: "e.g. an organisation id" })));
  const redraw = () => {
    usageState.days = controls.querySelector("#usage-days").value;
    usageState.by = controls.querySelector("#usage-by").value;
    usageState.filter = controls.querySelector("#usage-filter").value.trim();
    rerender();
  };
  controls.addEventListener("change", redraw);
  controls.addEventListener("submit", (e) => {
    e.preventDefault();
    redraw();
  });
  page.append(controls);
  const { days, by, filter } = usageState;
  page.setAttribute("data-days", days);
  page.setAttribute("data-by", by);
  page.setAttribute("data-filter", filter);
  const [series, top, models, orgs] = await Promise.all([
    api("GET", `/admin/v1/usage/daily?days=${days}&by=${by}`),
    api("GET", `/admin/v1/analytics/top-users?days=${days}&limit=1000`),
    api("GET", `/admin/v1/analytics/models?days=${days}&limit=1000`),
    api("GET", `/admin/v1/analytics/orgs?days=${days}`),
  ]);
  const rows = series.data.filter((r) => !filter || r.key.toLowerCase().includes(filter.toLowerCase()));
  page.append(el("h3", {}, `Credits spent per day, by ${by}`));
  page.append(chart("chart-credits", rows, Number(days), (r) => r.credits, "credits", credits));
  page.append(el("h3", {}, `Calls per day, by ${by}`));
  page.append(chart("chart-calls", rows, Number(days), (r) => r.calls, "calls", (x) => String(x)));
  const seriesCols = [["Day", (r) => day(r.day)], [by, (r) => r.key], ["Calls", (r) => r.calls, { num: 1 }],
    ["Tokens", (r) => r.tokens, { num: 1 }], ["Credits", (r) => r.credits, { credits: 1 }]];
  page.append(table(`Daily usage by ${by}`, seriesCols, rows, { id: "daily-table", sortable: true, rowAttrs: (r) => ({ "data-key": r.key }) }));
  page.append(csvButton(`daily-by-${by}-${days}d`, seriesCols, rows));

  const reports = [
    ["top-users", "Top users by calls", top.data, [["User", (r) => r.user_id], ["Calls", (r) => r.total_calls, { num: 1 }],
      ["Tokens", (r) => r.total_tokens, { num: 1 }], ["Credits", (r) => r.total_credits, { credits: 1 }],
      ["Avg response (ms)", (r) => Math.round(r.avg_response_ms), { num: 1 }]]],
    ["models", "Most expensive models", models.data, [["Model", (r) => r.model], ["Calls", (r) => r.calls, { num: 1 }],
      ["Credits", (r) => r.total_credits, { credits: 1 }], ["Credits per call", (r) => r.avg_credits_per_call, { credits: 1 }]]],
    ["orgs", "Usage per organisation", orgs.data, [["Organisation", (r) => r.org_id], ["Name", (r) => r.org_name],
      ["Active users", (r) => r.active_users, { num: 1 }], ["Calls", (r) => r.total_calls, { num: 1 }],
      ["Credits", (r) => r.total_credits, { credits: 1 }]]],
  ];
  for (const [name, title, data, cols] of reports) {
    page.append(el("h3", {}, `${title} (${days} days)`));
    page.append(table(title, cols, data || [], { id: `report-${name}`, sortable: true }));
    page.append(csvButton(`${name}-${days}d`, cols, data || []));
  }
}

/** Stacked SVG bars: one bar per day, one segment per group (the six largest, then "other"). */
function chart(id, rows, days, value, unit, fmt) {
  const today = Math.floor(Date.now() / 86400000) * 86400;
  const start = today - (days - 1) * 86400;
  const totals = {};
  for (const r of rows) totals[r.key] = (totals[r.key] || 0) + value(r);
  const ranked = Object.keys(totals).sort((a, b) => totals[b] - totals[a] || a.localeCompare(b));
  const shown = ranked.slice(0, 6);
  const group = (k) => (shown.includes(k) ? k : "other");
  const groups = shown.concat(ranked.length > 6 ? ["other"] : []);
  const byDay = {};
  for (const r of rows) {
    const d = (byDay[r.day] = byDay[r.day] || {});
    d[group(r.key)] = (d[group(r.key)] || 0) + value(r);
  }
  const max = Math.max(0, ...Object.values(byDay).map((d) => Object.values(d).reduce((a, b) => a + b, 0)));
  const W = 720, H = 220, left = 56, bottom = 24, top = 8;
  const slot = (W - left - 8) / days, barW = Math.max(1, slot * 0.8), plotH = H - bottom - top;
  const total = Object.values(totals).reduce((a, b) => a + b, 0);
  const root = svg("svg", { id, class: "chart", viewBox: `0 0 ${W} ${H}`, width: "100%", role: "img", "aria-labelledby": `${id}-title` },
    svg("title", { id: `${id}-title` }, `${fmt(total)} ${unit} over ${days} days, from ${day(start)} to ${day(today)}`));
  root.append(svg("line", { x1: left, y1: top + plotH, x2: W - 8, y2: top + plotH, stroke: "#9ca3af" }));
  root.append(svg("text", { x: left - 4, y: top + 10, "text-anchor": "end", "font-size": 11 }, fmt(max)));
  root.append(svg("text", { x: left - 4, y: top + plotH, "text-anchor": "end", "font-size": 11 }, "0"));
  const every = days <= 7 ? 1 : days <= 30 ? 5 : 15;
  for (let i = 0; i < days; i++) {
    const d = start + i * 86400, x = left + i * slot + (slot - barW) / 2;
    if (i % every === 0 || i === days - 1) {
      root.append(svg("text", { x: x + barW / 2, y: H - 6, "text-anchor": "middle", "font-size": 10 }, day(d).slice(5)));
    }
    let y = top + plotH;
    for (const [gi, g] of groups.entries()) {
      const v = (byDay[d] || {})[g] || 0;
      if (!v || !max) continue;
      const h = Math.max(1, (v / max) * plotH);
      y -= h;
      root.append(svg("rect", { x, y, width: barW, height: h, fill: COLORS[gi % COLORS.length], "data-key": g, "data-day": day(d), "data-value": v, class: "bar" },
        svg("title", {}, `${day(d)} ${g}: ${fmt(v)} ${unit}`)));
    }
  }
  const legend = el("ul", { class: "legend", "aria-label": "Legend" }, groups.map((g, gi) => el("li", {},
    (() => {
      const s = svg("svg", { width: 12, height: 12, "aria-hidden": "true" });
      s.append(svg("rect", { width: 12, height: 12, fill: COLORS[gi % COLORS.length] }));
      return s;
    })(), ` ${g}: ${fmt(totals[g] ?? ranked.filter((k) => !shown.includes(k)).reduce((a, k) => a + totals[k], 0))} ${unit}`)));
  return el("figure", { "aria-label": `Chart of ${unit} per day` }, root, legend,
    rows.length ? null : el("p", {}, `No usage in the last ${days} days.`));
}

// ---- audit --------------------------------------------------------------------------------

async function auditPage(page) {
  const log = (await api("GET", "/admin/v1/audit?limit=1000")).data;
  const filter = el("input", { id: "audit-filter", type: "search", placeholder: "actor, action, target…" });
  page.append(el("form", { role: "search", "aria-label": "Filter the audit log", onsubmit: (e) => e.preventDefault() },
    el("label", { for: "audit-filter" }, "Filter", filter)));
  const cols = [["When", (a) => when(a.at)], ["Actor", (a) => a.actor], ["Action", (a) => a.action], ["Target", (a) => a.target], ["Detail", (a) => a.detail]];
  const holder = el("div");
  const draw = () => {
    const q = filter.value.trim().toLowerCase();
    const rows = q ? log.filter((a) => [a.actor, a.action, a.target, a.detail].some((s) => String(s).toLowerCase().includes(q))) : log;
    holder.replaceChildren(table(`The audit log, newest first (${rows.length} of ${log.length})`, cols, rows, { id: "audit-table", sortable: true }), csvButton("audit", cols, rows));
  };
  filter.addEventListener("input", draw);
  page.append(holder);
  draw();
}

document.addEventListener("DOMContentLoaded", start);
