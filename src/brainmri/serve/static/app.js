// brainmri page: send each scan to /v1/predict, show class + probability bars, then fetch the
// Grad-CAM or occlusion overlay from /v1/explain. No external resources: everything is served
// by the API.
"use strict";

const $ = (id) => document.getElementById(id);
let needsKey = false;

function el(tag, cls, text) {
  const node = document.createElement(tag);
  if (cls) node.className = cls;
  if (text !== undefined) node.textContent = text;
  return node;
}

function headers() {
  const key = $("apikey").value;
  return needsKey && key ? { "X-API-Key": key } : {};
}

function notice(text) {
  const box = $("notice");
  box.textContent = text;
  box.hidden = !text;
}

async function loadModel() {
  try {
    const health = await (await fetch("/healthz")).json();
    needsKey = Boolean(health.auth);
    $("keybox").hidden = !needsKey;
    const res = await fetch("/v1/model", { headers: headers() });
    if (!res.ok) {
      $("model").textContent = needsKey ? "Enter the API key, then drop scans." : "Model info unavailable.";
      return;
    }
    const m = await res.json();
    const r = m.recipe || {};
    $("model").textContent = `Model ${m.file} (sha256 ${m.sha256.slice(0, 12)}…), ` +
      `${r.ensemble > 1 ? r.ensemble + " × " : ""}${r.backbone} at ${m.image_size} px, ` +
      `runtime ${m.runtime}. Classes: ${m.class_names.join(", ")}.`;
  } catch (err) {
    $("model").textContent = "Server not reachable.";
  }
}

function bars(probabilities, label) {
  const box = el("div", "bars");
  for (const [name, p] of Object.entries(probabilities)) {
    const row = el("div", name === label ? "bar top" : "bar");
    row.dataset.class = name;
    const track = el("div", "track");
    const fill = el("div", "fill");
    fill.style.width = `${(100 * p).toFixed(1)}%`;
    track.append(fill);
    row.append(el("span", "name", name), track, el("span", "pct", `${(100 * p).toFixed(1)} %`));
    box.append(row);
  }
  return box;
}

function showWarning(card, status, title, reason) {
  card.dataset.status = status;
  const warn = el("div", "warning");
  warn.append(el("strong", "", title), el("span", "reason", reason || ""));
  card.querySelector(".body").replaceChildren(warn);
}

function showRecord(card, rec) {
  if (rec.status === "rejected") {
    const uncertain = (rec.reason || "").startsWith("uncertain");
    showWarning(card, "rejected", uncertain
      ? "Not classified: the model is not confident enough about this scan."
      : "Not classified: this does not look like a brain MRI slice the model can judge.",
      rec.reason);
    return false;
  }
  if (rec.status !== "ok") {
    showWarning(card, "error", "Could not read this file.", rec.reason);
    return false;
  }
  card.dataset.status = "ok";
  const body = card.querySelector(".body");
  const head = el("div", "head");
  head.append(el("span", "label", rec.label), " ",
              el("span", "prob", `${(100 * rec.probability).toFixed(1)} %`));
  body.replaceChildren(head, bars(rec.probabilities, rec.label));
  if (rec.cropped) body.append(el("div", "crop", "A black frame was found and cropped first."));
  return true;
}

async function explain(card, file) {
  const form = new FormData();
  form.append("file", file, file.name);
  const method = $("method").value;  // gradcam or occlusion (POST /v1/explain?method=)
  const name = method === "occlusion" ? "Occlusion map" : "Grad-CAM overlay";
  const holder = el("p", "pending", `${name}…`);
  card.querySelector(".body").append(holder);
  try {
    const res = await fetch(`/v1/explain?method=${encodeURIComponent(method)}`,
                            { method: "POST", body: form, headers: headers() });
    if (!res.ok) {
      const err = await res.json().catch(() => ({}));
      holder.textContent = `No overlay: ${err.detail || res.status}`;
      return;
    }
    const img = el("img", "overlay");
    img.alt = `${name} for ${file.name}`;
    img.src = URL.createObjectURL(await res.blob());
    holder.replaceWith(img);
  } catch (err) {
    holder.textContent = "No overlay: server not reachable.";
  }
}

function newCard(file) {
  const card = el("article", "scan");
  card.dataset.status = "pending";
  card.dataset.name = file.name;
  card.append(el("h2", "", file.name), el("div", "body"));
  card.querySelector(".body").append(el("p", "pending", "Waiting…"));
  return card;
}

async function classify(card, file) {
  card.querySelector(".pending").textContent = "Classifying…";
  const form = new FormData();
  form.append("file", file, file.name);
  let res, data;
  try {
    res = await fetch("/v1/predict", { method: "POST", body: form, headers: headers() });
    data = await res.json();
  } catch (err) {
    showWarning(card, "error", "Server not reachable.", String(err));
    return;
  }
  if (data && Array.isArray(data.records) && data.records.length === 1) {
    if (showRecord(card, data.records[0])) await explain(card, file);
    return;
  }
  showWarning(card, "error", `Refused by the server (${res.status}).`,
              (data && data.detail) || res.statusText);
}

async function checkSite() {
  // the service's batch check over its last uploads (GET /v1/site): advisory, never a refusal
  const box = $("site");
  try {
    const s = await (await fetch("/v1/site", { headers: headers() })).json();
    box.hidden = !s.shifted;
    if (s.shifted) {
      box.textContent = `The last ${s.scored} scans, taken together, do not look like the ` +
        `images this model was checked on (${Math.round(100 * s.share_above_reference)} % ` +
        "score above its reference; about half would). Its benchmark figures do not apply " +
        "to them: check it on labelled scans of this site first.";
    }
  } catch (err) {
    box.hidden = true;
  }
}

async function handle(files) {
  notice("");
  if (needsKey && !$("apikey").value) {
    notice("This server needs an API key: enter it above first.");
    return;
  }
  const list = Array.from(files);
  const cards = list.map(newCard);
  const group = document.createDocumentFragment();
  group.append(...cards);
  $("results").prepend(group);  // newest uploads first, each upload's files in their order
  for (let i = 0; i < list.length; i++) await classify(cards[i], list[i]);
  await checkSite();
}

function setup() {
  const drop = $("drop");
  $("picker").addEventListener("change", (e) => { handle(e.target.files); e.target.value = ""; });
  for (const ev of ["dragenter", "dragover"]) {
    drop.addEventListener(ev, (e) => { e.preventDefault(); drop.classList.add("over"); });
  }
  for (const ev of ["dragleave", "drop"]) {
    drop.addEventListener(ev, (e) => { e.preventDefault(); drop.classList.remove("over"); });
  }
  drop.addEventListener("drop", (e) => handle(e.dataTransfer.files));
  $("apikey").addEventListener("change", loadModel);
  loadModel();
}

document.addEventListener("DOMContentLoaded", setup);
