"use strict";
const $ = (id) => document.getElementById(id);
let current = null, answered = 0, skipped = 0, timer = null, busy = false;
function showBudget(b, pending) {
  const fmt = (x) => (x === null ? "?" : +x.toFixed(4));
  $("budget").textContent = `spent ${fmt(b.spent)} of ${fmt(b.total)} ${b.unit} · remaining ${fmt(b.remaining)}`
    + (pending === undefined ? "" : ` · pending ${pending}`);
  $("spentbar").style.width = `${b.total > 0 ? Math.min(100, 100 * b.spent / b.total) : 0}%`;
}
async function call(url, opts) {
  const r = await fetch(url, Object.assign({credentials: "same-origin", cache: "no-store"}, opts || {}));
  let body = null;
  try { body = await r.json(); } catch (e) { body = {error: `HTTP ${r.status}`}; }
  if (r.status === 401) { location.href = "/"; }
  return [r.status, body];
}
async function next() {
  clearTimeout(timer);
  const [status, d] = await call("/api/next");
  const cands = $("candidates");
  cands.replaceChildren();
  $("skip").disabled = true;
  if (status !== 200) {
    current = null; $("item").dataset.queryId = "";
    $("prompt").textContent = d.error || `HTTP ${status}`;
    timer = setTimeout(next, 3000);
    return;
  }
  showBudget(d.budget, d.pending);
  if (d.item === null) {
    current = null; $("item").dataset.queryId = ""; $("where").textContent = "";
    $("prompt").textContent = d.reason === "session finished" ? "The session is finished. Thank you!"
      : `Nothing to answer right now (${d.reason}); checking again shortly…`;
    timer = setTimeout(next, 1000);
    return;
  }
  current = d;
  $("item").dataset.queryId = String(d.query_id);
  const lat = d.latency === null ? "∞" : d.latency.toFixed(3);
  $("where").textContent = `item ${d.query_id} · round ${d.round} · latency ${lat}`;
  $("prompt").textContent = d.prompt;
  d.candidates.forEach((c, i) => {
    const b = document.createElement("button");
    b.type = "button"; b.dataset.label = String(i); b.textContent = `${i}) ${c}`;
    b.addEventListener("click", () => answer(i));
    cands.appendChild(b);
  });
  $("skip").disabled = false;
}
async function skip() {
  if (!current || busy) return;
  busy = true;
  try {
    const [status, d] = await call("/api/skip", {method: "POST", headers: {"Content-Type": "application/json"},
      body: JSON.stringify({query_id: current.query_id})});
    if (status === 200) {
      skipped += 1; $("skipped").textContent = String(skipped);
      $("message").textContent = d.unlabelled ? `item ${d.skipped} skipped by everyone: it goes unlabelled.`
        : `item ${d.skipped} skipped: it goes to the other annotators.`;
    } else {
      $("message").textContent = d.error || `HTTP ${status}`;
    }
    await next();
  } finally { busy = false; }
}
$("skip").addEventListener("click", skip);
async function answer(label) {
  if (!current || busy) return;
  busy = true;
  try {
    const [status, d] = await call("/api/answer", {method: "POST", headers: {"Content-Type": "application/json"},
      body: JSON.stringify({query_id: current.query_id, label: label})});
    if (status === 200) {
      if (d.recorded) { answered += 1; $("answered").textContent = String(answered); }
      $("message").textContent = d.recorded ? "" : "already answered; not charged again.";
    } else {
      $("message").textContent = d.error || `HTTP ${status}`;
    }
    await next();
  } finally { busy = false; }
}
document.addEventListener("keydown", (e) => {
  if (current && /^[0-9]$/.test(e.key) && +e.key < current.candidates.length) answer(+e.key);
  else if (current && e.key === "s") skip();
});
next();
