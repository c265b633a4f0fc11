// brainmri page: send each scan to /v1/predict (with the page's test-time augmentation and crop
// options), show class + probability bars, then fetch the Grad-CAM or occlusion overlay from
// /v1/explain; each class in the bars is a button that shows that class's map instead
// (/v1/explain?class=NAME). No external resources: everything is served by the API.
"use strict";

const $ = (id) => document.getElementById(id);
let needsKey = false;
// per classified card: its file, the options it was sent with, the predicted class, the class
// whose map is shown, the maps fetched so far (class -> object URL) and the latest map request
const cards = new WeakMap();

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

function query(params) {
  // "?a=1&b=2" for the given values, "" when there are none (defaults are left out, so that an
  // untouched page sends exactly the requests it always did)
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v !== undefined) q.set(k, v);
  const text = q.toString();
  return text ? `?${text}` : "";
}

function options() {
  // the options row, read when files are picked: they apply to that upload's scans
  return { tta: $("tta").value, crop: $("crop").value, method: $("method").value };
}

const OPTION_IDS = ["tta", "crop", "method"];

function keepOptions() {
  // the options row survives a reload: each choice is saved in this browser's local storage and
  // restored if the page still offers it (storage can be off, e.g. in a private window)
  for (const id of OPTION_IDS) {
    const select = $(id);
    try {
      const saved = localStorage.getItem(`brainmri.${id}`);
      if (saved !== null && Array.from(select.options).some((o) => o.value === saved)) {
        select.value = saved;
      }
    } catch (err) { /* no storage: the page's defaults */ }
    select.addEventListener("change", () => {
      try { localStorage.setItem(`brainmri.${id}`, select.value); } catch (err) { /* ignored */ }
    });
  }
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
    const pick = el("button", "name", name);  // shows this class's map (click, Enter or Space)
    pick.type = "button";
    pick.dataset.class = name;
    pick.title = `Show the map for ${name}`;
    pick.setAttribute("aria-pressed", "false");
    const track = el("div", "track");
    const fill = el("div", "fill");
    fill.style.width = `${(100 * p).toFixed(1)}%`;
    track.append(fill);
    row.append(pick, track, el("span", "pct", `${(100 * p).toFixed(1)} %`));
    box.append(row);
  }
  return box;
}

function optionsLine(rec) {
  // what the record was classified with, e.g. "plain · crop auto" or "5 views · crop off"
  const line = el("div", "used",
                  `${Number(rec.tta) > 1 ? `${rec.tta} views` : "plain"} · crop ${rec.crop}`);
  line.dataset.tta = rec.tta;
  line.dataset.crop = rec.crop;
  line.title = "Test-time augmentation and crop this scan was classified with";
  return line;
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
  body.replaceChildren(head);
  if (rec.tta !== undefined) body.append(optionsLine(rec));
  body.append(bars(rec.probabilities, rec.label));
  if (rec.cropped) body.append(el("div", "crop", "A black frame was found and cropped first."));
  return true;
}

function mapName(method) {
  return method === "occlusion" ? "Occlusion map" : "Grad-CAM overlay";
}

async function fetchMap(st, cls) {
  // object URL of the overlay PNG of class `cls` (fetched once per card and class); throws an
  // Error with a one-line message when the server refuses it or cannot be reached
  if (st.maps[cls]) return st.maps[cls];
  const form = new FormData();
  form.append("file", st.file, st.file.name);
  // the predicted class needs no ?class= unless test-time augmentation chose it: the server's
  // own (plain) answer is then the same class
  const plainAnswer = cls === st.label && st.tta === "1";
  const params = { method: st.method, class: plainAnswer ? undefined : cls,
                   crop: st.crop === "auto" ? undefined : st.crop };
  let res;
  try {
    res = await fetch(`/v1/explain${query(params)}`,
                      { method: "POST", body: form, headers: headers() });
  } catch (err) {
    throw new Error("server not reachable.");
  }
  if (!res.ok) {
    const err = await res.json().catch(() => ({}));
    throw new Error(`${err.detail || res.statusText} (${res.status}).`);
  }
  st.maps[cls] = URL.createObjectURL(await res.blob());
  return st.maps[cls];
}

async function showMap(card, cls) {
  // replace the card's overlay with the map of class `cls`; the latest click wins
  const st = cards.get(card);
  const seq = ++st.seq;
  const box = card.querySelector(".map");
  const pick = Array.from(card.querySelectorAll("button.name")).find((b) => b.dataset.class === cls);
  box.classList.add("loading");
  if (pick) pick.setAttribute("aria-busy", "true");
  let url, failure;
  try {
    url = await fetchMap(st, cls);
  } catch (err) {
    failure = err.message;
  }
  if (pick) pick.removeAttribute("aria-busy");
  if (seq !== st.seq) return;  // a later click took over
  box.classList.remove("loading");
  const error = box.querySelector(".maperror");
  error.hidden = !failure;
  error.textContent = failure ? `No map for ${cls}: ${failure}` : "";
  const holder = box.querySelector(".pending");
  if (failure) {
    if (holder) holder.remove();
    return;
  }
  let img = box.querySelector("img.overlay");
  if (!img) {
    img = el("img", "overlay");
    (holder || error).before(img);
    if (holder) holder.remove();
  }
  img.alt = `${mapName(st.method)} for ${st.file.name}, class ${cls}`;
  img.src = url;
  img.dataset.class = cls;
  st.shown = cls;
  for (const b of card.querySelectorAll("button.name")) {
    const shown = b.dataset.class === cls;
    b.setAttribute("aria-pressed", String(shown));
    b.closest(".bar").classList.toggle("shown", shown);
  }
  const what = st.method === "occlusion" ? "Occlusion map" : "Grad-CAM";
  box.querySelector(".mapfor").textContent = cls === st.label
    ? `${what}: ${cls} (predicted class)` : `${what}: ${cls} (predicted: ${st.label})`;
}

async function explain(card, file, opts, label) {
  cards.set(card, { file, ...opts, label, shown: null, maps: {}, seq: 0 });
  const box = el("div", "map");
  const error = el("p", "maperror");
  error.hidden = true;
  error.setAttribute("role", "alert");
  box.append(el("p", "mapfor"), el("p", "pending", `${mapName(opts.method)}…`), error);
  card.querySelector(".body").append(box);
  card.addEventListener("click", (e) => {
    const pick = e.target.closest("button.name");
    if (pick) showMap(card, pick.dataset.class);
  });
  await showMap(card, label);
}

function newCard(file) {
  const card = el("article", "scan");
  card.dataset.status = "pending";
  card.dataset.name = file.name;
  card.append(el("h2", "", file.name), el("div", "body"));
  card.querySelector(".body").append(el("p", "pending", "Waiting…"));
  return card;
}

async function classify(card, file, opts) {
  card.querySelector(".pending").textContent = "Classifying…";
  const form = new FormData();
  form.append("file", file, file.name);
  const params = { tta: opts.tta === "1" ? undefined : opts.tta,
                   crop: opts.crop === "auto" ? undefined : opts.crop };
  let res, data;
  try {
    res = await fetch(`/v1/predict${query(params)}`,
                      { method: "POST", body: form, headers: headers() });
    data = await res.json();
  } catch (err) {
    showWarning(card, "error", "Server not reachable.", String(err));
    return;
  }
  if (data && Array.isArray(data.records) && data.records.length === 1) {
    const rec = data.records[0];
    if (showRecord(card, rec)) await explain(card, file, opts, rec.label);
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
  const opts = options();
  const list = Array.from(files);
  const fresh = list.map(newCard);
  const group = document.createDocumentFragment();
  group.append(...fresh);
  $("results").prepend(group);  // newest uploads first, each upload's files in their order
  for (let i = 0; i < list.length; i++) await classify(fresh[i], list[i], opts);
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
  keepOptions();
  loadModel();
}

document.addEventListener("DOMContentLoaded", setup);
