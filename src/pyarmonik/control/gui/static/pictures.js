"use strict";
// Pictures of the admin GUI, drawn by hand in SVG from /api/pictures/* (control/gui/pictures.py):
// the task stream, the session graph, where the time goes, the dashboard's flow per partition
// and a task's neighbourhood. Loaded before app.js, whose helpers (h, api, params, clock,
// duration...) they use when called. Each mark carries data-task and the status class s-<status>
// (colours in style.css); hovering shows the task, clicking opens its page.

const SVG_NS = "http://www.w3.org/2000/svg";
const EDGE_KINDS = ["subtask", "dependency", "delegation", "retry"];
const STATUS_ORDER = ["COMPLETED", "ERROR", "TIMEOUT", "RETRIED", "CANCELLED", "PROCESSING", "DISPATCHED",
  "SUBMITTED", "PENDING", "CREATING", "CANCELLING", "PAUSED"];
const WINDOWS = [["60", "last minute"], ["600", "last 10 minutes"], ["3600", "last hour"], ["86400", "last day"]];

function s(tag, attrs, ...children) {
  const el = document.createElementNS(SVG_NS, tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value == null || value === false) continue;
    if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
    else el.setAttribute(key, value);
  }
  for (const child of children.flat()) {
    if (child == null || child === false) continue;
    el.append(typeof child === "string" ? document.createTextNode(child) : child);
  }
  return el;
}

const tip = (text) => s("title", {}, text);
// Ids begin with their creation time (time-ordered GUIDs): the end tells them apart.
const short = (id) => (id.length > 14 ? id.slice(0, 4) + "…" + id.slice(-8) : id);
const cls = (status) => "s-" + status.toLowerCase();

// Open a task's page within the GUI (as app.js's links do).
function openTask(id) {
  history.pushState(null, "", path("/tasks/", id));
  render();
}

// A mark of a task: hover shows `title`, click opens the task.
function taskMark(el, id, title) {
  el.setAttribute("data-task", id);
  el.classList.add("task-mark");
  el.append(tip(title));
  el.addEventListener("click", () => openTask(id));
  return el;
}

function legend(items) {
  return h("div", { class: "legend" }, items.map(([label, className]) =>
    h("span", {}, h("i", { class: "dot " + className }), label)));
}

const statusLegend = (statuses) => legend(statuses.map((st) => [st, cls(st)]));

function scopeFilters(withWindow) {
  const fields = [["session", "Session (empty: " + (withWindow ? "every session" : "the latest") + ")", "text"]];
  const form = filters(fields);
  if (withWindow) {
    const p = params();
    form.append(h("label", {}, "Window (without a session)",
      h("select", { id: "window", onchange: (e) => setParams({ window: e.target.value }) },
        WINDOWS.map(([value, label]) => h("option", { value, selected: (p.get("window") || "600") === value }, label)))));
  }
  return form;
}

function query(p, keys) {
  const q = new URLSearchParams();
  for (const key of keys) if (p.get(key)) q.set(key, p.get(key));
  return q.toString() ? "?" + q : "";
}

function axis(x0, width, since, until, y) {
  const ticks = [];
  for (let i = 0; i <= 6; i++) {
    const t = since + ((until - since) * i) / 6, x = x0 + (width * i) / 6;
    ticks.push(s("line", { x1: x, x2: x, y1: y, y2: y + 4, class: "tick" }),
      s("text", { x, y: y + 16, "text-anchor": i === 0 ? "start" : i === 6 ? "end" : "middle" },
        until - since < 120 ? `${clock(t)}.${pad(Math.floor((t % 1) * 1000), 3)}` : clock(t)));
  }
  return ticks;
}

// -- task stream ----------------------------------------------------------------------------

// [stage, from, to, thin]: an agent prefetches tasks while its worker runs another, so what
// precedes the worker's run is a thin line under the row, the run and its post-processing a bar.
const STREAM_STAGES = [["prefetch", "acquired_at", "fetched_at", true], ["wait", "fetched_at", "started_at", true],
  ["worker", "started_at", "processed_at", false], ["post-processing", "processed_at", "ended_at", false]];

function streamPicture(d) {
  const left = 190, width = 1100, row = d.mode === "bars" ? 22 : 28, top = 8;
  const since = d.since, until = d.until, span = Math.max(until - since, 1e-6);
  const x = (t) => left + (width * (Math.min(Math.max(t, since), until) - since)) / span;
  const rows = new Map(d.agents.map((a, i) => [a.agent, i]));
  const height = top + row * d.agents.length + 24;
  const svg = s("svg", { id: "stream", class: "picture", viewBox: `0 0 ${left + width + 10} ${height}`, width: left + width + 10, height });
  let partition = null;
  d.agents.forEach((a, i) => {
    const y = top + i * row;
    if (a.partition !== partition) {
      partition = a.partition;
      svg.append(s("line", { x1: 0, x2: left + width, y1: y, y2: y, class: "group" }));
    }
    svg.append(s("rect", { x: left, y, width, height: row, class: i % 2 ? "lane odd" : "lane" }),
      s("text", { x: 4, y: y + row / 2 + 4, class: "label" }, `${a.partition || "—"} · ${a.agent}`));
  });
  if (d.mode === "bars") {
    // Failures drawn last, over the completed tasks an agent prefetched meanwhile.
    const rank = (b) => (b.status === "COMPLETED" ? 0 : 1);
    for (const b of [...d.bars].sort((p, q) => rank(p) - rank(q))) {
      const y = top + rows.get(b.agent) * row + 3, end = b.ended_at ?? until;
      const g = s("g", { class: "bar " + cls(b.status), "data-status": b.status });
      const stages = STREAM_STAGES.map(([name, from, to, thin]) => {
        // Running: until now. A worker that crashed or timed out ran until the attempt ended.
        const worker = name === "worker";
        const a = worker ? b.started_at ?? b.fetched_at : b[from];
        const z = b[to] ?? (b.ended_at == null ? until : worker ? b.ended_at : null);
        if (a == null || z == null) return null;
        return s("rect", { x: x(a), y: thin ? y + row - 9 : y, width: Math.max(x(z) - x(a), 0.8), height: thin ? 3 : row - 6,
          class: "stage-" + name.replace("-", "") });
      }).filter(Boolean);
      if (!stages.length) stages.push(s("rect", { x: x(b.acquired_at), y, width: Math.max(x(end) - x(b.acquired_at), 0.8), height: row - 6 }));
      g.append(...stages);
      const times = STREAM_STAGES.filter(([, from, to]) => b[from] != null && b[to] != null)
        .map(([name, from, to]) => `${name} ${duration(b[to] - b[from])}`).join(", ");
      svg.append(taskMark(g, b.id, `${b.id}\n${b.status} on ${b.agent}\n${time(b.acquired_at)} → ${time(b.ended_at)}\n${times}`));
    }
  } else {
    const cell = width / Math.round(span / d.interval);
    const top_ = Math.max(1, ...d.buckets.map((b) => sum(b.counts)));
    for (const b of d.buckets) {
      const y0 = top + rows.get(b.agent) * row + row - 2;
      let y = y0;
      const g = s("g", { class: "bucket", "data-agent": b.agent, "data-k": b.k });
      for (const st of STATUS_ORDER) {
        const n = b.counts[st];
        if (!n) continue;
        const hh = ((row - 4) * n) / top_;
        y -= hh;
        g.append(s("rect", { x: left + b.k * cell + 0.5, y, width: Math.max(cell - 1, 0.8), height: hh, class: cls(st) }));
      }
      g.append(tip(`${b.agent}, ${clock(since + b.k * d.interval)}: ` + Object.entries(b.counts).map(([k, n]) => `${n} ${k}`).join(", ")));
      svg.append(g);
    }
  }
  svg.append(...axis(left, width, since, until, top + row * d.agents.length + 2));
  return svg;
}

const stream = {
  title: "Task stream",
  top: () => scopeFilters(true),
  load: async (p) => {
    const d = await api("/api/pictures/stream" + query(p, ["session", "window"]));
    const counts = {};
    for (const b of d.bars || []) counts[b.status] = (counts[b.status] || 0) + 1;
    const what = d.mode === "bars"
      ? `${d.bars.length.toLocaleString()} task attempts on ${d.agents.length} agents`
      : `more than ${d.limit.toLocaleString()} task attempts: counts per agent and ${duration(d.interval)} bucket, by acquisition time`;
    return h("div", {},
      h("p", { class: "muted", id: "stream-summary" }, what, d.session ? ` · session ${d.session}` : " · every session",
        d.mode === "bars" ? " · one bar per attempt: prefetch and wait for the worker (thin line), worker, post-processing (light)" : ""),
      statusLegend(d.mode === "bars" ? Object.keys(counts) : STATUS_ORDER.slice(0, 5)),
      d.agents.length ? h("div", { class: "scroll" }, streamPicture(d)) : h("p", { class: "muted" }, "No task held by an agent in this window."));
  },
};

// -- session graph --------------------------------------------------------------------------

// Tasks of identical shape (same generation, status and edges to the same tasks, e.g. the
// children of a fan-out) as one node drawn bigger, with their count.
function groupByShape(d) {
  const ends = new Map(d.nodes.map((n) => [n.id, []]));
  for (const e of d.edges) {
    ends.get(e.source)?.push(`>${e.kind}:${e.target}`);
    ends.get(e.target)?.push(`<${e.kind}:${e.source}`);
  }
  const first = new Map(), of = new Map(), count = new Map();
  for (const n of d.nodes) {
    const shape = [n.generation, n.status, ...ends.get(n.id).sort()].join("|");
    if (!first.has(shape)) first.set(shape, n);
    const rep = first.get(shape);
    of.set(n.id, rep.id);
    count.set(rep.id, (count.get(rep.id) || 0) + 1);
  }
  const seen = new Set(), edges = [];
  for (const e of d.edges) {
    const [a, b] = [of.get(e.source), of.get(e.target)], key = `${a} ${b} ${e.kind}`;
    if (!seen.has(key)) { seen.add(key); edges.push({ ...e, source: a, target: b }); }
  }
  return { nodes: [...first.values()].map((n) => ({ ...n, count: count.get(n.id) })), edges };
}

function graphPicture(d, maxDepth) {
  const nodes = d.nodes.filter((n) => maxDepth == null || n.generation <= maxDepth);
  const byGeneration = new Map();
  for (const n of nodes) {
    if (!byGeneration.has(n.generation)) byGeneration.set(n.generation, []);
    byGeneration.get(n.generation).push(n);
  }
  const widest = Math.max(1, ...[...byGeneration.values()].map((l) => l.length));
  const width = Math.max(900, widest * 26 + 80), gap = 120, top = 70, height = top + 30 + gap * Math.max(0, ...byGeneration.keys());
  const where = new Map();
  for (const [g, level] of byGeneration) {
    level.sort((a, b) => a.created_at - b.created_at || (a.id < b.id ? -1 : 1));
    level.forEach((n, i) => where.set(n.id, [40 + ((width - 80) * (i + 0.5)) / level.length, top + g * gap]));
  }
  const svg = s("svg", { id: "graph", class: "picture", viewBox: `0 0 ${width} ${height}`, width, height },
    s("defs", {}, EDGE_KINDS.map((k) => s("marker", { id: "arrow-" + k, viewBox: "0 0 10 10", refX: 16, refY: 5,
      markerWidth: 6, markerHeight: 6, orient: "auto-start-reverse", class: "edge-" + k }, s("path", { d: "M0,0 L10,5 L0,10 z" })))));
  for (const g of byGeneration.keys()) svg.append(s("text", { x: 4, y: top + g * gap - 14, class: "label" }, `generation ${g}`));
  for (const e of d.edges) {
    const a = where.get(e.source), b = where.get(e.target);
    if (!a || !b) continue;
    // Edges within a generation bend over it rather than run along it.
    const bend = a[1] === b[1] ? 24 + Math.min(Math.abs(a[0] - b[0]) / 8, 40) : e.kind === "delegation" || e.kind === "retry" ? 30 : 0;
    const mx = (a[0] + b[0]) / 2, my = (a[1] + b[1]) / 2 - bend;
    svg.append(s("path", { d: `M${a[0]},${a[1]} Q${mx},${my} ${b[0]},${b[1]}`, class: "edge edge-" + e.kind,
      "data-kind": e.kind, "marker-end": `url(#arrow-${e.kind})` }, tip(`${e.kind}: ${e.source} → ${e.target}`)));
  }
  for (const n of nodes) {
    const [cx, cy] = where.get(n.id);
    const many = (n.count || 1) > 1;
    svg.append(taskMark(s("circle", { cx, cy, r: many ? 8 + Math.min(3 * Math.log2(n.count), 12) : 8, class: "node " + cls(n.status),
      "data-status": n.status, "data-count": n.count || 1 }), n.id,
    `${many ? `${n.count} tasks like ` : ""}${n.id}\n${n.status} · generation ${n.generation}${n.agent ? " · " + n.agent : ""}`));
    if (many) svg.append(s("text", { x: cx, y: cy + 28, "text-anchor": "middle", class: "label count" }, `×${n.count}`));
  }
  return svg;
}

function generationsPicture(d) {
  const width = 900, row = 26, left = 120;
  const top = Math.max(1, ...d.generations.map((g) => sum(g.counts)));
  const svg = s("svg", { id: "generations", class: "picture", viewBox: `0 0 ${width + left + 80} ${row * d.generations.length + 10}`,
    width: width + left + 80, height: row * d.generations.length + 10 });
  d.generations.forEach((g, i) => {
    const y = 5 + i * row;
    let x = left;
    svg.append(s("text", { x: 4, y: y + row / 2 + 2, class: "label" }, `generation ${g.generation}`));
    for (const st of STATUS_ORDER) {
      const n = g.counts[st];
      if (!n) continue;
      const w = (width * n) / top;
      svg.append(s("rect", { x, y, width: Math.max(w, 1), height: row - 6, class: "generation " + cls(st), "data-status": st },
        tip(`generation ${g.generation}: ${n.toLocaleString()} ${st}`)));
      x += w;
    }
    svg.append(s("text", { x: x + 6, y: y + row / 2 + 2, class: "label" }, sum(g.counts).toLocaleString()));
  });
  return svg;
}

const graph = {
  title: "Session graph",
  top: () => scopeFilters(false),
  load: async (p) => {
    const d = await api("/api/pictures/graph" + query(p, ["session"]));
    if (!d.session) return h("p", { class: "muted" }, "No session yet.");
    const head = h("p", { class: "muted", id: "graph-summary" }, `session ${d.session} · `);
    if (d.mode === "summary") {
      const total = d.generations.reduce((n, g) => n + sum(g.counts), 0);
      head.append(`${total.toLocaleString()} tasks, more than ${d.limit.toLocaleString()}: counts per generation`);
      return h("div", {}, head, statusLegend(STATUS_ORDER.slice(0, 5)), generationsPicture(d));
    }
    const deepest = Math.max(0, ...d.nodes.map((n) => n.generation));
    const depth = p.get("depth") === null || p.get("depth") === "" ? null : Number(p.get("depth"));
    const grouped = p.get("group") === "1";
    head.append(`${d.nodes.length} tasks, ${d.edges.length} edges`);
    const shown = grouped ? groupByShape(d) : d;
    const depthPicker = h("label", { class: "inline" }, "Show generations up to ",
      h("select", { id: "depth", onchange: (e) => setParams({ depth: e.target.value }) },
        h("option", { value: "" }, "all"),
        Array.from({ length: deepest + 1 }, (_, g) => h("option", { value: String(g), selected: depth === g }, String(g)))));
    const groupPicker = h("label", { class: "inline" },
      h("input", { type: "checkbox", id: "group", checked: grouped, onchange: (e) => setParams({ group: e.target.checked ? "1" : "" }) }),
      " Group tasks of identical shape (same generation, status and edges)");
    return h("div", {}, head, depthPicker, groupPicker,
      statusLegend([...new Set(d.nodes.map((n) => n.status))]),
      legend(EDGE_KINDS.map((k) => [k === "subtask" ? "subtask creation" : k === "delegation" ? "output delegation" : k === "dependency" ? "data dependency" : "retry", "edge-key edge-" + k])),
      h("div", { class: "scroll" }, graphPicture(shown, depth)));
  },
};

// -- where the time goes --------------------------------------------------------------------

function stackedStages(stages, key, total, width) {
  let x = 0;
  const svg = s("svg", { class: "picture stages", id: "stages-" + key, viewBox: `0 0 ${width} 26`, width, height: 26 });
  stages.forEach((st, i) => {
    const v = st[key] || 0, w = total ? (width * v) / total : 0;
    svg.append(s("rect", { x, y: 2, width: w, height: 22, class: "bd-" + i, "data-stage": st.stage }, tip(`${st.stage}: ${key} ${duration(v)}`)));
    x += w;
  });
  return svg;
}

function histogramPicture(hist) {
  const width = 900, height = 160, n = hist.counts.length, step = width / Math.max(n, 1);
  const top = Math.max(1, ...hist.counts);
  const svg = s("svg", { id: "histogram", class: "picture", viewBox: `0 0 ${width} ${height + 20}`, width, height: height + 20 });
  hist.counts.forEach((c, i) => {
    const hh = (height * c) / top, from = hist.low + i * hist.width;
    svg.append(s("rect", { x: i * step + 1, y: height - hh, width: step - 2, height: hh, class: "bin" },
      tip(`${duration(from)} – ${duration(from + hist.width)}: ${c.toLocaleString()} tasks`)));
  });
  svg.append(s("text", { x: 0, y: height + 14 }, duration(hist.low)),
    s("text", { x: width, y: height + 14, "text-anchor": "end" }, duration(hist.low + hist.width * n)));
  return svg;
}

const breakdown = {
  title: "Where the time goes",
  top: () => scopeFilters(false),
  load: async (p) => {
    const d = await api("/api/pictures/breakdown" + query(p, ["session"]));
    if (!d.session) return h("p", { class: "muted" }, "No session yet.");
    const st = d.stats;
    const figure = (label, value, id) => h("div", { class: "card", id }, h("b", {}, value), label);
    const pcts = (values) => Object.entries(values).map(([q, v]) => `${q} ${duration(v)}`).join(" · ");
    const head = h("p", { class: "muted" }, `session ${d.session} · figures of its COMPLETED tasks, as `, h("code", {}, "pyarmonik stats " + d.session));
    if (!st.completed) return h("div", {}, head, h("p", { class: "muted" }, "No completed task yet."));
    const meanTotal = d.stages.reduce((n, x) => n + (x.mean || 0), 0), p99Total = d.stages.reduce((n, x) => n + (x.p99 || 0), 0);
    const width = 900;
    return h("div", {}, head,
      h("div", { class: "cards" }, figure("tasks", st.tasks.toLocaleString(), "stat-tasks"), figure("completed", st.completed.toLocaleString(), "stat-completed"),
        figure("tasks/s", st.throughput == null ? "—" : st.throughput.toFixed(2), "stat-throughput"),
        figure("elapsed", duration(st.elapsed_seconds), "stat-elapsed")),
      h("dl", { class: "fields" }, h("dt", {}, "Latency"), h("dd", { id: "stat-latency" }, pcts(st.latency)),
        h("dt", {}, "Processing"), h("dd", { id: "stat-processing" }, pcts(st.processing))),
      h("h2", {}, "Stages: mean (adds up to the mean latency) and p99"),
      legend(d.stages.map((x, i) => [x.stage, "bd-" + i])),
      h("div", { class: "stacked" }, h("span", {}, "mean"), stackedStages(d.stages, "mean", Math.max(meanTotal, p99Total), width)),
      h("div", { class: "stacked" }, h("span", {}, "p99"), stackedStages(d.stages, "p99", Math.max(meanTotal, p99Total), width)),
      table([h("th", {}, "Stage"), h("th", {}, "From"), h("th", {}, "To"), h("th", {}, "Tasks"), h("th", {}, "Mean"), h("th", {}, "p99")],
        d.stages.map((x, i) => h("tr", { "data-stage": x.stage }, h("td", {}, h("i", { class: "dot bd-" + i }), x.stage),
          h("td", {}, x.from), h("td", {}, x.to), h("td", { class: "num" }, x.count.toLocaleString()),
          h("td", { class: "num" }, duration(x.mean)), h("td", { class: "num" }, duration(x.p99)))), { id: "stages-table", class: "compact" }),
      h("h2", {}, "Latency (creation to end) of the completed tasks"), histogramPicture(d.histogram));
  },
};

// -- dashboard: flow per partition, agents busy ----------------------------------------------

function flowPicture(f) {
  const width = 900, height = 120, n = f.partitions.length ? f.partitions[0].queued.length : 0, step = width / Math.max(n, 1);
  const parts = f.partitions.map((p) => {
    const rate = p.completed.map((c, i) => (c + p.failed[i]) / f.interval);
    const topRate = Math.max(1e-9, ...rate), topQueue = Math.max(1, ...p.queued);
    const svg = s("svg", { class: "picture flow", "data-partition": p.partition, viewBox: `0 0 ${width} ${height + 18}`, width, height: height + 18 });
    p.completed.forEach((c, i) => {
      const ok = (height * c) / f.interval / topRate, bad = (height * p.failed[i]) / f.interval / topRate;
      const label = `${clock(f.since + i * f.interval)}: ${c} completed, ${p.failed[i]} failed, ${p.queued[i]} queued`;
      svg.append(s("rect", { x: i * step + 1, y: height - ok, width: step - 2, height: ok, class: "ok" }, tip(label)),
        s("rect", { x: i * step + 1, y: height - ok - bad, width: step - 2, height: bad, class: "bad" }, tip(label)));
    });
    const points = p.queued.map((q, i) => `${i * step + step / 2},${height - (height * q) / topQueue}`).join(" ");
    svg.append(s("polyline", { points, class: "queue" }),
      s("text", { x: 4, y: 12 }, `max ${topRate.toFixed(1)} tasks/s · queue (line) up to ${topQueue.toLocaleString()}`),
      ...axis(0, width, f.since, f.until, height));
    return h("div", {}, h("h3", {}, "Partition ", p.partition || "—"), svg);
  });
  const agents = table([h("th", {}, "Agent"), h("th", {}, "Partition"), h("th", {}, "Tasks"), h("th", { class: "wide" }, "Busy / idle")],
    f.agents.map((a) => h("tr", { "data-agent": a.agent }, h("td", { class: "mono" }, a.agent), h("td", {}, a.partition),
      h("td", { class: "num" }, a.tasks.toLocaleString()),
      h("td", {}, h("div", { class: "bar busy", title: `busy ${(100 * a.busy).toFixed(0)}%, idle ${(100 * (1 - a.busy)).toFixed(0)}%` },
        h("span", { class: "s-processing", style: `width:${100 * a.busy}%` }), h("span", { class: "idle", style: `width:${100 * (1 - a.busy)}%` }))))),
    { id: "busy-table" });
  return h("div", { id: "flow" }, parts.length ? parts : h("p", { class: "muted" }, "No task in this window."),
    h("h3", {}, "Agents busy (holding a task) / idle"), agents);
}

// -- a task's neighbourhood -----------------------------------------------------------------

function neighbourhood(d) {
  const t = d.task;
  const parent = d.parents.length ? [[d.parents[d.parents.length - 1], "parent"]] : [];
  const producers = d.results.filter((r) => r.role === "dependency" && r.owner_task_id && r.owner_task_id !== t.session_id)
    .map((r) => [{ task_id: r.owner_task_id, status: r.status === "COMPLETED" ? "COMPLETED" : "PENDING" }, "producer of " + (r.name || r.result_id)]);
  const owners = d.results.filter((r) => r.role === "output" && r.owner_task_id && r.owner_task_id !== t.task_id)
    .map((r) => [{ task_id: r.owner_task_id, status: r.status === "COMPLETED" ? "COMPLETED" : "PENDING" }, "owner now of " + (r.name || r.result_id)]);
  const children = d.children.items.slice(0, 12).map((c) => [c, "child"]);
  const lefts = [...parent, ...producers].slice(0, 12), rights = [...children, ...owners].slice(0, 16);
  const rows = Math.max(lefts.length, rights.length, 1), height = rows * 30 + 20, width = 900;
  const svg = s("svg", { id: "neighbourhood", class: "picture", viewBox: `0 0 ${width} ${height}`, width, height });
  const centre = [width / 2, height / 2];
  const side = (items, x, anchor) => items.forEach(([task, role], i) => {
    const y = 20 + ((height - 40) * (i + 0.5)) / items.length;
    const kind = role === "child" || role === "parent" ? "subtask" : role.startsWith("owner") ? "delegation" : "dependency";
    const [a, b] = role === "parent" || kind === "dependency" ? [[x, y], centre] : [centre, [x, y]];
    svg.append(s("path", { d: `M${a[0]},${a[1]} L${b[0]},${b[1]}`, class: "edge edge-" + kind, "marker-end": `url(#n-arrow-${kind})` }),
      taskMark(s("circle", { cx: x, cy: y, r: 7, class: "node " + cls(task.status), "data-role": role.split(" ")[0] }), task.task_id, `${task.task_id}\n${role}`),
      s("text", { x: anchor === "end" ? x - 12 : x + 12, y: y + 4, "text-anchor": anchor, class: "label" }, `${short(task.task_id)} · ${role.split(" ")[0]}`));
  });
  svg.append(s("defs", {}, EDGE_KINDS.map((k) => s("marker", { id: "n-arrow-" + k, viewBox: "0 0 10 10", refX: 16, refY: 5,
    markerWidth: 6, markerHeight: 6, orient: "auto-start-reverse", class: "edge-" + k }, s("path", { d: "M0,0 L10,5 L0,10 z" })))));
  side(lefts, 300, "end");
  side(rights, width - 300, "start");
  svg.append(s("circle", { cx: centre[0], cy: centre[1], r: 10, class: "node current " + cls(t.status), "data-role": "self" }, tip(t.task_id)),
    s("text", { x: centre[0], y: centre[1] - 16, "text-anchor": "middle", class: "label" }, short(t.task_id)));
  return h("div", {}, legend([["subtask creation", "edge-key edge-subtask"], ["data dependency", "edge-key edge-dependency"],
    ["output delegation", "edge-key edge-delegation"]]), svg);
}

// The pages of the pictures, for app.js's router.
const PICTURES = { "/stream": stream, "/graph": graph, "/time": breakdown };
