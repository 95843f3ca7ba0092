// quorate dashboard: plain JavaScript, no dependencies, no requests to other hosts.
// Loads the full state once, then follows the once-a-second SSE stream. The admin token
// lives in one variable of this page (never in storage, cookies or the URL).
"use strict";

const API = "/dashboard/api";
const OUTCOMES = ["allowed", "denied", "shadow", "error", "unmatched"];
const COLORS = { allowed: "#2e8b57", denied: "#d1435b", shadow: "#c48a12", error: "#7b4fc9", unmatched: "#8a95a3" };
const SURFACE_NAMES = { quorate_v1: "quorate.v1", rls: "Envoy RLS", ext_authz: "ext_authz", http_authz: "HTTP authz" };
const HISTORY = 900;

let adminToken = null;      // in memory only
let traffic = null;         // the /traffic view, extended by each tick
let policyVersion = null;
let history = [];

const $ = (id) => document.getElementById(id);

// Builds an element; children are nodes or text (never parsed as HTML).
function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") el.className = v; else el.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

function fill(tbody, rows) { tbody.replaceChildren(...rows); }

async function getJSON(path) {
  const r = await fetch(API + path, { cache: "no-store" });
  if (!r.ok) throw new Error(path + ": " + r.status);
  return r.json();
}

// Calls the admin API with the operator's token; returns {ok, status, body}.
async function admin(method, path, body) {
  const headers = { "content-type": "application/json" };
  if (adminToken) headers.authorization = "Bearer " + adminToken;
  const r = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body), cache: "no-store" });
  let json = null;
  try { json = await r.json(); } catch (_) { /* empty body */ }
  return { ok: r.ok, status: r.status, body: json };
}

const fmtInt = (n) => n === null || n === undefined ? "–" : Number(n).toLocaleString("en-US");
const fmtMs = (v) => v === null || v === undefined ? "–" : (v < 1 ? v.toFixed(2) : v < 10 ? v.toFixed(1) : v.toFixed(0));
function fmtBytes(b) {
  if (b === null || b === undefined) return "–";
  const u = ["B", "KiB", "MiB", "GiB", "TiB"]; let i = 0;
  while (b >= 1024 && i < u.length - 1) { b /= 1024; i++; }
  return (i ? b.toFixed(1) : b) + " " + u[i];
}
function fmtDuration(s) {
  if (s === null || s === undefined) return "–";
  if (s < 60) return s + " s"; if (s < 3600) return Math.floor(s / 60) + " min";
  if (s < 86400) return (s / 3600).toFixed(1) + " h"; return (s / 86400).toFixed(1) + " d";
}
const fmtTime = (ms) => ms ? new Date(ms).toLocaleString() : "–";
function fmtIn(ms) { if (!ms) return "–"; const d = Math.max(0, ms - Date.now()); return d < 1000 ? "now" : "in " + fmtDuration(Math.round(d / 1000)); }

// === charts (canvas, drawn by hand) ===

// series: [{label, color, values: [number|null]}]; x is the bucket index, the last
// bucket being `end` (unix seconds). stacked: areas stacked bottom-up.
function drawChart(canvas, series, opts) {
  const dpr = window.devicePixelRatio || 1;
  // The CSS height is fixed once from the markup's height attribute: resizing the
  // backing store below must not change the layout size.
  if (!canvas.dataset.h) { canvas.dataset.h = canvas.getAttribute("height"); canvas.style.height = canvas.dataset.h + "px"; }
  const w = canvas.clientWidth || 600, hgt = Number(canvas.dataset.h);
  canvas.width = Math.round(w * dpr); canvas.height = Math.round(hgt * dpr);
  const g = canvas.getContext("2d");
  g.setTransform(dpr, 0, 0, dpr, 0, 0);
  g.clearRect(0, 0, w, hgt);
  const left = 48, right = 10, top = 18, bottom = 20;
  const pw = w - left - right, ph = hgt - top - bottom;
  const n = Math.max(1, ...series.map((s) => s.values.length));
  // The x axis spans the data, at least 2 minutes and at most the 15 kept.
  const slots = Math.min(opts.slots || n, Math.max(120, n));
  let max = 0;
  if (opts.stacked) {
    for (let i = 0; i < n; i++) { let sum = 0; for (const s of series) sum += s.values[i] || 0; max = Math.max(max, sum); }
  } else {
    for (const s of series) for (const v of s.values) if (v !== null && v !== undefined) max = Math.max(max, v);
  }
  max = niceMax(max);
  // Grid and y labels.
  g.font = "11px system-ui, sans-serif"; g.fillStyle = "#66707c"; g.strokeStyle = "#e6e9ed"; g.lineWidth = 1;
  for (let k = 0; k <= 4; k++) {
    const y = top + ph - (ph * k) / 4;
    g.beginPath(); g.moveTo(left, y); g.lineTo(left + pw, y); g.stroke();
    const label = (max * k) / 4; g.fillText(label >= 100 ? Math.round(label) : +label.toFixed(2), 4, y + 4);
  }
  // x labels: time ago, at most about 6 ticks.
  const xAt = (i) => left + pw - ((n - 1 - i) / Math.max(1, slots - 1)) * pw;
  const step = [30, 60, 120, 300].find((s) => slots / s <= 6) || 300;
  for (let ago = 0; ago < slots; ago += step) {
    const x = left + pw - (ago / Math.max(1, slots - 1)) * pw;
    const label = ago === 0 ? "now" : ago < 60 ? "-" + ago + " s" : "-" + ago / 60 + " min";
    g.fillText(label, Math.max(left, x - 14), hgt - 5);
  }
  const base = new Array(n).fill(0);
  // A stacked series that is zero throughout would draw its line on top of the others.
  for (const s of series.filter((s) => !opts.stacked || s.values.some((v) => v))) {
    g.strokeStyle = s.color; g.fillStyle = s.color + "88"; g.lineWidth = 1.5;
    g.beginPath(); let started = false;
    for (let i = 0; i < n; i++) {
      const v = s.values[i];
      if (v === null || v === undefined) { started = false; continue; }
      const y0 = opts.stacked ? base[i] + v : v;
      const x = xAt(i), y = top + ph - (y0 / max) * ph;
      if (!started) { g.moveTo(x, y); started = true; } else g.lineTo(x, y);
    }
    g.stroke();
    if (opts.stacked) {
      g.beginPath();
      for (let i = 0; i < n; i++) { const x = xAt(i), y = top + ph - ((base[i] + (s.values[i] || 0)) / max) * ph; i ? g.lineTo(x, y) : g.moveTo(x, y); }
      for (let i = n - 1; i >= 0; i--) { const x = xAt(i), y = top + ph - (base[i] / max) * ph; g.lineTo(x, y); }
      g.closePath(); g.fill();
      for (let i = 0; i < n; i++) base[i] += s.values[i] || 0;
    }
  }
  // Legend.
  let lx = left + 4;
  for (const s of series) {
    g.fillStyle = s.color; g.fillRect(lx, 4, 10, 10); g.fillStyle = "#1d232b";
    g.fillText(s.label, lx + 13, 13); lx += g.measureText(s.label).width + 28;
  }
}

function niceMax(v) {
  if (!(v > 0)) return 1;
  const p = Math.pow(10, Math.floor(Math.log10(v))); const m = v / p;
  return (m <= 1 ? 1 : m <= 2 ? 2 : m <= 5 ? 5 : 10) * p;
}

function sparkline(values, color) {
  const c = h("canvas", { class: "spark", width: 180, height: 22 });
  const g = c.getContext("2d"); const max = Math.max(1, ...values);
  g.strokeStyle = color; g.beginPath();
  values.forEach((v, i) => { const x = (i / Math.max(1, values.length - 1)) * 178 + 1, y = 21 - (v / max) * 20; i ? g.lineTo(x, y) : g.moveTo(x, y); });
  g.stroke(); return c;
}

// === traffic ===

function appendTick(tick) {
  if (!traffic) return;
  if (tick.end <= traffic.end) return;
  const push = (arr, item) => { arr.push(item); if (arr.length > HISTORY) arr.shift(); };
  for (const s of tick.surfaces) {
    const mine = traffic.surfaces.find((x) => x.surface === s.surface);
    if (mine) for (const sec of s.seconds) push(mine.seconds, sec);
  }
  const len = traffic.surfaces[0] ? traffic.surfaces[0].seconds.length : 0;
  for (const l of tick.limits) {
    let mine = traffic.limits.find((x) => x.limit === l.limit);
    if (!mine) { mine = { limit: l.limit, seconds: new Array(Math.max(0, len - 1)).fill([0, 0]) }; traffic.limits.push(mine); }
    for (const sec of l.seconds) push(mine.seconds, sec);
  }
  traffic.end = tick.end;
}

function renderTraffic() {
  if (!traffic) return;
  const pick = $("surface").value;
  const chosen = traffic.surfaces.filter((s) => pick === "all" || s.surface === pick);
  const n = Math.max(0, ...chosen.map((s) => s.seconds.length));
  const series = OUTCOMES.map((o, k) => ({
    label: o, color: COLORS[o],
    values: Array.from({ length: n }, (_, i) => chosen.reduce((sum, s) => sum + ((s.seconds[i] || {}).counts || [])[k] || 0, 0)),
  }));
  const canvas = $("traffic-chart");
  drawChart(canvas, series, { stacked: true, slots: HISTORY });
  // The newest 10 s: shown as a rate, and kept on the canvas for tests and tools.
  const recent = (arr) => arr.slice(-10).reduce((a, b) => a + b, 0);
  const total = series.reduce((sum, s) => sum + recent(s.values), 0);
  const rate = total / 10;
  canvas.dataset.end = traffic.end; canvas.dataset.rate = rate.toFixed(1);
  $("rate").textContent = rate.toFixed(1) + " decisions/s (last 10 s), " + (recent(series[1].values) / 10).toFixed(1) + " denied/s";
  // Latency of the chosen surfaces (the first one with data when "all").
  const lat = [];
  for (const s of chosen) {
    lat.push({ label: (SURFACE_NAMES[s.surface] || s.surface) + " p50", color: "#2f6fdb", values: s.seconds.map((x) => x.p50_ms) });
    lat.push({ label: "p99", color: "#d1435b", values: s.seconds.map((x) => x.p99_ms) });
  }
  const withData = [];
  for (let i = 0; i < lat.length; i += 2) if (lat[i].values.some((v) => v !== null)) withData.push(lat[i], lat[i + 1]);
  drawChart($("latency-chart"), withData.slice(0, 4), { slots: HISTORY });
  // Per-surface table, last 60 s.
  fill($("surfaces").tBodies[0], traffic.surfaces.map((s) => {
    const last = s.seconds.slice(-60);
    const sums = OUTCOMES.map((_, k) => last.reduce((a, x) => a + x.counts[k], 0));
    const p = (key) => { const v = last.map((x) => x[key]).filter((x) => x !== null); return v.length ? fmtMs(v.reduce((a, b) => a + b, 0) / v.length) : "–"; };
    return h("tr", { "data-surface": s.surface }, h("td", {}, SURFACE_NAMES[s.surface] || s.surface), ...sums.map((x) => h("td", {}, fmtInt(x))), h("td", {}, p("p50_ms")), h("td", {}, p("p99_ms")));
  }));
  // Per limit.
  const sel = $("limit"); const names = traffic.limits.map((l) => l.limit);
  if (sel.options.length !== names.length || [...sel.options].some((o, i) => o.value !== names[i])) {
    const keep = sel.value; sel.replaceChildren(...names.map((n) => h("option", { value: n }, n))); if (names.includes(keep)) sel.value = keep;
  }
  const one = traffic.limits.find((l) => l.limit === sel.value);
  drawChart($("limit-chart"), one ? [
    { label: "allowed", color: COLORS.allowed, values: one.seconds.map((x) => x[0]) },
    { label: "denied", color: COLORS.denied, values: one.seconds.map((x) => x[1]) },
  ] : [], { stacked: true, slots: HISTORY });
  fill($("limits").tBodies[0], traffic.limits.map((l) => {
    const last = l.seconds.slice(-60);
    const per10 = []; for (let i = 0; i < l.seconds.length; i += 10) per10.push(l.seconds.slice(i, i + 10).reduce((a, x) => a + x[0] + x[1], 0));
    return h("tr", {}, h("td", { class: "key" }, l.limit), h("td", {}, fmtInt(last.reduce((a, x) => a + x[0], 0))), h("td", {}, fmtInt(last.reduce((a, x) => a + x[1], 0))), h("td", {}, sparkline(per10, "#2f6fdb")));
  }));
}

// === cluster ===

function renderCluster(c) {
  const leader = c.members.find((m) => m.leader);
  const me = c.members.find((m) => m.id === c.this_node);
  const role = (m) => !m.reachable ? "down" : m.leader ? "leader" : m.voter ? (m.info ? m.info.state.toLowerCase() : "follower") : "learner";
  $("summary").textContent = "node " + c.this_node + " · " + (leader ? "leader: node " + leader.id : "no leader") + " · term " + c.term + " · " + c.members.length + " members · policy v" + (policyVersion ?? "–");
  $("cluster-head").textContent = "This page is served by node " + c.this_node + (me && me.info ? " (" + me.info.state + ")" : "") + ". Committed index: " + fmtInt(c.committed) + ".";
  fill($("members").tBodies[0], c.members.map((m) => {
    const i = m.info || {};
    const r = role(m);
    return h("tr", { class: m.reachable ? "" : "down", "data-member": m.id, "data-role": r, "data-reachable": m.reachable ? "yes" : "no" },
      h("td", {}, "node " + m.id + (m.id === c.this_node ? " (this)" : "")),
      h("td", {}, h("span", { class: "badge" + (m.leader ? " leader" : "") }, r === "down" ? (m.voter ? "voter" : "learner") : r)),
      h("td", {}, h("span", { class: "badge " + (m.reachable ? "up" : "down") }, m.reachable ? "up" : "down")),
      h("td", {}, fmtInt(i.term)), h("td", {}, fmtInt(i.last_log_index)), h("td", {}, fmtInt(i.last_applied)),
      h("td", {}, m.leader ? "leader" : (m.lag_entries === null || m.lag_entries === undefined ? "–" : fmtInt(m.lag_entries) + " / " + fmtInt(m.lag_ms))),
      h("td", {}, fmtDuration(i.uptime_seconds)), h("td", {}, i.version || "–"), h("td", {}, fmtBytes(i.data_bytes)),
      h("td", {}, fmtInt(i.counters)), h("td", {}, m.http));
  }));
  fill($("timeline"), c.events.slice().reverse().map((e) => h("li", {}, fmtTime(e.at_ms) + " — " + e.kind + ": " + e.detail)));
}

// === hot keys ===

function renderHotKeys(v) {
  $("hot-window").textContent = "(last " + Math.round(v.window_seconds / 60) + " min, this node)";
  const rows = (list) => list.map((k) => h("tr", {}, h("td", {}, k.limit), h("td", { class: "key", title: k.key }, k.key),
    h("td", {}, fmtInt(k.count) + (k.error ? " (±" + fmtInt(k.error) + ")" : "")), h("td", {}, fmtInt(k.remaining)), h("td", {}, fmtIn(k.reset_at_ms))));
  fill($("hot-hits").tBodies[0], rows(v.by_hits));
  fill($("hot-denials").tBodies[0], rows(v.by_denials));
}

// === Envoy RLQS ===

let rlqsLoading = false;
const fmtRate = (v) => v === null || v === undefined ? "–" : v >= 100 ? fmtInt(Math.round(v)) : v >= 10 ? v.toFixed(1) : v.toFixed(2);
const fmtAgo = (ms) => ms === null || ms === undefined ? "–" : ms < 1000 ? ms + " ms" : (ms / 1000).toFixed(1) + " s";
function fmtLimit(l) {
  if (!l) return "rule no longer in the policy";
  const per = l.window_ms === 1000 ? "/s" : l.window_ms === 60000 ? "/min" : l.window_ms === 3600000 ? "/h" : " per " + fmtAgo(l.window_ms);
  return fmtInt(l.requests) + per + (l.burst !== null && l.burst !== undefined ? " (burst " + fmtInt(l.burst) + ")" : "");
}

async function loadRlqs() {
  if (rlqsLoading) return;
  rlqsLoading = true;
  try { renderRlqs(await getJSON("/rlqs")); } catch (e) { $("rlqs-head").textContent = "RLQS view unavailable: " + e.message; }
  finally { rlqsLoading = false; }
}

function renderRlqs(v) {
  const section = $("rlqs");
  section.dataset.configured = v.configured ? "yes" : "no";
  section.dataset.buckets = v.buckets_total;
  const s = v.settings, c = v.churn;
  const who = v.served_by === v.this_node ? "this node" : "node " + v.served_by + ", the leader";
  $("rlqs-head").textContent = !v.configured ? "" :
    "Shares made by " + who + " · " + fmtInt(v.streams) + " streams · " + fmtInt(v.buckets_total) + " buckets · " +
    fmtInt(v.subscriptions_total) + " subscriptions · interval " + fmtAgo(s.interval_ms) + ", TTL " + fmtAgo(s.ttl_ms) +
    ", reserve " + Math.round(s.reserve * 100) + " % · last " + c.window_seconds + " s: " + fmtInt(c.rounds) + " rounds, " +
    fmtInt(c.fresh_grants) + " changed shares, " + fmtInt(c.extended_grants) + " extended";
  let empty = null;
  if (!v.configured) {
    empty = "RLQS is not configured: the live policy has no rlqs: domains. Add an rlqs: section and point Envoy's rate_limit_quota filter at this cluster (README, \"Envoy RLQS\").";
  } else if (v.error) {
    empty = v.error;
  } else if (!v.buckets.length) {
    empty = "No proxies connected: no RLQS stream reports a bucket of " + (v.domains.length === 1 ? "domain " : "domains ") + v.domains.join(", ") + ".";
  }
  $("rlqs-empty").hidden = empty === null;
  $("rlqs-empty").textContent = empty || "";
  fill($("rlqs-buckets"), v.buckets.map(renderBucket));
  $("rlqs-more").textContent = v.buckets_left_out ? "… and " + fmtInt(v.buckets_left_out) + " more buckets (the busiest " + v.buckets.length + " are shown)." : "";
}

// A bar of `width` (CSS length). Set through the CSSOM: the page's CSP forbids inline
// style attributes.
function bar(cls, width, side) {
  const el = h("span", { class: cls });
  el.style.width = width; if (side) el.style[side] = "0";
  return el;
}

// Stream ids use all 64 bits (unique across nodes and restarts); consecutive streams
// differ in the low digits, which are enough to tell a bucket's proxies apart.
const shortId = (id) => "…" + BigInt(id).toString(16).slice(-6);

function renderBucket(b) {
  const id = b.bucket_id.map((e) => e.key + "=" + e.value + (e.matched === "wildcard" ? " (pattern)" : "")).join(", ");
  const pct = (x) => b.limit_per_second > 0 ? Math.min(100, (100 * x) / b.limit_per_second) : 0;
  const reserve = b.limit_per_second - b.assignable_per_second;
  const maxShare = Math.max(1e-9, ...b.proxies.map((p) => p.share_per_second));
  const fact = (label, value) => h("span", {}, label + " ", h("b", {}, value));
  return h("div", { class: "bucket", "data-domain": b.domain, "data-rule": b.rule, "data-assigned": b.assigned_per_second, "data-limit": b.limit_per_second },
    h("h3", {}, b.domain + " / " + b.rule + " ", h("span", { class: "id" }, "{" + id + "}")),
    h("div", { class: "facts" },
      fact("limit", fmtLimit(b.limit)),
      fact("assigned", fmtRate(b.assigned_per_second) + "/s of " + fmtRate(b.assignable_per_second) + "/s"),
      fact("unassigned", fmtRate(b.unassigned_per_second) + "/s"),
      fact("reserve", fmtInt(b.reserve_tokens_free) + " of " + fmtInt(b.reserve_tokens) + " tokens free"),
      fact("demand", fmtRate(b.demand_per_second) + "/s"),
      fact("changed shares, last min", fmtInt(b.fresh_grants_last_minute)),
      b.held_by_gone_streams_per_second > 0 ? fact("held by ended streams", fmtRate(b.held_by_gone_streams_per_second) + "/s") : null),
    h("div", { class: "meter", title: "assigned and reserve, as a share of the limit" },
      bar("assigned", pct(b.assigned_per_second).toFixed(1) + "%", "left"),
      bar("reserve", pct(reserve).toFixed(1) + "%", "right")),
    h("table", { class: "proxies" },
      h("thead", {}, h("tr", {}, ["Proxy (stream)", "Peer address", "Share /s", "Tokens", "Expires in", "Held for", "Demand /s", "Allowed /s", "Denied /s", "Last report"].map((t) => h("th", {}, t)))),
      h("tbody", {}, b.proxies.map((p) => h("tr", { "data-proxy": p.id, "data-share": p.share_per_second },
        h("td", { class: "key", title: "stream " + p.stream + ", subscription " + p.id }, shortId(p.stream)),
        h("td", {}, p.peer || "–"),
        h("td", {}, bar("share", Math.round(60 * p.share_per_second / maxShare) + "px"), fmtRate(p.share_per_second)),
        h("td", {}, p.max_tokens ?? "–"), h("td", {}, fmtAgo(p.expires_in_ms)), h("td", {}, fmtAgo(p.share_age_ms)),
        h("td", {}, fmtRate(p.demand_per_second)), h("td", {}, fmtRate(p.allowed_per_second)), h("td", {}, fmtRate(p.denied_per_second)),
        h("td", {}, fmtAgo(p.last_report_ms_ago) + " ago"))))),
    b.proxies_left_out ? h("div", { class: "muted" }, "… and " + fmtInt(b.proxies_left_out) + " more proxies") : null);
}

// === policy ===

function treeNode(key, value, depth) {
  if (value !== null && typeof value === "object") {
    const entries = Array.isArray(value) ? value.map((v, i) => [i, v]) : Object.entries(value);
    const label = Array.isArray(value) ? key + " [" + value.length + "]" : key;
    const d = h("details", depth < 2 ? { open: true } : {}, h("summary", {}, h("span", { class: "k" }, label)));
    for (const [k, v] of entries) d.append(treeNode(typeof k === "number" ? "#" + (k + 1) + (v && v.name ? " " + v.name : "") : k, v, depth + 1));
    return d;
  }
  return h("div", { class: "leaf" }, h("span", { class: "k" }, key), ": ", h("span", { class: "v" }, JSON.stringify(value)));
}

async function loadPolicy() {
  const [p, hist] = await Promise.all([getJSON("/policy"), getJSON("/policy/history")]);
  policyVersion = p.version; history = hist;
  $("policy-head").replaceChildren(
    h("div", { id: "policy-version", "data-version": p.version ?? "" }, h("b", {}, "Live version " + (p.version ?? "none")),
      " — applied " + fmtTime(p.applied_at_ms) + " by " + (p.how || "–") + (p.rollback_of ? " (rollback to version " + p.rollback_of + ")" : "") + ", format " + (p.format || "–") +
      ", " + p.limits.length + " limit(s), domains: " + (p.domains.join(", ") || "none")));
  $("policy-rejected").replaceChildren(p.last_rejected ? h("div", { class: "rejected" }, "Last rejected reload: " + p.last_rejected.file +
    (p.last_rejected.line ? " line " + p.last_rejected.line : "") + " at " + fmtTime(p.last_rejected.at_ms) + " — " + p.last_rejected.reason) : "");
  const tree = $("policy-tree");
  if (p.tree && typeof p.tree === "object") {
    tree.replaceChildren(...Object.entries(p.tree).map(([k, v]) => treeNode(k, v, 0)));
  } else tree.replaceChildren(h("pre", {}, p.source || "(no policy)"));
  fill($("policy-limits").tBodies[0], p.limits.map((l) => h("tr", {}, h("td", { class: "key" }, l.name), h("td", {}, l.algorithm), h("td", {}, fmtInt(l.requests)), h("td", {}, l.window), h("td", {}, l.consistency), h("td", {}, l.shadow_mode ? "yes" : ""))));
  const rows = hist.slice().reverse();
  fill($("history").tBodies[0], rows.map((v, i) => h("tr", { "data-version": v.version },
    h("td", {}, "v" + v.version + (v.version === p.version ? " (live)" : "")), h("td", {}, fmtTime(v.applied_at_ms)),
    h("td", {}, v.rollback_of ? "rollback to v" + v.rollback_of : v.how), h("td", {}, v.format),
    h("td", {}, h("input", { type: "radio", name: "diff-from", value: v.version, checked: i === 1 })),
    h("td", {}, h("input", { type: "radio", name: "diff-to", value: v.version, checked: i === 0 })))));
  const sel = $("rollback-version");
  sel.replaceChildren(...rows.filter((v) => v.version !== p.version).map((v) => h("option", { value: v.version }, "v" + v.version + " — " + fmtTime(v.applied_at_ms))));
  renderSummaryVersion();
}

function renderSummaryVersion() {
  const s = $("summary"); s.textContent = s.textContent.replace(/policy v\S*/, "policy v" + (policyVersion ?? "–"));
}

function renderDiff(target, lines, truncated) {
  target.replaceChildren(...lines.map((l) => h("span", { class: l.op === "+" ? "add" : l.op === "-" ? "del" : "" }, (l.op === "=" ? "  " : l.op + " ") + l.text + "\n")));
  if (truncated) target.append("… (diff truncated)\n");
  if (!lines.some((l) => l.op !== "=")) target.prepend("(no differences)\n");
}

async function showDiff() {
  const from = document.querySelector("input[name=diff-from]:checked"), to = document.querySelector("input[name=diff-to]:checked");
  if (!from || !to) { $("diff").textContent = "Pick two versions."; return; }
  const d = await getJSON("/policy/diff?from=" + from.value + "&to=" + to.value);
  renderDiff($("diff"), d.lines, d.truncated);
}

// === explain ===

function explainKind() { return document.querySelector("input[name=explain-kind]:checked").value; }

async function runExplain() {
  const kind = explainKind();
  let body;
  try {
    if (kind === "http") {
      const f = $("explain-http").elements;
      const headers = f.headers.value.split("\n").map((l) => l.trim()).filter(Boolean).map((l) => { const i = l.indexOf(":"); return i < 0 ? [l, ""] : [l.slice(0, i).trim(), l.slice(i + 1).trim()]; });
      body = { kind, method: f.method.value, host: f.host.value, path: f.path.value, headers };
    } else if (kind === "rls") {
      body = { kind, sample: JSON.parse($("explain-rls").elements.sample.value) };
    } else {
      const f = $("explain-quorate").elements;
      body = { kind, limit: f.limit.value, key: f.key.value, cost: Number(f.cost.value) };
    }
  } catch (e) { $("explain-result").textContent = "Invalid input: " + e.message; return; }
  const r = await fetch(API + "/explain", { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(body) });
  const v = await r.json();
  const out = $("explain-result");
  if (!r.ok) { out.replaceChildren(h("div", { class: "verdict denied" }, "Error: " + v.error)); return; }
  let verdict;
  if (v.kind === "http") {
    const a = v.answer;
    verdict = (a.allowed ? "ALLOWED (200)" : "DENIED (" + a.status + " " + a.kind + ": " + a.reason + ")") + " — route: " + (a.route || "none") + ", identity: " + (a.identity || "none") + (a.consumer ? ", consumer: " + a.consumer : "");
    out.replaceChildren(h("div", { class: "verdict " + (a.allowed ? "allowed" : "denied") }, verdict), JSON.stringify(a, null, 2));
  } else if (v.kind === "rls") {
    const rep = v.report;
    out.replaceChildren(h("div", { class: "verdict " + (rep.overall_code === "OK" ? "allowed" : "denied") }, rep.overall_code + " — " + rep.descriptors.map((d) => "#" + (d.index + 1) + " " + d.outcome + (d.limits.length ? " (" + d.limits.map((l) => l.name + ": " + (l.allowed ? "ok" : "over") + ", " + l.remaining + " left").join("; ") + ")" : "")).join(" · ")), JSON.stringify(rep, null, 2));
  } else {
    out.replaceChildren(h("div", { class: "verdict " + (v.allowed ? "allowed" : "denied") }, (v.allowed ? "ALLOWED" : "DENIED") + " — " + v.limit + ": " + v.remaining + " of " + v.requests + " per " + v.window + " remaining, resets in " + v.reset_after_ms + " ms"), JSON.stringify(v, null, 2));
  }
}

// === operations ===

function confirmDialog(title, bodyNode) {
  return new Promise((resolve) => {
    const d = $("confirm");
    $("confirm-title").textContent = title;
    const b = $("confirm-body"); b.replaceChildren(); if (bodyNode) b.append(bodyNode);
    d.returnValue = "cancel";
    d.addEventListener("close", () => resolve(d.returnValue === "ok"), { once: true });
    d.showModal();
  });
}

function showResult(what, r) {
  const out = $("op-result");
  out.dataset.status = r.status;
  out.textContent = what + ": " + (r.ok ? "done" : "FAILED") + " (HTTP " + r.status + ")\n" + JSON.stringify(r.body, null, 2);
}

async function unlock(ev) {
  ev.preventDefault();
  const token = $("token").value;
  if (!token) return;
  adminToken = token; $("token").value = "";
  const r = await admin("GET", "/admin/v1/cluster/status");
  if (!r.ok) { adminToken = null; setOps(false); $("token-state").textContent = "token refused (" + r.status + ") — read-only"; return; }
  setOps(true);
}

function setOps(on) {
  $("ops").hidden = !on; $("ops-locked").hidden = on;
  $("token-forget").hidden = !on; $("token").hidden = on; $("token-use").hidden = on;
  if (on) $("token-state").textContent = "operations unlocked";
  else if (!adminToken) $("token-state").textContent = "read-only";
}

async function rollback() {
  const v = Number($("rollback-version").value);
  if (!v) return;
  const d = await getJSON("/policy/diff?from=" + policyVersion + "&to=" + v);
  const pre = h("div"); renderDiff(pre, d.lines, d.truncated);
  if (!(await confirmDialog("Roll back from v" + policyVersion + " to the rules of v" + v + "?", pre))) return;
  const r = await admin("POST", "/admin/v1/policy/rollback", { version: v });
  showResult("rollback to v" + v, r);
  await loadPolicy();
}

let dryRunOk = false;
async function dryRun() {
  dryRunOk = false; $("apply-go").disabled = true;
  const samples = [];
  for (const line of $("apply-samples").value.split("\n").map((l) => l.trim()).filter(Boolean)) {
    try { samples.push(JSON.parse(line)); } catch (e) { $("dry-run-result").textContent = "Sample is not JSON: " + line; return; }
  }
  const r = await admin("POST", API + "/policy/dry-run", { format: $("apply-format").value, source: $("apply-source").value, samples });
  const out = $("dry-run-result");
  if (!r.ok) { out.textContent = "Dry run failed (HTTP " + r.status + "): " + (r.body && r.body.error); return; }
  const v = r.body; const diff = h("pre", { class: "diff" }); renderDiff(diff, v.diff, v.truncated);
  if (!v.valid) {
    out.replaceChildren(h("div", { class: "verdict denied" }, "Invalid: " + (v.error.line ? "line " + v.error.line + ": " : "") + v.error.reason), diff);
    return;
  }
  const reqs = v.requests.map((rep) => "request " + rep.request + ": " + rep.overall_code + " — " + rep.descriptors.map((d) => d.outcome).join(", ")).join("\n");
  out.replaceChildren(h("div", { class: "verdict allowed" }, "Valid: " + v.limits + " limit(s), " + v.routes + " route(s), domains " + (v.domains.join(", ") || "none")), reqs ? h("pre", {}, reqs) : "", h("div", {}, "Changes against the live policy:"), diff);
  dryRunOk = true; $("apply-go").disabled = false;
}

async function applyPolicy() {
  if (!dryRunOk) return;
  if (!(await confirmDialog("Apply this policy to the whole cluster?", h("span", {}, "It becomes a new version; the previous one stays in the history for a rollback.")))) return;
  const r = await admin("PUT", "/admin/v1/policy", { format: $("apply-format").value, source: $("apply-source").value });
  showResult("apply policy", r);
  await loadPolicy();
}

function memberOp(formId, what, path, build) {
  $(formId).addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const f = ev.target.elements; const body = build(f);
    if (!(await confirmDialog(what + " " + JSON.stringify(body) + "?"))) return;
    showResult(what, await admin("POST", path, body));
  });
}

async function snapshot() {
  if (!(await confirmDialog("Build a snapshot on this node now?"))) return;
  showResult("snapshot", await admin("POST", "/admin/v1/cluster/snapshot"));
}

// === live updates ===

function connect() {
  const es = new EventSource(API + "/events");
  es.addEventListener("open", async () => {
    $("live").className = "live on"; $("live").textContent = "live";
    // Fill any gap left while disconnected.
    try { traffic = await getJSON("/traffic"); renderTraffic(); } catch (_) { /* next tick */ }
  });
  es.addEventListener("error", () => { $("live").className = "live off"; $("live").textContent = "reconnecting…"; });
  es.addEventListener("tick", (ev) => {
    const t = JSON.parse(ev.data);
    appendTick(t.traffic); renderTraffic();
    renderCluster(t.cluster); renderHotKeys(t.hotkeys);
    loadRlqs();
    if (t.policy_version !== policyVersion) loadPolicy().catch(() => {});
  });
}

async function start() {
  setOps(false);
  $("token-form").addEventListener("submit", unlock);
  $("token-forget").addEventListener("click", () => { adminToken = null; setOps(false); });
  $("surface").addEventListener("change", renderTraffic);
  $("limit").addEventListener("change", renderTraffic);
  $("diff-show").addEventListener("click", showDiff);
  $("explain-run").addEventListener("click", () => runExplain().catch((e) => { $("explain-result").textContent = String(e); }));
  for (const r of document.querySelectorAll("input[name=explain-kind]")) r.addEventListener("change", () => {
    for (const k of ["http", "rls", "quorate"]) $("explain-" + k).hidden = k !== explainKind();
  });
  $("rollback-preview").addEventListener("click", rollback);
  $("apply-dry-run").addEventListener("click", dryRun);
  $("apply-source").addEventListener("input", () => { dryRunOk = false; $("apply-go").disabled = true; });
  $("apply-go").addEventListener("click", applyPolicy);
  memberOp("add-learner", "add learner", "/admin/v1/cluster/learners", (f) => ({ id: Number(f.id.value), grpc: f.grpc.value, http: f.http.value, peer: f.peer.value }));
  memberOp("promote", "promote", "/admin/v1/cluster/promote", (f) => ({ id: Number(f.id.value) }));
  memberOp("remove", "remove", "/admin/v1/cluster/remove", (f) => ({ id: Number(f.id.value) }));
  $("snapshot").addEventListener("click", snapshot);
  window.addEventListener("resize", renderTraffic);
  const [c, t, hk] = await Promise.all([getJSON("/cluster"), getJSON("/traffic"), getJSON("/hotkeys?top=10")]);
  traffic = t;
  await loadPolicy();
  renderCluster(c); renderTraffic(); renderHotKeys(hk);
  loadRlqs();
  const firstLimit = ($("policy-limits").tBodies[0].rows[0] || {}).cells;
  if (firstLimit) $("explain-quorate").elements.limit.value = firstLimit[0].textContent;
  connect();
}

start().catch((e) => { $("summary").textContent = "Failed to load: " + e.message; });
