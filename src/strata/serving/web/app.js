// strata explorer: calls the public HTTP API only (GET /catalog, /recommend, /items/{id},
// POST /events, POST /items). No framework, no build step.
"use strict";
const $ = (id) => document.getElementById(id);
const info = new Map(); // item id -> GET /items/{id} body
let clickType = "click";
const PLACEHOLDER = "data:image/svg+xml;utf8," + encodeURIComponent(
  '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 2 3"><rect width="2" height="3" fill="#e3e7ee"/>' +
  '<text x="1" y="1.6" font-size=".35" text-anchor="middle" fill="#98a2b3">no image</text></svg>');

async function json(url, opts) {
  const r = await fetch(url, opts);
  const body = await r.json().catch(() => ({}));
  if (!r.ok) {
    const d = body.detail;
    const why = Array.isArray(d) ? d.map((x) => `${x.field || "request"}: ${x.msg}`).join("; ") : (d || r.statusText);
    throw new Error(`${r.status} ${why}`);
  }
  return body;
}

// The served dataset's ids: integers, or the owner's own (text) for a dataset added with `data add`.
let ownIds = false;
let sampleUsers = [1, 2];
const asId = (v) => (ownIds ? String(v).trim() : Number(v));

async function init() {
  const cat = await json("/catalog");
  ownIds = cat.own_ids;
  if (cat.users.length) { sampleUsers = cat.users.slice(0, 2); if (ownIds) $("user").value = cat.users[0]; }
  showCatalog(cat);
  for (const d of cat.devices) $("device").add(new Option(d, d, d === "unknown", d === "unknown"));
  clickType = cat.event_types.includes("click") ? "click" : cat.event_types[0];
  for (const g of cat.genres) {
    const l = document.createElement("label");
    l.innerHTML = `<input type="checkbox" value="${esc(g)}"> ${esc(g)}`;
    $("new-genres").append(l);
  }
  $("token").value = sessionStorage.getItem("strata-token") || "";
  await recommend();
}

// The header's catalogue sizes; refreshed after an add, or it would still say "(0 live)".
function showCatalog(cat) {
  $("version").textContent = `${cat.dataset} · ${cat.version} · ${cat.items} items (${cat.live_items} live)`;
}

function params() {
  const p = new URLSearchParams({ k: $("k").value, device: $("device").value || "unknown" });
  if (!$("anon").checked) p.set("user_id", $("user").value);
  if ($("when").value) p.set("ts", String(Math.floor(Date.parse($("when").value) / 1000)));
  return p;
}

async function itemInfo(id) {
  if (!info.has(id)) info.set(id, json(`/items/${id}`).catch(() => ({})));
  return info.get(id);
}

let asked = 0; // the latest request wins: a slower earlier answer never overwrites a newer one

async function recommend() {
  const t0 = performance.now();
  const mine = ++asked;
  const rec = await json(`/recommend?${params()}`);
  if (mine !== asked) return performance.now() - t0;
  const c = rec.candidates || {};
  $("summary").textContent = `model ${rec.model_version} · user features: ${rec.user_features} · ` +
    `retrieved ${c.retrieved} → after filter (ranked) ${c.after_filter} → fresh slots ${c.fresh} · ` +
    `server ${rec.timings_ms.total.toFixed(1)} ms`;
  $("summary").dataset.fresh = String(c.fresh);
  $("degraded").textContent = rec.degraded ? `degraded: ${rec.degraded_reason}` : "";
  $("stages").textContent = Object.entries(rec.timings_ms).filter(([k]) => k !== "total")
    .map(([k, v]) => `${k} ${v.toFixed(2)} ms`).join(" · ");
  const cards = await Promise.all(rec.items.map(async (it, i) => {
    const d = await itemInfo(it.item_id);
    const card = document.createElement("div");
    card.className = "card";
    card.dataset.item = String(it.item_id);
    const img = d.image ? `/items/${encodeURIComponent(it.item_id)}/image` : PLACEHOLDER;
    const sc = it.scores;
    card.innerHTML = `<span class="badge">${i + 1}</span>${d.live ? '<span class="badge fresh">new</span>' : ""}` +
      `<img alt="" src="${img}"><div class="t"><b title="${esc(d.title || "")}">${esc(d.title || "item " + it.item_id)}</b>` +
      `<span class="muted">${esc((d.genres || []).join(", "))}${d.year ? " · " + esc(d.year) : ""}</span><br>` +
      `score ${it.score.toFixed(3)} · retr ${sc.retrieval.toFixed(3)}${sc.ranker !== undefined ? " · rank " + sc.ranker.toFixed(3) : ""}</div>`;
    card.querySelector("img").onerror = (e) => { e.target.src = PLACEHOLDER; };
    card.onclick = () => click(it.item_id, d.title);
    return card;
  }));
  if (mine !== asked) return performance.now() - t0;
  $("items").replaceChildren(...cards);
  $("items").dataset.loaded = String(Date.now());
  return performance.now() - t0;
}

function esc(s) { return String(s).replace(/[&<>"]/g, (ch) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;" })[ch]); }

async function click(itemId, title) {
  if ($("anon").checked) { $("status").textContent = "anonymous visitors send no events"; return; }
  const t0 = performance.now();
  const ev = { event_id: crypto.randomUUID(), user_id: asId($("user").value), item_id: itemId,
               type: clickType, ts: Math.floor(Date.now() / 1000) };
  try {
    await json("/events", { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(ev) });
    await recommend();
    $("status").textContent = `${clickType} on ${title || itemId} sent; list refreshed in ${(performance.now() - t0).toFixed(0)} ms`;
  } catch (e) { $("status").textContent = `event failed: ${e.message}`; }
}

function b64(file) {
  return new Promise((ok, fail) => {
    const r = new FileReader();
    r.onload = () => ok(String(r.result).split(",", 2)[1]);
    r.onerror = () => fail(r.error);
    r.readAsDataURL(file);
  });
}

async function addItem(ev) {
  ev.preventDefault();
  const token = $("token").value;
  sessionStorage.setItem("strata-token", token);
  const id = asId($("new-id").value);
  const body = { item_id: id, title: $("new-title").value,
                 genres: [...document.querySelectorAll("#new-genres input:checked")].map((x) => x.value) };
  if ($("new-year").value) body.year = Number($("new-year").value);
  const file = $("new-image").files[0];
  if (file) body.image_base64 = await b64(file);
  try {
    const r = await json("/items", { method: "POST", body: JSON.stringify(body),
      headers: { "content-type": "application/json", authorization: `Bearer ${token}` } });
    info.delete(id);
    const where = [];
    const who = [["anonymous", ""], ...sampleUsers.map((u) => [`user ${u}`, `&user_id=${encodeURIComponent(u)}`])];
    for (const [label, q] of who) {
      const rec = await json(`/recommend?k=20${q}`);
      const pos = rec.items.findIndex((x) => x.item_id === id);
      where.push(`${label}: ${pos < 0 ? "not in the top 20" : "position " + (pos + 1)}`);
    }
    $("added").textContent = `added ${body.title} (${r.ms} ms) · ${where.join(" · ")}`;
    json("/catalog").then(showCatalog).catch(() => {});
    await recommend();
  } catch (e) { $("added").textContent = `not added: ${e.message}`; }
}

$("ask").onsubmit = (e) => { e.preventDefault(); recommend().catch((x) => { $("summary").textContent = x.message; }); };
$("add").onsubmit = addItem;
init().catch((e) => { $("summary").textContent = `cannot reach the API: ${e.message}`; });
