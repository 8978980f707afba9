"use strict";
// The pyarmonik admin GUI. One document for every page: the view of the URL draws its filters
// once, then its data from the JSON API, redrawn every second while "live" is on.
// It first asks /api/me who it runs as: with authentication on and no client certificate it
// asks for a token (kept in sessionStorage, sent as a Bearer header), and it offers only the
// actions the user's permissions allow (the server checks them again).

const TASK_STATUSES = ["CREATING", "PENDING", "SUBMITTED", "DISPATCHED", "PROCESSING", "PAUSED",
  "CANCELLING", "COMPLETED", "ERROR", "TIMEOUT", "CANCELLED", "RETRIED"];
const SESSION_STATUSES = ["RUNNING", "PAUSED", "CLOSED", "CANCELLED", "PURGED"];
const RESULT_STATUSES = ["CREATED", "COMPLETED", "ABORTED", "DELETED"];
const QUEUED = ["SUBMITTED", "DISPATCHED", "PROCESSING"];
// Which actions a session status allows (as the server's transitions).
const ACTIONS = {
  pause: ["RUNNING"], resume: ["PAUSED"], close: ["RUNNING", "PAUSED"],
  cancel: ["RUNNING", "PAUSED", "CLOSED"], purge: ["CLOSED", "CANCELLED"],
  delete: ["RUNNING", "PAUSED", "CLOSED", "CANCELLED", "PURGED"],
};
const DESTRUCTIVE = ["cancel", "purge", "delete"];
// The permission of the rpc doing what an action or a page does (control/gui/__init__.py).
const ACTION_PERMISSIONS = {
  pause: "Sessions:PauseSession", resume: "Sessions:ResumeSession", close: "Sessions:CloseSession",
  cancel: "Sessions:CancelSession", purge: "Sessions:PurgeSession", delete: "Sessions:DeleteSession",
};
const PAGE_PERMISSIONS = {
  "/": "Tasks:CountTasksByStatus", "/sessions": "Sessions:ListSessions", "/tasks": "Tasks:ListTasks",
  "/results": "Results:ListResults", "/partitions": "Partitions:ListPartitions", "/agents": "Partitions:ListPartitions",
  "/stream": "Tasks:ListTasks", "/graph": "Tasks:ListTasks", "/time": "Tasks:ListTasks",
};
const DOWNLOAD = "Results:DownloadResultData";
const TOKEN_KEY = "pyarmonik-token";
// A task's path: [label, start field, end field] (the spans of observability/tracing.py).
const STAGES = [["dependencies", "created_at", "submitted_at"], ["queue", "submitted_at", "received_at"],
  ["acquire", "received_at", "acquired_at"], ["prefetch", "acquired_at", "fetched_at"],
  ["wait worker", "fetched_at", "started_at"], ["worker", "started_at", "processed_at"],
  ["post-processing", "processed_at", "ended_at"]];

const $main = document.getElementById("main");
const $live = document.getElementById("live");
const $updated = document.getElementById("updated");
const $flash = document.getElementById("flash");
const $user = document.getElementById("user");
// me: the answer of /api/me; claims: the lowercased `Service:Name` of its permissions.
const state = { generation: 0, timer: 0, data: null, view: null, me: null, claims: new Set(), login: false };

// -- helpers --------------------------------------------------------------------------------

function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value == null || value === false) continue;
    if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
    else el.setAttribute(key, value === true ? "" : value);
  }
  el.append(...children.flat().filter((c) => c != null && c !== false));
  return el;
}

// -- who am I -------------------------------------------------------------------------------

const token = () => sessionStorage.getItem(TOKEN_KEY);

function withToken(headers) {
  const t = token();
  return t ? { ...headers, Authorization: "Bearer " + t } : { ...headers };
}

// Whether the user holds a permission (names compare without case, targets ignored, as on the server).
const can = (permission) => state.claims.has(permission.toLowerCase());

async function api(path, options) {
  const response = await fetch(path, { ...options, headers: withToken((options || {}).headers) });
  const body = await response.json().catch(() => ({ error: response.statusText }));
  if (response.status === 401) {  // token revoked, user removed: log in again
    sessionStorage.removeItem(TOKEN_KEY);
    login(body.error);
  }
  if (!response.ok) throw new Error(body.error || response.statusText);
  return body;
}

// Downloads carry the token too: fetched, then saved from memory.
async function download(event, href, name) {
  if (!token()) return;  // no token: the browser's own download (certificate or no authentication)
  event.preventDefault();
  try {
    const response = await fetch(href, { headers: withToken({}) });
    if (!response.ok) throw new Error((await response.json().catch(() => ({}))).error || response.statusText);
    const url = URL.createObjectURL(await response.blob());
    h("a", { href: url, download: name }).click();
    setTimeout(() => URL.revokeObjectURL(url), 10_000);
  } catch (error) { flash(`download: ${error.message}`); }
}

function showUser() {
  const me = state.me;
  for (const a of document.querySelectorAll("nav a")) a.hidden = !can(PAGE_PERMISSIONS[a.getAttribute("href")]);
  if (!me || !me.authenticated) return $user.replaceChildren();
  $user.replaceChildren(h("span", { id: "username", title: me.roles.length ? "roles: " + me.roles.join(", ") : "" }, me.username),
    me.via === "token" ? h("a", { href: "#", id: "logout", onclick: (e) => { e.preventDefault(); logout(); } }, "log out") : null);
}

function login(error) {
  state.login = true;
  ++state.generation;  // a refresh under way draws nothing now
  clearTimeout(state.timer);
  state.me = null;
  state.claims = new Set();
  showUser();
  document.title = "Log in · pyarmonik";
  const input = h("input", { id: "token", type: "password", autocomplete: "off", placeholder: "token", required: true });
  $main.replaceChildren(h("form", { class: "login", id: "login", onsubmit: (e) => {
    e.preventDefault();
    sessionStorage.setItem(TOKEN_KEY, input.value.trim());
    start();
  } }, h("h1", {}, "Log in"),
  h("p", { class: "muted" }, "This cluster requires authentication. Paste a token (",
    h("code", {}, "pyarmonik auth token USER"), "), or open the page with a client certificate."),
  error ? h("p", { class: "error", id: "login-error" }, error) : null,
  input, h("button", { type: "submit" }, "Log in")));
  flash("");
  input.focus();
}

function logout() {
  sessionStorage.removeItem(TOKEN_KEY);
  login("");
}

async function start() {
  let me = null;
  try {
    const response = await fetch("/api/me", { headers: withToken({}) });
    me = await response.json();
  } catch (error) { flash(`who am I: ${error.message}`); }
  if (me && me.authentication_required && !me.authenticated) {
    const tried = token() != null;  // a rejected token is forgotten; no token is no error
    sessionStorage.removeItem(TOKEN_KEY);
    return login(tried ? me.error : "");
  }
  state.me = me;
  state.login = false;
  // Without an answer, offer everything as before: the server refuses what it must.
  const permissions = me ? me.permissions : Object.values(ACTION_PERMISSIONS).concat(Object.values(PAGE_PERMISSIONS), [DOWNLOAD]);
  state.claims = new Set(permissions.map((p) => p.split(":").slice(0, 2).join(":").toLowerCase()));
  showUser();
  render();
}

function flash(message) {
  $flash.textContent = message;
  $flash.hidden = !message;
}

const params = () => new URL(location.href).searchParams;
const pad = (n, width) => String(n).padStart(width || 2, "0");
const clock = (t) => {
  const d = new Date(t * 1000);
  return `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
};
// Today's times to the millisecond (tasks are short), older ones with their date.
const time = (t) => {
  if (t == null) return "";
  const d = new Date(t * 1000);
  if (d.toDateString() === new Date().toDateString()) return `${clock(t)}.${pad(d.getMilliseconds(), 3)}`;
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${clock(t)}`;
};
const sum = (counts, keys) => (keys || Object.keys(counts)).reduce((n, k) => n + (counts[k] || 0), 0);
const path = (base, id) => base + encodeURIComponent(id);

function duration(s) {
  if (s == null) return "";
  if (s < 1) return (s * 1000).toFixed(s < 0.01 ? 2 : 0) + " ms";
  if (s < 120) return s.toFixed(2) + " s";
  return (s / 60).toFixed(1) + " min";
}

const badge = (status) => h("span", { class: "badge s-" + status.toLowerCase() }, status);
const taskLink = (id) => h("a", { href: path("/tasks/", id), class: "mono" }, id);

function bar(counts) {
  const total = sum(counts);
  return h("div", { class: "bar", title: Object.entries(counts).map(([s, n]) => `${s} ${n}`).join(", ") },
    Object.entries(counts).map(([s, n]) =>
      h("span", { class: "s-" + s.toLowerCase(), style: `width:${(100 * n) / total}%` })));
}

function table(headers, rows, attrs) {
  return h("table", attrs, h("thead", {}, h("tr", {}, headers)),
    h("tbody", {}, rows.length ? rows : h("tr", {}, h("td", { colspan: 99, class: "empty" }, "nothing here"))));
}

// Navigation within the page: filters change the query string and reload the data only.
function setParams(changes) {
  const url = new URL(location.href);
  for (const [key, value] of Object.entries(changes)) {
    if (value === "" || value == null) url.searchParams.delete(key);
    else url.searchParams.set(key, value);
  }
  if (!("page" in changes)) url.searchParams.delete("page");
  history.replaceState(null, "", url);
  refresh();
}

function sortHeader(label, key, fallback) {
  const p = params();
  const current = p.get("sort") || fallback;
  const desc = (p.get("desc") || "1") === "1";
  const arrow = current === key ? (desc ? " ▼" : " ▲") : "";
  return h("th", { class: "sortable", "data-sort": key,
    onclick: () => setParams({ sort: key, desc: current === key && desc ? "0" : "1" }) }, label + arrow);
}

function pager(answer) {
  const pages = Math.max(1, Math.ceil(answer.total / answer.size));
  const go = (page) => () => setParams({ page: String(page) });
  return h("div", { class: "pager" },
    h("button", { disabled: answer.page === 0, onclick: go(0) }, "«"),
    h("button", { disabled: answer.page === 0, onclick: go(answer.page - 1) }, "‹"),
    h("span", {}, `page ${answer.page + 1} of ${pages} · ${answer.total.toLocaleString()} in all`),
    h("button", { disabled: answer.page + 1 >= pages, onclick: go(answer.page + 1) }, "›"),
    h("button", { disabled: answer.page + 1 >= pages, onclick: go(pages - 1) }, "»"));
}

function filters(fields) {
  // fields: [name, label, kind ("text" | array of options)]
  const p = params();
  return h("form", { class: "filters", onsubmit: (e) => e.preventDefault() }, fields.map(([name, label, kind]) => {
    const control = Array.isArray(kind)
      ? h("select", { id: name, name, onchange: (e) => setParams({ [name]: e.target.value }) },
        h("option", { value: "" }, "any"), kind.map((o) => h("option", { value: o, selected: p.get(name) === o }, o)))
      : h("input", { id: name, name, type: "search", value: p.get(name) || "", placeholder: label,
        onchange: (e) => setParams({ [name]: e.target.value.trim() }) });
    return h("label", {}, label, control);
  }));
}

// -- views ----------------------------------------------------------------------------------

const dashboard = {
  title: "Dashboard",
  load: async () => {
    const [d, flow] = await Promise.all([api("/api/dashboard"), api("/api/pictures/flow")]);
    const total = sum(d.totals);
    return h("div", {},
      h("div", { class: "cards" }, h("div", { class: "card" }, h("b", {}, total.toLocaleString()), "tasks"),
        Object.entries(d.totals).map(([s, n]) =>
          h("a", { class: "card s-" + s.toLowerCase(), href: "/tasks?status=" + s }, h("b", {}, n.toLocaleString()), s))),
      h("h2", {}, "Throughput, last 5 minutes (recent sessions)"), chart(d.throughput),
      h("h2", {}, `Recent sessions (${d.session_total} in all)`),
      table([h("th", {}, "Session"), h("th", {}, "Status"), h("th", {}, "Created"), h("th", {}, "Tasks"), h("th", { class: "wide" }, "By status")],
        d.sessions.map((s) => h("tr", { "data-session": s.session_id },
          h("td", {}, h("a", { class: "mono", href: "/tasks?session=" + s.session_id }, s.session_id)),
          h("td", {}, badge(s.status)), h("td", {}, time(s.created_at)),
          h("td", { class: "num" }, sum(s.counts).toLocaleString()), h("td", {}, bar(s.counts))))),
      h("h2", {}, "Partitions"),
      table([h("th", {}, "Partition"), h("th", {}, "Queued"), h("th", {}, "Tasks"), h("th", { class: "wide" }, "By status")],
        d.partitions.map((p) => h("tr", {},
          h("td", {}, h("a", { href: "/tasks?partition=" + encodeURIComponent(p.partition_id) }, p.partition_id)),
          h("td", { class: "num" }, sum(p.counts, QUEUED)), h("td", { class: "num" }, sum(p.counts)), h("td", {}, bar(p.counts))))),
      h("h2", {}, "Throughput and queue depth per partition, last 10 minutes"), flowPicture(flow));
  },
};

function chart(throughput) {
  const buckets = throughput.buckets;
  const width = 900, height = 140, step = width / buckets.length;
  const top = Math.max(1, ...buckets.map((b) => b.completed + b.failed));
  const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  svg.setAttribute("viewBox", `0 0 ${width} ${height + 16}`);
  svg.setAttribute("class", "chart");
  const rect = (x, y, w, hh, cls, title) => {
    const r = document.createElementNS(svg.namespaceURI, "rect");
    Object.entries({ x, y, width: w, height: hh, class: cls }).forEach(([k, v]) => r.setAttribute(k, v));
    const t = document.createElementNS(svg.namespaceURI, "title");
    t.textContent = title;
    r.append(t);
    svg.append(r);
  };
  buckets.forEach((b, i) => {
    const ok = (b.completed / top) * height, bad = (b.failed / top) * height;
    const label = `${clock(b.t)}: ${b.completed} completed, ${b.failed} failed (${(b.completed / throughput.interval).toFixed(1)} tasks/s)`;
    rect(i * step + 1, height - ok, step - 2, ok, "ok", label);
    rect(i * step + 1, height - ok - bad, step - 2, bad, "bad", label);
  });
  const text = document.createElementNS(svg.namespaceURI, "text");
  text.setAttribute("x", 4);
  text.setAttribute("y", 12);
  text.textContent = `max ${(top / throughput.interval).toFixed(1)} tasks/s (${throughput.interval} s bars)`;
  svg.append(text);
  return svg;
}

function sessionActions(s) {
  return Object.entries(ACTIONS).filter(([action]) => can(ACTION_PERMISSIONS[action])).map(([action, allowed]) => h("button", {
    class: DESTRUCTIVE.includes(action) ? "danger" : "", "data-action": action, disabled: !allowed.includes(s.status),
    onclick: async () => {
      if (DESTRUCTIVE.includes(action) && !confirm(`${action} session ${s.session_id}?`)) return;
      try {
        await api(`/api/sessions/${s.session_id}/${action}`, { method: "POST", headers: { "X-Requested-With": "pyarmonik" } });
        flash("");
      } catch (error) { flash(`${action}: ${error.message}`); }
      refresh();
    },
  }, action));
}

const sessions = {
  title: "Sessions",
  top: () => filters([["status", "Status", SESSION_STATUSES], ["q", "Session id contains", "text"]]),
  load: async (p) => {
    const d = await api("/api/sessions?" + new URLSearchParams({ size: 20, ...Object.fromEntries(p) }));
    return h("div", {}, table([sortHeader("Session", "session_id", "created_at"), sortHeader("Status", "status", "created_at"),
      sortHeader("Created", "created_at", "created_at"), h("th", {}, "Tasks"), h("th", { class: "wide" }, "By status"), h("th", {}, "Actions")],
    d.items.map((s) => h("tr", { "data-session": s.session_id },
      h("td", {}, h("a", { class: "mono", href: "/tasks?session=" + s.session_id }, s.session_id)),
      h("td", {}, badge(s.status)), h("td", {}, time(s.created_at)),
      h("td", { class: "num" }, sum(s.counts).toLocaleString()), h("td", {}, bar(s.counts)),
      h("td", { class: "actions" }, sessionActions(s)))), { id: "sessions-table" }), pager(d));
  },
};

const tasks = {
  title: "Tasks",
  top: () => filters([["session", "Session", "text"], ["status", "Status", TASK_STATUSES], ["partition", "Partition", "text"],
    ["q", "Task id contains", "text"], ["error", "Error contains", "text"]]),
  load: async (p) => {
    const d = await api("/api/tasks?" + new URLSearchParams(p));
    const chips = d.counts && h("div", { class: "chips" }, Object.entries(d.counts).map(([s, n]) =>
      h("button", { class: "chip s-" + s.toLowerCase(), onclick: () => { document.getElementById("status").value = s; setParams({ status: s }); } }, `${s} ${n.toLocaleString()}`)));
    const head = [sortHeader("Task", "task_id", "created_at"), sortHeader("Status", "status", "created_at"),
      sortHeader("Partition", "opt_partition_id", "created_at"), h("th", {}, "Try"), sortHeader("Created", "created_at", "created_at"),
      sortHeader("Ended", "ended_at", "created_at"), sortHeader("Total", "creation_to_end_duration", "created_at"),
      sortHeader("Processing", "processing_to_end_duration", "created_at"), sortHeader("Agent", "owner_pod_id", "created_at"), h("th", {}, "Error")];
    return h("div", {}, chips, table(head, d.items.map((t) => h("tr", { "data-task": t.task_id },
      h("td", {}, taskLink(t.task_id)), h("td", {}, badge(t.status)), h("td", {}, t.opt_partition_id),
      h("td", { class: "num" }, t.attempt), h("td", {}, time(t.created_at)), h("td", {}, time(t.ended_at)),
      h("td", { class: "num" }, duration(t.creation_to_end_duration)), h("td", { class: "num" }, duration(t.processing_to_end_duration)),
      h("td", { class: "mono" }, t.owner_pod_id), h("td", { class: "error-cell", title: t.error }, t.error))), { id: "tasks-table" }), pager(d));
  },
};

function timeline(t) {
  const start = t.created_at, end = t.ended_at || Date.now() / 1000, span = Math.max(end - start, 1e-6);
  // A failed attempt has no processed_at: its worker stage lasts until it ended.
  const stamps = { ...t, processed_at: t.processed_at ?? (t.started_at != null ? t.ended_at : null) };
  const segments = STAGES.map(([label, a, b], i) => ({ label, i, from: stamps[a], to: stamps[b] }))
    .filter((s) => s.from != null && s.to != null);
  return h("div", {},
    h("div", { class: "timeline", id: "timeline" }, segments.map((s) => h("span", {
      class: "stage-" + s.i, title: `${s.label}: ${duration(s.to - s.from)}`,
      style: `left:${(100 * (s.from - start)) / span}%;width:${Math.max(0.4, (100 * (s.to - s.from)) / span)}%`,
    }))),
    table([h("th", {}, "Stage"), h("th", {}, "From"), h("th", {}, "Duration")], segments.map((s) => h("tr", {},
      h("td", {}, h("i", { class: "dot stage-" + s.i }), s.label), h("td", {}, time(s.from)), h("td", { class: "num" }, duration(s.to - s.from)))),
    { class: "compact" }));
}

const task = {
  title: "Task",
  load: async (p, id) => {
    const d = await api(path("/api/tasks/", id));
    const t = d.task;
    const field = (label, value) => [h("dt", {}, label), h("dd", {}, value || "—")];
    return h("div", {},
      h("h1", {}, "Task ", h("span", { class: "mono" }, t.task_id), " ", badge(t.status)),
      h("dl", { class: "fields" },
        field("Session", h("a", { class: "mono", href: "/tasks?session=" + t.session_id }, t.session_id)),
        field("Partition", t.opt_partition_id), field("Priority", String(t.opt_priority)),
        field("Attempt", `${t.attempt} of ${t.opt_max_retries + 1}`), field("Max duration", duration(t.opt_max_duration)),
        field("Agent", t.owner_pod_id && h("span", { class: "mono" }, `${t.owner_pod_id} (${t.pod_hostname})`)),
        field("Created by", t.created_by && taskLink(t.created_by)),
        field("Application", [t.opt_application_name, t.opt_application_version].filter(Boolean).join(" ")),
        field("Status message", t.status_message)),
      t.error && [h("h2", {}, "Error"), h("pre", { class: "error", id: "error" }, t.error)],
      h("h2", {}, "Timeline", t.ended_at ? ` (${duration(t.ended_at - t.created_at)} from creation to end)` : ""), timeline(t),
      h("h2", {}, "Retry chain"),
      h("ol", { id: "attempts", class: "chain" }, d.attempts.map((a) => h("li", { class: a.task_id === t.task_id ? "current" : "" },
        taskLink(a.task_id), " ", badge(a.status), a.error ? h("span", { class: "muted" }, " " + a.error.split("\n")[0]) : null))),
      h("h2", {}, "Parents"),
      d.parents.length ? h("ol", { id: "parents", class: "chain" }, d.parents.map((a) => h("li", {}, taskLink(a.task_id), " ", badge(a.status))))
        : h("p", { class: "muted" }, "Submitted by a client."),
      h("h2", {}, `Children (${d.children.total})`),
      d.children.total > d.children.items.length && h("a", { href: "/tasks?created_by=" + encodeURIComponent(t.task_id) }, "all of them"),
      table([h("th", {}, "Task"), h("th", {}, "Status"), h("th", {}, "Created")], d.children.items.map((c) =>
        h("tr", {}, h("td", {}, taskLink(c.task_id)), h("td", {}, badge(c.status)), h("td", {}, time(c.created_at)))), { id: "children" }),
      h("h2", {}, "Neighbourhood"), neighbourhood(d),
      h("h2", {}, "Results"), resultsTable(d.results, true));
  },
};

function resultsTable(items, withRole) {
  return table([h("th", {}, "Name"), h("th", {}, "Result"), withRole ? h("th", {}, "Role") : h("th", {}, "Owner"),
    h("th", {}, "Status"), h("th", {}, "Size"), h("th", {}, "Completed"), h("th", {}, "")],
  items.map((r) => h("tr", { "data-result": r.result_id }, h("td", {}, r.name), h("td", { class: "mono" }, r.result_id),
    h("td", {}, withRole ? r.role : r.owner_task_id && r.owner_task_id !== r.session_id ? taskLink(r.owner_task_id) : ""),
    h("td", {}, badge(r.status)), h("td", { class: "num" }, r.size.toLocaleString()), h("td", {}, time(r.completed_at)),
    h("td", {}, r.status === "COMPLETED" && can(DOWNLOAD) ? downloadLink(r) : ""))),
  { id: "results-table" });
}

function downloadLink(r) {
  const href = path("/api/results/", r.result_id) + "/data", name = r.name || r.result_id;
  return h("a", { href, download: name, onclick: (e) => download(e, href, name) }, "download");
}

const results = {
  title: "Results",
  top: () => filters([["session", "Session", "text"], ["status", "Status", RESULT_STATUSES], ["q", "Name contains", "text"]]),
  load: async (p) => {
    const d = await api("/api/results?" + new URLSearchParams(p));
    return h("div", {}, resultsTable(d.items, false), pager(d));
  },
};

const partitions = {
  title: "Partitions",
  load: async () => {
    const d = await api("/api/partitions");
    return table([h("th", {}, "Partition"), h("th", {}, "Priority"), h("th", {}, "Parents"), h("th", {}, "Pods reserved / max"),
      h("th", {}, "Queued"), h("th", {}, "Tasks"), h("th", { class: "wide" }, "By status")],
    d.items.map((p) => h("tr", {}, h("td", {}, h("a", { href: "/tasks?partition=" + encodeURIComponent(p.partition_id) }, p.partition_id)),
      h("td", { class: "num" }, p.priority), h("td", {}, p.parent_partition_ids.join(", ")), h("td", {}, `${p.pod_reserved} / ${p.pod_max}`),
      h("td", { class: "num" }, sum(p.counts, QUEUED)), h("td", { class: "num" }, sum(p.counts)), h("td", {}, bar(p.counts)))));
  },
};

const agents = {
  title: "Agents",
  load: async () => {
    const d = await api("/api/agents");
    return h("div", {}, h("p", { class: "muted" }, "Agents found as owners of running or recent tasks, asked over HTTP what they do now."),
      table([h("th", {}, "Agent"), h("th", {}, "Host"), h("th", {}, "Partition"), h("th", {}, "State"), h("th", {}, "Holding"),
        h("th", {}, "Completed"), h("th", {}, "Failed"), h("th", {}, "Worker restarts"), h("th", {}, "Mean processing"), h("th", {}, "Last task")],
      d.items.map((a) => h("tr", { "data-agent": a.owner_id }, h("td", { class: "mono" }, a.owner_id), h("td", {}, a.hostname),
        h("td", {}, a.partition_id), h("td", {}, badge(a.state.toUpperCase())), h("td", { class: "held" }, a.held.map((id) => taskLink(id))),
        h("td", { class: "num" }, a.completed), h("td", { class: "num" }, a.failed), h("td", { class: "num" }, a.worker_restarts),
        h("td", { class: "num" }, duration(a.mean_processing)), h("td", {}, time(a.last_task_at)))), { id: "agents-table" }));
  },
};

// -- routing and refresh --------------------------------------------------------------------

function route(pathname) {
  const match = pathname.match(/^\/tasks\/(.+)$/);
  if (match) return [task, decodeURIComponent(match[1])];
  const views = { "/": dashboard, "/sessions": sessions, "/tasks": tasks, "/results": results, "/partitions": partitions, "/agents": agents, ...PICTURES };
  return [views[pathname] || dashboard, null];
}

function render() {
  const [view, id] = route(location.pathname);
  state.view = [view, id];
  state.data = h("div", { id: "data" }, h("p", { class: "muted" }, "loading…"));
  document.title = `${view.title} · pyarmonik`;
  for (const a of document.querySelectorAll("nav a")) a.classList.toggle("active", a.getAttribute("href") === "/" + location.pathname.split("/")[1]);
  $main.replaceChildren(...[view.top ? h("h1", {}, view.title) : null, view.top ? view.top() : null, state.data].filter(Boolean));
  flash("");
  refresh();
}

async function refresh() {
  if (state.login) return;  // logged out: nothing to draw until logged in again
  const generation = ++state.generation;
  clearTimeout(state.timer);
  const [view, id] = state.view;
  try {
    const content = await view.load(params(), id);
    if (generation !== state.generation) return;
    state.data.replaceChildren(content);
    $updated.textContent = new Date().toLocaleTimeString();
  } catch (error) {
    if (generation !== state.generation) return;
    flash(error.message);
  }
  state.timer = setTimeout(tick, 1000);
}

function tick() {
  if ($live.checked && !document.hidden) refresh();
  else state.timer = setTimeout(tick, 1000);
}

document.addEventListener("click", (event) => {
  const a = event.target.closest("a");
  if (!a || event.defaultPrevented || a.hasAttribute("download") || a.origin !== location.origin || event.ctrlKey || event.metaKey || event.shiftKey) return;
  event.preventDefault();
  history.pushState(null, "", a.href);
  render();
});
window.addEventListener("popstate", () => { if (!state.login) render(); });
start();
