// strata operations: this replica's /metrics (Prometheus text), /readyz, /registry, /replicas and, when the
// CTR routes are mounted, /ctr/status; rates and quantiles come from deltas between two polls.
"use strict";
const $ = (id) => document.getElementById(id);
const POLL_MS = 2000;
let prev = null;
const history = { rate: [], auc: [], floor: [], retrains: [] };

function parse(text) {
  const out = [];
  for (const line of text.split("\n")) {
    if (!line || line[0] === "#") continue;
    const m = line.match(/^([a-zA-Z_:][\w:]*)(\{(.*)\})?\s+(\S+)/);
    if (!m) continue;
    const labels = {};
    for (const kv of (m[3] || "").matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)) labels[kv[1]] = kv[2];
    out.push({ name: m[1], labels, value: Number(m[4]) });
  }
  return out;
}

const sum = (s, name, f = () => true) => s.filter((x) => x.name === name && f(x.labels)).reduce((a, x) => a + x.value, 0);

function quantile(buckets, q) {
  // buckets: [[le, count]] cumulative, sorted by le; linear interpolation inside a bucket
  const total = buckets.length ? buckets[buckets.length - 1][1] : 0;
  if (!total) return NaN;
  const rank = q * total;
  let lo = 0, below = 0;
  for (const [le, c] of buckets) {
    if (c >= rank) {
      if (!isFinite(le)) return lo;
      return lo + (le - lo) * (c === below ? 0 : (rank - below) / (c - below));
    }
    lo = le; below = c;
  }
  return lo;
}

function histDelta(now, before, name, f) {
  const by = new Map();
  for (const x of now) if (x.name === name + "_bucket" && f(x.labels)) by.set(x.labels.le, (by.get(x.labels.le) || 0) + x.value);
  if (before) for (const x of before) if (x.name === name + "_bucket" && f(x.labels)) by.set(x.labels.le, (by.get(x.labels.le) || 0) - x.value);
  return [...by.entries()].map(([le, c]) => [le === "+Inf" ? Infinity : Number(le), c]).sort((a, b) => a[0] - b[0]);
}

function spark(svg, series, lines = []) {
  const all = series.flatMap((s) => s.points).concat(lines.map((l) => l.y)).filter(isFinite);
  const max = Math.max(1e-9, ...all), min = Math.min(0, ...all);
  const X = (i, n) => (n <= 1 ? 0 : (i / (n - 1)) * 600), Y = (v) => 115 - ((v - min) / (max - min || 1)) * 105;
  let html = "";
  for (const l of lines) html += `<line x1="0" x2="600" y1="${Y(l.y)}" y2="${Y(l.y)}" stroke="${l.color}" stroke-dasharray="4 3"/>`;
  for (const s of series) {
    const pts = s.points.map((v, i) => `${X(i, s.points.length)},${Y(v)}`).join(" ");
    html += `<polyline fill="none" stroke="${s.color}" stroke-width="2" points="${pts}"/>`;
    (s.marks || []).forEach((m, i) => { if (m) html += `<circle cx="${X(i, s.points.length)}" cy="${Y(s.points[i])}" r="4" fill="#c0392b"/>`; });
  }
  svg.innerHTML = html;
}

function row(cells) {  // text only: names and reasons come from the API, never parsed as HTML
  const tr = document.createElement("tr");
  for (const c of cells) { const td = document.createElement("td"); td.textContent = String(c); tr.append(td); }
  return tr;
}

async function tick() {
  const t = performance.now() / 1000;
  const [text, ready] = await Promise.all([
    fetch("/metrics").then((r) => r.text()),
    fetch("/readyz").then((r) => r.json()).catch(() => ({})),
  ]);
  const now = parse(text);
  $("model").textContent = ready.model_version || "–";
  $("features").textContent = ready.item_feature_version || "–";
  if (prev) {
    const dt = t - prev.t;
    const reqs = sum(now, "strata_http_requests_total") - sum(prev.s, "strata_http_requests_total");
    const recs = sum(now, "strata_http_requests_total", (l) => l.endpoint === "/recommend") -
                 sum(prev.s, "strata_http_requests_total", (l) => l.endpoint === "/recommend");
    const degr = sum(now, "strata_recommend_degraded_total") - sum(prev.s, "strata_recommend_degraded_total");
    const rate = reqs / dt;
    $("rate").textContent = rate.toFixed(1);
    $("degraded").textContent = recs > 0 ? `${((100 * degr) / recs).toFixed(1)} %` : "0 %";
    history.rate.push(rate); if (history.rate.length > 150) history.rate.shift();
    spark($("rate-chart"), [{ points: history.rate, color: "#2f6fde" }]);
    const rh = histDelta(now, prev.s, "strata_http_request_duration_seconds", (l) => l.endpoint === "/recommend");
    const p50 = quantile(rh, 0.5), p99 = quantile(rh, 0.99);
    $("latency").textContent = isFinite(p50) ? `${(p50 * 1000).toFixed(1)} / ${(p99 * 1000).toFixed(1)} ms` : "no traffic";
    const stages = [...new Set(now.filter((x) => x.name === "strata_recommend_stage_duration_seconds_bucket").map((x) => x.labels.stage))];
    const body = $("stages").tBodies[0];
    body.replaceChildren(...stages.map((st) => {
      const h = histDelta(now, prev.s, "strata_recommend_stage_duration_seconds", (l) => l.stage === st);
      const n = h.length ? h[h.length - 1][1] : 0;
      const f = (q) => (n ? (quantile(h, q) * 1000).toFixed(2) : "–");
      return row([st, f(0.5), f(0.99), n]);
    }));
  }
  const auc = now.find((x) => x.name === "strata_ctr_rolling_auc");
  const floor = now.find((x) => x.name === "strata_ctr_auc_floor");
  const ctr = await fetch("/ctr/status").then((r) => (r.ok ? r.json() : null)).catch(() => null);
  if (!ctr) {
    $("ctr").textContent = "no CTR model served here";
  } else if (auc) {
    const retrains = sum(now, "strata_ctr_retrains_total");
    const last = history.retrains.length ? history.retrains[history.retrains.length - 1] : retrains;
    history.auc.push(auc.value); history.retrains.push(retrains);
    if (history.auc.length > 150) { history.auc.shift(); history.retrains.shift(); }
    $("ctr").textContent = `rolling AUC ${auc.value.toFixed(3)}` + (floor ? ` · floor ${floor.value.toFixed(3)}` : "") +
      ` · retrains ${retrains}` + (retrains > last ? " (new)" : "");
    const marks = history.retrains.map((r, i) => i > 0 && r > history.retrains[i - 1]);
    spark($("auc-chart"), [{ points: history.auc, color: "#1e8e3e", marks }], floor ? [{ y: floor.value, color: "#c0392b" }] : []);
  }
  prev = { t, s: now };
}

async function registry() {
  const reg = await fetch("/registry?last=20").then((r) => r.json());
  $("pointer").textContent = `${reg.dataset}: the registry serves ${reg.serving}; this replica serves ${reg.this_replica}`;
  $("versions").tBodies[0].replaceChildren(...reg.versions.map((v) => {
    const m = v.metrics || {};
    const key = Object.keys(m).find((k) => k.startsWith("holdout_ndcg@10_full")) || Object.keys(m)[0];
    return row([v.version + (v.version === reg.serving ? " ●" : ""), v.kind || "", v.created || "",
                (v.data_range || {}).until || "", key ? `${key} ${Number(m[key]).toFixed(3)}` : ""]);
  }));
  $("decisions").tBodies[0].replaceChildren(...reg.decisions.slice().reverse().map((d) =>
    row([d.kind || "", d.version || "", d.accepted === undefined ? "" : (d.accepted ? "yes" : "no"),
         (d.reasons || []).join("; ")])));
}

async function replicas() {
  const r = await fetch("/replicas").then((x) => x.json());
  const now = Date.now() / 1000;
  $("roster-note").textContent = (r.error ? r.error + " · " : "") +
    `${r.replicas.length} replica(s) serving; this page is served by ${r.self}`;
  $("replicas").tBodies[0].replaceChildren(...r.replicas.map((x) =>
    row([x.replica + (x.replica === r.self ? " (this page)" : ""), x.model_version, x.item_feature_version || "",
         String(x.live_items), x.degraded ? "degraded" : "ok", `${Math.max(0, now - x.ts).toFixed(0)} s ago`])));
}

tick();
registry();
replicas();
setInterval(() => replicas().catch(() => {}), POLL_MS);
setInterval(() => tick().catch(() => {}), POLL_MS);
setInterval(() => registry().catch(() => {}), 10 * POLL_MS);
