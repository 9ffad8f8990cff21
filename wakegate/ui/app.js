// The live view: the whole state from /v1/live/events (a `snapshot` event, then an
// `update` a second), rendered with DOM nodes and inline SVG. Every text goes in
// through textContent; nothing is fetched from anywhere but this origin.
"use strict";

const WINDOW_S = 180;
const KEEP_S = 600;
const SVG = "http://www.w3.org/2000/svg";
const EVENT_COLORS = {
  "panic": "#d62728", "panic-end": "#ff9896", "scale-to-zero": "#7f7f7f", "wake": "#2ca02c",
};
const EVENT_LABELS = { "panic": "panic", "panic-end": "calm", "scale-to-zero": "zero", "wake": "wake" };

const state = { doc: null, series: {}, fields: [] };

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null) continue;
    if (k === "class") node.className = v;
    else if (k.startsWith("data-")) node.setAttribute(k, String(v));
    else node[k] = v;
  }
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function svg(tag, attrs, text) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
  if (text !== undefined) node.textContent = text;
  return node;
}

function age(stamp, now) {
  if (!stamp) return "-";
  let s = Math.max(0, Math.floor(now - Date.parse(stamp) / 1000));
  for (const [unit, size] of [["d", 86400], ["h", 3600], ["m", 60]]) {
    if (s >= size) return Math.floor(s / size) + unit;
  }
  return s + "s";
}

function seconds(v) {
  if (v === null || v === undefined) return "-";
  return v < 1 ? Math.round(v * 1000) + " ms" : v.toFixed(2) + " s";
}

function badge(status, text) {
  const cls = status === "True" || status === true ? "ok" : status === "False" || status === false ? "bad" : "unknown";
  return el("span", { class: "badge " + cls }, text);
}

// --- the chart ------------------------------------------------------------------------

function line(points, x, y, pick, attrs, step) {
  let d = "";
  let prev = null;
  for (const p of points) {
    const v = pick(p);
    if (v === null || v === undefined) { prev = null; continue; }
    const px = x(p.t).toFixed(1), py = y(v).toFixed(1);
    if (prev === null) d += `M${px},${py}`;
    else d += step ? `H${px}V${py}` : `L${px},${py}`;
    prev = p;
  }
  return d ? svg("path", { d, fill: "none", ...attrs }) : null;
}

function chart(key, now) {
  const series = state.series[key] || { points: [], events: [] };
  const W = 900, H = 190, L = 34, R = 48, top = 14, mid = 100, bottom = 170;
  const x0 = now - WINDOW_S;
  const x = (t) => L + ((t - x0) / WINDOW_S) * (W - L - R);
  const points = series.points.filter((p) => p.t >= x0);
  const root = svg("svg", { viewBox: `0 0 ${W} ${H}`, class: "chart", role: "img",
    "aria-label": `load and pods of ${key} over the last ${WINDOW_S / 60} minutes` });
  const maxC = Math.max(1, ...points.map((p) => p.concurrency || 0));
  const maxR = Math.max(1, ...points.map((p) => p.rps || 0));
  const maxP = Math.max(1, ...points.map((p) => Math.max(p.desired || 0, p.ready || 0)));
  const yC = (v) => mid - 6 - (v / maxC) * (mid - 6 - top);
  const yR = (v) => mid - 6 - (v / maxR) * (mid - 6 - top);
  const yP = (v) => bottom - (v / maxP) * (bottom - mid - 8);
  root.append(svg("rect", { x: L, y: top, width: W - L - R, height: bottom - top, class: "frame" }));
  root.append(svg("line", { x1: L, x2: W - R, y1: mid, y2: mid, class: "grid" }));
  root.append(svg("text", { x: L - 4, y: top + 8, class: "axis c", "text-anchor": "end" }, maxC.toFixed(maxC < 10 ? 1 : 0)));
  root.append(svg("text", { x: W - R + 4, y: top + 8, class: "axis r" }, maxR.toFixed(0) + "/s"));
  root.append(svg("text", { x: L - 4, y: mid - 3, class: "axis c", "text-anchor": "end" }, "0"));
  root.append(svg("text", { x: L - 4, y: mid + 16, class: "axis p", "text-anchor": "end" }, String(maxP)));
  root.append(svg("text", { x: L - 4, y: bottom, class: "axis p", "text-anchor": "end" }, "0"));
  for (let ago = 30; ago < WINDOW_S; ago += 30) {
    const t = now - ago;
    root.append(svg("line", { x1: x(t), x2: x(t), y1: top, y2: bottom, class: "grid" }));
    root.append(svg("text", { x: x(t), y: bottom + 14, class: "axis", "text-anchor": "middle" }, `-${ago}s`));
  }
  // Labels of events close together are stacked, so each stays readable.
  let lastX = -Infinity, row = 0;
  for (const e of series.events.filter((e) => e.t >= x0)) {
    const color = EVENT_COLORS[e.kind] || "#333";
    const ex = x(e.t);
    row = ex - lastX < 34 ? row + 1 : 0;
    lastX = ex;
    const mark = svg("line", { x1: ex, x2: ex, y1: top, y2: bottom, stroke: color,
      "stroke-width": 1.5, "stroke-dasharray": "3 2", "data-event": e.kind });
    mark.append(svg("title", {}, e.text));
    root.append(mark);
    root.append(svg("text", { x: ex + 2, y: top + 9 + 10 * (row % 4), fill: color, class: "event" },
      EVENT_LABELS[e.kind] || e.kind));
  }
  const parts = [
    line(points, x, yR, (p) => p.rps, { class: "rps" }),
    line(points, x, yC, (p) => p.concurrency, { class: "concurrency" }),
    line(points, x, yP, (p) => p.desired, { class: "desired" }, true),
    line(points, x, yP, (p) => p.ready, { class: "ready" }, true),
  ];
  for (const part of parts) if (part) root.append(part);
  const legend = el("div", { class: "legend" },
    el("span", { class: "key concurrency" }, "concurrency"),
    el("span", { class: "key rps" }, "requests/s"),
    el("span", { class: "key desired" }, "desired pods"),
    el("span", { class: "key ready" }, "ready pods"));
  return el("div", { class: "chart-box" }, root, legend);
}

// --- the tables -----------------------------------------------------------------------

function trafficBar(service) {
  const bar = el("div", { class: "traffic" });
  for (const t of service.traffic || []) {
    if (!t.percent) continue;
    const label = `${t.tag ? t.tag + ": " : ""}${t.revisionName} ${t.percent}%`;
    const part = el("span", { class: "split", title: label }, label);
    part.style.flexGrow = String(t.percent);
    bar.append(part);
  }
  if (!bar.childElementCount) bar.append(el("span", { class: "split none" }, "no traffic assigned"));
  return bar;
}

function coldStarts(c) {
  if (!c || (!c.count && !c.waited)) return "none";
  return `${c.count} (latest ${seconds(c.latestSeconds)}, p50 ${seconds(c.p50Seconds)}, p95 ${seconds(c.p95Seconds)})`;
}

function revisionBlock(rev, pods, now) {
  const a = rev.autoscaler || {};
  const key = `${rev.namespace}/${rev.name}`;
  const head = el("table", { class: "revision-table" },
    el("thead", {}, el("tr", {}, ...["revision", "ready", "traffic", "pods desired / ready", "mode", "cold starts", "last decision"].map((h) => el("th", {}, h)))),
    el("tbody", {}, el("tr", { "data-revision": rev.name, "data-ready-pods": rev.readyPods, "data-desired": a.desired },
      el("td", { class: "name" }, rev.name),
      el("td", {}, badge(rev.ready, rev.ready ? "Ready" : rev.failed ? "Failed" : "Deploying")),
      el("td", {}, rev.percent ? rev.percent + "%" : "-"),
      el("td", { class: "pods-count" }, `${a.desired ?? "-"} / ${rev.readyPods}`),
      el("td", {}, el("span", { class: "mode " + (a.mode || "") }, a.mode || "-"), a.panicking ? el("span", { class: "badge bad" }, "panic") : null),
      el("td", { class: "cold" }, coldStarts(rev.coldStarts)),
      el("td", { class: "decision" }, a.reason || "-"))));
  const own = pods.filter((p) => p.revision === rev.name && p.namespace === rev.namespace);
  const podRows = own.map((p) => el("tr", { "data-pod": p.name, "data-ready": p.ready },
    el("td", { class: "name" }, p.name),
    el("td", {}, badge(p.ready, p.ready ? "Ready" : p.phase)),
    el("td", {}, p.restarts),
    el("td", {}, age(p.startedAt, now)),
    el("td", {}, p.port ? `${p.address}:${p.port}` : "-"),
    el("td", { class: "reason" }, p.reason || "")));
  const podTable = own.length
    ? el("table", { class: "pods" },
      el("thead", {}, el("tr", {}, ...["pod", "state", "restarts", "age", "address", ""].map((h) => el("th", {}, h)))),
      el("tbody", {}, ...podRows))
    : el("p", { class: "empty" }, "no pods (scaled to zero)");
  return el("div", { class: "revision", "data-revision-key": key }, head, chart(key, now), podTable);
}

function render() {
  const doc = state.doc;
  if (!doc) return;
  const now = doc.time;
  document.getElementById("snapshot").textContent = doc.snapshot || "-";
  document.getElementById("clock").textContent = new Date(now * 1000).toLocaleTimeString();
  const box = document.getElementById("services");
  const cards = doc.services.map((s) => {
    const revs = doc.revisions.filter((r) => r.namespace === s.namespace && r.service === s.name);
    revs.sort((a, b) => b.generation - a.generation);
    return el("article", { class: "service", "data-service": `${s.namespace}/${s.name}` },
      el("div", { class: "service-head" },
        el("h3", {}, s.name), el("span", { class: "ns" }, s.namespace),
        badge(s.ready, s.ready === "True" ? "Ready" : s.reason || s.ready),
        /^https?:\/\//.test(s.url) ? el("a", { class: "url", href: s.url, rel: "noreferrer" }, s.url) : el("span", { class: "url" }, s.url)),
      s.ready !== "True" && s.message ? el("p", { class: "message" }, s.message) : null,
      trafficBar(s),
      ...revs.map((r) => revisionBlock(r, doc.pods, now)));
  });
  box.replaceChildren(...(cards.length ? cards : [el("p", { class: "empty" }, "No services yet.")]));
  const rows = doc.gateways.map((g) => el("tr", { "data-gateway": g.node },
    el("td", { class: "name" }, g.node),
    el("td", {}, g.mode),
    el("td", {}, badge(g.connected, g.connected ? "connected" : "gone")),
    el("td", {}, badge(g.inSync, g.inSync ? "current" : "behind")),
    el("td", {}, Object.entries(g.acked).map(([t, v]) => `${t} ${v.slice(0, 12)}`).join(", ") || "-"),
    el("td", { class: "reason" }, g.lastNack ? `${g.lastNack.type} ${g.lastNack.version}: ${g.lastNack.message}` : "none")));
  document.querySelector("#gateways tbody").replaceChildren(...rows);
}

// --- the stream -----------------------------------------------------------------------

function points(fields, rows) {
  return rows.map((row) => Object.fromEntries(fields.map((f, i) => [f, row[i]])));
}

function absorb(doc, full) {
  const fields = doc.pointFields;
  if (full) state.series = {};
  for (const [key, s] of Object.entries(doc.series)) {
    const kept = state.series[key] || { points: [], events: [] };
    kept.points.push(...points(fields, s.points));
    kept.events.push(...s.events.map(([t, kind, text]) => ({ t, kind, text })));
    const horizon = doc.time - KEEP_S;
    kept.points = kept.points.filter((p) => p.t >= horizon);
    kept.events = kept.events.filter((e) => e.t >= horizon);
    state.series[key] = kept;
  }
  for (const key of Object.keys(state.series)) if (!(key in doc.series)) delete state.series[key];
  state.doc = doc;
  render();
}

function connect() {
  const status = document.getElementById("connection");
  const source = new EventSource("/v1/live/events");
  source.addEventListener("snapshot", (e) => absorb(JSON.parse(e.data), true));
  source.addEventListener("update", (e) => absorb(JSON.parse(e.data), false));
  source.onopen = () => { status.textContent = "live"; status.className = "badge ok"; };
  source.onerror = () => { status.textContent = "reconnecting"; status.className = "badge bad"; };
}

connect();
