/*
 * whaleid review page: one small vanilla ES module. No build step, no CDN, no npm dependency.
 *
 * Why plain files: the page must work offline (field laptops, closed networks: it loads nothing but
 * these three files and the service's own API), it needs no toolchain to read or change, and there is
 * nothing to rebuild or vendor when the service ships: the service serves service/static/ as it is.
 *
 * The loop: pick or drop photos -> each goes to POST /identify -> its card shows the photo with the
 * boxes embedded drawn on it and the top-5, each with the thumbnail of that whale's best-matching
 * gallery photo -> "this is whale X" / "new whale" / "skip" (POST /gallery); "undo" deletes the photo
 * the decision added. Never lose work: a card keeps its state until the user removes it, a failed
 * action keeps the API's message and can be retried, and leaving the page with undecided photos asks
 * first. A search scope (place, dates, a radius) limits the identifications to whales seen there, and each
 * card shows the photo's date and place as the service read them. The gallery view lists whales and fixes
 * the catalogue: rename, merge into another whale (confirmed), move photos to a known or new whale (a
 * split), edit a photo's date and place; the form stays open on an error with the API's message.
 * The API key (when the server has one) is asked for on the first 401 (again on a 403) and kept
 * in sessionStorage only, so it goes when the tab closes. API paths are relative to the page, so the
 * page also works behind a reverse proxy that serves the service under a path prefix.
 */

const KEY_STORAGE = "whaleid.apiKey";
const TOP_K = 5;
const MAX_PARALLEL = 2; // identifications in flight (the service micro-batches them)
const PAGE_SIZE = 50;
const NEW_WHALE = "new_whale";

const $ = (sel, root = document) => root.querySelector(sel);

/** Build an element: h("button", {class: "x", onclick: fn}, "text", child...). */
function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "class") el.className = v;
    else if (k === "dataset") Object.assign(el.dataset, v);
    else el.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

const fmt = (x, digits = 3) => (typeof x === "number" ? x.toFixed(digits) : "–");
const SVG = "http://www.w3.org/2000/svg";

/** An SVG element: svg("polyline", {points: "0,0 1,1"}). */
function svg(tag, attrs = {}, ...children) {
  const el = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
  for (const c of children) el.append(c);
  return el;
}

/** Edge points [[x, y], ...] (photo pixels, left tip first) turned so the tips lie on a line, scaled to a
 * tip-to-tip distance of 100: two whales' edges can then be laid over each other. */
function normalisedEdge(points) {
  const [x0, y0] = points[0];
  const [x1, y1] = points[points.length - 1];
  const len = Math.hypot(x1 - x0, y1 - y0) || 1;
  const c = (x1 - x0) / len, s = (y1 - y0) / len;
  return points.map(([x, y]) => [((x - x0) * c + (y - y0) * s) * 100 / len, (-(x - x0) * s + (y - y0) * c) * 100 / len]);
}

/** A small drawing of the query's trailing edge (blue) over a candidate's (orange). */
function edgeOverlay(query, candidate, label) {
  const lines = [query, candidate].filter(Boolean).map(normalisedEdge);
  const ys = lines.flat().map((p) => p[1]);
  const top = Math.min(0, ...ys) - 2, bottom = Math.max(0, ...ys) + 2;
  const draw = (pts, cls) => svg("polyline", { class: cls, points: pts.map((p) => p.map((v) => v.toFixed(1)).join(",")).join(" ") });
  return svg("svg", { class: "edge-overlay", viewBox: `-2 ${top} 104 ${bottom - top}`, role: "img", "aria-label": label },
    ...lines.map((pts, i) => draw(pts, i === 0 ? "edge-query" : "edge-cand")));
}
const enc = encodeURIComponent;
const thumbUrl = (whaleId, imageId) => `gallery/${enc(whaleId)}/images/${enc(imageId)}`;

/**
 * A photo's date as the service stores it (ISO 8601), shortened to the minute. The zone is shown as
 * written and never converted: a time without one is the camera's own clock ("local").
 */
function fmtWhen(iso) {
  const m = /^(\d{4}-\d{2}-\d{2})(?:[T ](\d{2}:\d{2})(?::\d{2}(?:\.\d+)?)?)?(Z|[+-]\d{2}:?\d{2})?$/.exec(iso || "");
  if (!m) return iso;
  const zone = m[3] ? (m[3] === "Z" ? " UTC" : ` UTC${m[3]}`) : m[2] ? " (local)" : "";
  return `${m[1]}${m[2] ? ` ${m[2]}` : ""}${zone}`;
}

/** A photo's place: its name and its position (decimal degrees, 4 decimals: about 10 m), each when set. */
function fmtPlace(meta) {
  const parts = [];
  if (meta?.location) parts.push(meta.location);
  if (typeof meta?.latitude === "number" && typeof meta?.longitude === "number") {
    parts.push(`${meta.latitude.toFixed(4)}, ${meta.longitude.toFixed(4)}`);
  }
  return parts.join(" · ");
}

/** The other fields of a photo's metadata, one line: encounter, photographer, notes. */
function fmtMore(meta) {
  return [
    meta?.encounter_id ? `encounter ${meta.encounter_id}` : null,
    meta?.photographer ? `by ${meta.photographer}` : null,
    meta?.notes || null,
  ].filter(Boolean).join(" · ");
}

// ---------------------------------------------------------------------------------------------
// API: JSON in and out, errors as the service's {detail, code}; writes carry the session's key.

class ApiError extends Error {
  constructor(status, detail, code) {
    super(detail);
    this.status = status;
    this.detail = detail;
    this.code = code;
  }
}

async function errorOf(res) {
  let detail = `HTTP ${res.status} ${res.statusText}`.trim();
  let code = null;
  try {
    const body = await res.json();
    if (typeof body.detail === "string") detail = body.detail;
    else if (body.detail) detail = JSON.stringify(body.detail);
    code = body.code ?? null;
  } catch {
    /* not JSON (a proxy's page): keep the status line */
  }
  return new ApiError(res.status, detail, code);
}

/**
 * Call the API. Writes send X-API-Key from sessionStorage; on 401 (missing) or 403 (wrong) the
 * user is asked for the key and the request is sent again (FormData bodies can be re-sent). `json`: a
 * value sent as the JSON body (PATCH and the catalogue operations).
 */
async function api(method, path, { body = null, json = undefined, write = false } = {}) {
  if (json !== undefined) body = JSON.stringify(json);
  for (let attempt = 0; ; attempt++) {
    const headers = { Accept: "application/json" };
    if (json !== undefined) headers["Content-Type"] = "application/json";
    const key = sessionStorage.getItem(KEY_STORAGE);
    if (write && key) headers["X-API-Key"] = key;
    let res;
    try {
      res = await fetch(path, { method, body, headers });
    } catch (err) {
      throw new ApiError(0, `could not reach the service (${err.message}); your photo is kept, retry when it is back`, "network");
    }
    if (write && (res.status === 401 || res.status === 403) && attempt < 3) {
      const err = await errorOf(res);
      const reason = res.status === 401
        ? "This server needs an API key for changes to the gallery."
        : `The server refused the key (${err.detail}). Enter it again.`;
      if (await askKey(reason)) continue;
      throw err;
    }
    if (!res.ok) throw await errorOf(res);
    return res.status === 204 ? null : res.json();
  }
}

// ---------------------------------------------------------------------------------------------
// Dialogs: the API key (sessionStorage only) and confirmations.

let keyPrompt = null; // one prompt shared by concurrent 401s

function askKey(reason) {
  if (keyPrompt) return keyPrompt;
  const dialog = $("#key-dialog");
  const input = $("#key-input");
  $("#key-reason").textContent = reason;
  input.value = sessionStorage.getItem(KEY_STORAGE) || "";
  keyPrompt = new Promise((resolve) => {
    dialog.addEventListener("close", () => {
      keyPrompt = null;
      const choice = dialog.returnValue;
      const key = input.value.trim();
      input.value = "";
      if (choice === "save" && key) {
        sessionStorage.setItem(KEY_STORAGE, key);
        updateKeyButton();
        resolve(true);
      } else {
        if (choice === "forget") sessionStorage.removeItem(KEY_STORAGE);
        updateKeyButton();
        resolve(false);
      }
    }, { once: true });
  });
  dialog.returnValue = "";
  dialog.showModal();
  input.focus();
  return keyPrompt;
}

function updateKeyButton() {
  const set = Boolean(sessionStorage.getItem(KEY_STORAGE));
  const btn = $("#key-button");
  btn.textContent = set ? "API key ✓" : "API key";
  btn.setAttribute("aria-label", set ? "API key (set for this tab)" : "API key (not set)");
}

function confirmDialog(message, okLabel = "Delete") {
  const dialog = $("#confirm-dialog");
  $("#confirm-msg").textContent = message;
  $("#confirm-ok").textContent = okLabel;
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => resolve(dialog.returnValue === "ok"), { once: true });
    dialog.returnValue = "";
    dialog.showModal();
  });
}

// ---------------------------------------------------------------------------------------------
// Server info (GET /ready).

let ready = null;

async function loadReady() {
  try {
    ready = await api("GET", "ready");
    showReady();
    const select = $("#scoring");
    const modes = calibratedModes(ready);
    for (const mode of modes) {
      const thr = ready.thresholds?.[mode];
      select.append(h("option", { value: mode }, mode + (typeof thr === "number" ? ` (new_whale below ${fmt(thr, 2)})` : "")));
    }
    if (modes.includes(ready.scoring)) select.value = ready.scoring;
  } catch (err) {
    $("#server-info").textContent = `Service not ready: ${err.detail}`;
  }
}

/**
 * The scoring modes POST /identify can serve: those with a calibrated new_whale threshold. A mode without
 * one is refused ("no new_whale threshold is calibrated for scoring mode ..."), so it is never offered.
 * /ready's `calibrated_modes` when the service has it, else `scoring_modes` with an entry in `thresholds`
 * (the bundle's calibrated thresholds: the same rule as the `scoring` enum of /openapi.json).
 */
function calibratedModes(info) {
  if (Array.isArray(info.calibrated_modes)) return info.calibrated_modes;
  const thresholds = info.thresholds || {};
  return (info.scoring_modes || []).filter((m) => typeof thresholds[m] === "number");
}

function showReady() {
  if (!ready) return;
  $("#server-info").textContent =
    `model ${ready.model_version} · ${ready.gallery_size} whales, ${ready.gallery_images} photos in the gallery · scoring ${ready.scoring}`;
}

/** The gallery changed: refresh the header's counts and list the whales again when the gallery view opens. */
async function galleryChanged() {
  gallery.stale = true;
  try {
    ready = { ...ready, ...(await api("GET", "ready")) };
    showReady();
  } catch {
    /* the header is informative only */
  }
}

// ---------------------------------------------------------------------------------------------
// Search scope: optional limits sent with each identification as scope_* parameters.

const SCOPE_FIELDS = [
  ["scope_location", "#scope-location"],
  ["scope_from", "#scope-from"],
  ["scope_to", "#scope-to"],
  ["scope_near", "#scope-near"],
];

/** The scope_* parameters typed now (empty fields left out). */
function scopeParams() {
  const out = {};
  for (const [name, sel] of SCOPE_FIELDS) {
    const value = $(sel).value.trim();
    if (value) out[name] = value;
  }
  return out;
}

/** A scope in words, from the service's `scope.applied` (location, bbox, near, date_from, date_to). */
function describeScope(applied = {}) {
  const parts = [];
  if (applied.location) parts.push(`place “${applied.location}”`);
  if (applied.date_from && applied.date_to) parts.push(`${applied.date_from} to ${applied.date_to}`);
  else if (applied.date_from) parts.push(`from ${applied.date_from}`);
  else if (applied.date_to) parts.push(`until ${applied.date_to}`);
  if (Array.isArray(applied.near)) parts.push(`within ${applied.near[2]} km of ${applied.near[0]}, ${applied.near[1]}`);
  if (Array.isArray(applied.bbox)) parts.push(`inside ${applied.bbox.join(", ")}`);
  return parts.join(", ");
}

function showScopeSummary() {
  const p = scopeParams();
  const text = describeScope({
    location: p.scope_location,
    date_from: p.scope_from,
    date_to: p.scope_to,
    near: p.scope_near?.split(",").length === 3 ? p.scope_near.split(",") : undefined,
  });
  const later = photos.length ? "; identify again (i) to apply it to photos already identified" : "";
  $("#scope-summary").textContent = text ? `(${text}${later})` : "(whole gallery)";
}

// ---------------------------------------------------------------------------------------------
// Review: one card per photo.
//
// photo.state: pending | identifying | identified | assigned | enrolled | skipped | unusable | error
// photo.decision: the last successful decision {kind: assign|enrol|skip|unusable, whale_id, image_ids, duplicates}
// photo.error: the last failed action {action, arg, detail}, retried by the Retry button

const photos = [];
const queue = [];
let running = 0;
let nextId = 1;

const STATE_LABEL = {
  pending: "waiting",
  identifying: "identifying…",
  identified: "to decide",
  assigned: "assigned",
  enrolled: "enrolled",
  skipped: "skipped",
  unusable: "not a fluke",
  error: "error",
};

function addFiles(fileList) {
  const files = [...fileList];
  if (!files.length) return;
  for (const file of files) {
    const photo = {
      id: nextId++,
      file,
      name: file.name || `photo ${nextId - 1}`,
      url: URL.createObjectURL(file),
      state: "pending",
      result: null,
      decision: null,
      error: null,
      busy: false,
      message: "Waiting to be identified…",
      messageIsError: false,
    };
    photos.push(photo);
    buildCard(photo);
    update(photo);
    queue.push(photo);
  }
  summarize();
  pump();
}

function pump() {
  while (running < MAX_PARALLEL && queue.length) {
    const photo = queue.shift();
    if (!photos.includes(photo)) continue;
    running++;
    identify(photo).finally(() => {
      running--;
      pump();
    });
  }
}

async function identify(photo) {
  photo.state = "identifying";
  photo.busy = true;
  setMessage(photo, "Identifying…");
  update(photo);
  const fd = new FormData();
  fd.append("file", photo.file, photo.name);
  const params = new URLSearchParams({ k: String(TOP_K) });
  const scoring = $("#scoring").value;
  if (scoring) params.set("scoring", scoring);
  if (scoring === "edge_fused") params.set("explain", "true"); // the trailing edges, to draw them
  for (const [name, value] of Object.entries(scopeParams())) params.set(name, value);
  try {
    const result = await api("POST", `identify?${params}`, { body: fd });
    photo.result = result;
    photo.error = null;
    photo.state = photo.decision ? stateOf(photo.decision) : "identified";
    renderResult(photo);
    const top = result.predictions[0];
    const best = !top ? "no candidates"
      : top.whale_id === NEW_WHALE ? `no gallery whale reaches the threshold ${fmt(result.threshold, 2)}: maybe a new whale`
        : `best ${top.whale_id} (${fmt(top.score)})`;
    setMessage(photo, `Identified in ${Math.round(result.timing_ms?.total ?? 0)} ms: ${best}.` +
      (photo.decision ? " Your earlier decision stands." : " Decide below."));
    const active = document.activeElement;
    if (!photo.decision && (active === document.body || active === $("#files") || active === null)) photo.card.focus();
  } catch (err) {
    photo.state = "error";
    photo.error = { action: "identify", detail: err.detail };
    setMessage(photo, `Could not identify: ${err.detail}`, true);
  } finally {
    photo.busy = false;
    update(photo);
    summarize();
  }
}

const stateOf = (decision) => ({ assign: "assigned", enrol: "enrolled", skip: "skipped", unusable: "unusable" })[decision.kind];

function setMessage(photo, text, isError = false) {
  photo.message = text;
  photo.messageIsError = isError;
  if (photo.refs) {
    photo.refs.status.textContent = (isError ? "Error: " : "") + text;
    photo.refs.status.classList.toggle("error", isError);
  }
}

function buildCard(photo) {
  const uid = `p${photo.id}`;
  const refs = {};
  refs.badge = h("span", { class: "badge", id: `${uid}-state` });
  refs.reidentify = h("button", { type: "button", class: "secondary small", "aria-keyshortcuts": "i",
    onclick: () => reidentify(photo) }, "Identify again");
  refs.remove = h("button", { type: "button", class: "secondary small", onclick: () => removePhoto(photo) }, "Remove");
  refs.img = h("img", { src: photo.url, alt: `Uploaded photo ${photo.name}`, class: "query-img",
    onerror: (e) => {
      refs.boxes.hidden = true;
      e.target.replaceWith(h("div", { class: "thumb placeholder no-preview" }, "no preview: the browser cannot show this file"));
    } });
  refs.boxes = h("div", { class: "boxes", "aria-hidden": "true" });
  refs.frame = h("div", { class: "frame" }, refs.img, refs.boxes);
  refs.caption = h("figcaption", { class: "muted" }, "");
  refs.meta = h("p", { class: "photo-meta", hidden: true });
  refs.scope = h("p", { class: "scope-info", hidden: true });
  refs.candidates = h("ol", { class: "candidates", "aria-label": `Candidates for ${photo.name}` });
  refs.newInput = h("input", { type: "text", id: `${uid}-newid`, name: "whale_id", autocomplete: "off", spellcheck: "false",
    maxlength: "64", placeholder: "empty: the service assigns one", "aria-describedby": `${uid}-newhint` });
  refs.newInput.addEventListener("keydown", (e) => {
    if (e.key === "Escape") {
      e.preventDefault();
      photo.card.focus();
    }
  });
  refs.newSubmit = h("button", { type: "submit", class: "primary", "aria-keyshortcuts": "n" }, "Enrol as new whale");
  refs.newForm = h("form", { class: "new-whale", onsubmit: (e) => { e.preventDefault(); enrolNew(photo); } },
    h("label", { for: `${uid}-newid` }, "New whale id"),
    h("div", { class: "row" }, refs.newInput, refs.newSubmit),
    h("p", { id: `${uid}-newhint`, class: "hint muted" }, "Letters, digits, _ . - (up to 64). Empty: a new id like whale-00042 is assigned."));
  refs.skip = h("button", { type: "button", class: "secondary", "aria-keyshortcuts": "s", onclick: () => skip(photo) },
    "Skip ", h("kbd", { "aria-hidden": "true" }, "s"));
  refs.undo = h("button", { type: "button", class: "secondary", "aria-keyshortcuts": "u", onclick: () => undo(photo) },
    "Undo ", h("kbd", { "aria-hidden": "true" }, "u"));
  refs.retry = h("button", { type: "button", class: "primary", onclick: () => retry(photo) }, "Retry");
  refs.status = h("p", { class: "status", role: "status", "aria-live": "polite", "aria-atomic": "true", id: `${uid}-status` });
  refs.candsWrap = h("div", { class: "cands-wrap" }, h("h4", { class: "cands-h" }, "Top 5"), refs.scope, refs.candidates);
  // Shown when the service says the photo does not look like a fluke: offered before "New whale".
  refs.notFlukeText = h("p", { id: `${uid}-notfluke` }, "");
  refs.notFlukeButton = h("button", { type: "button", class: "primary", "aria-keyshortcuts": "x",
    "aria-describedby": `${uid}-notfluke`, onclick: () => markUnusable(photo) },
  "Not a fluke / unusable ", h("kbd", { "aria-hidden": "true" }, "x"));
  refs.notFluke = h("div", { class: "not-fluke", hidden: true }, refs.notFlukeText, refs.notFlukeButton);
  const heading = h("h3", { class: "photo-name", id: `${uid}-name` }, photo.name);
  photo.card = h("li", {
    class: "photo-card", tabindex: "0", "aria-labelledby": `${uid}-name ${uid}-state`, dataset: { photo: String(photo.id) },
  },
  h("div", { class: "card-head" }, heading, refs.badge, h("div", { class: "head-actions" }, refs.reidentify, refs.remove)),
  h("figure", { class: "query" }, refs.frame, refs.caption, refs.meta),
  refs.notFluke,
  refs.candsWrap,
  h("div", { class: "decide" },
    h("div", { class: "decide-row" }, refs.skip, refs.undo, refs.retry),
    refs.newForm,
    refs.status));
  photo.refs = refs;
  $("#photos").append(photo.card);
}

function renderResult(photo) {
  const { result, refs } = photo;
  const [w, hgt] = result.image_size;
  refs.boxes.replaceChildren();
  const box = (b, cls) => h("div", {
    class: `box ${cls}`,
    style: `left:${(100 * b[0]) / w}%;top:${(100 * b[1]) / hgt}%;width:${(100 * (b[2] - b[0])) / w}%;height:${(100 * (b[3] - b[1])) / hgt}%`,
  });
  result.boxes.forEach((b, i) => refs.boxes.append(box(b, i === 0 ? "first" : "variant")));
  if (result.detected_box) refs.boxes.append(box(result.detected_box, "detected"));
  const edge = result.trailing_edge;
  if (edge && edge.found && edge.points) {
    refs.boxes.append(svg("svg", { class: "edge-on-photo", viewBox: `0 0 ${w} ${hgt}`, preserveAspectRatio: "none" },
      svg("polyline", { class: "edge-query", points: edge.points.map((p) => p.join(",")).join(" ") })));
  }
  refs.caption.textContent =
    `${w}×${hgt} px${result.exif_rotated ? " (turned upright from EXIF)" : ""} · ${result.boxes.length} boxes embedded ` +
    `(first solid, variants dashed${result.detected_box ? ", detector box orange" : ""}) · ${result.scoring} scoring, ` +
    `new_whale below ${fmt(result.threshold, 2)}` +
    (!edge ? "" : edge.found ? " · trailing edge in blue" : ` · no trailing edge read (${edge.reason}): scored without it`);

  // when and where: the form fields sent, completed by the photo's EXIF (none sent by this page: EXIF only)
  const meta = result.photo_metadata || {};
  const when = meta.taken_at ? `Taken ${fmtWhen(meta.taken_at)}` : "Date unknown";
  const where = fmtPlace(meta);
  const more = fmtMore(meta);
  refs.meta.replaceChildren(
    h("span", { class: "meta-when" }, when), " · ",
    h("span", { class: "meta-where" }, where ? `at ${where}` : "place unknown"),
    more ? ` · ${more}` : "");
  refs.meta.hidden = false;
  const scope = result.scope;
  refs.scope.hidden = !scope;
  if (scope) {
    const n = scope.whales_in_scope;
    refs.scope.textContent = `Scope: ${describeScope(scope.applied)}: ${n} whale${n === 1 ? "" : "s"} in scope` +
      (n === 0 ? " (no gallery whale has a photo there: only new_whale can be answered)." : "; whales outside it are not ranked.");
  }

  const check = result.fluke_check || {};
  refs.notFluke.hidden = result.looks_like_fluke !== false;
  refs.notFlukeText.textContent = check.reason === "too_small"
    ? `This photo is too small to identify (${check.min_side_px} px on its shorter side): the ranking below means little.`
    : `This photo does not look like a fluke: similarity ${fmt(check.gallery_similarity)} to the nearest gallery whale, ` +
      `real flukes score above ${fmt(check.min_similarity)}. Check it before calling it a new whale.`;

  refs.candidates.replaceChildren();
  for (const p of result.predictions) {
    const n = p.rank;
    const isNew = p.whale_id === NEW_WHALE;
    const ev = p.evidence || {};
    const facts = [];
    if (typeof ev.embedding_similarity === "number") facts.push(["similarity", fmt(ev.embedding_similarity)]);
    if (typeof ev.inliers === "number") facts.push(["inliers", String(ev.inliers)]);
    if (typeof ev.local_score === "number") facts.push(["local", fmt(ev.local_score)]);
    if (typeof ev.fused_score === "number") facts.push(["fused", fmt(ev.fused_score)]);
    if (typeof ev.edge_distance === "number") facts.push(["edge distance", fmt(ev.edge_distance)]);
    if (typeof ev.best_image_id === "number") facts.push(["best photo", `#${ev.best_image_id}`]);
    let thumb;
    if (isNew) {
      thumb = h("div", { class: "thumb placeholder", "aria-hidden": "true" }, "new?");
    } else if (typeof ev.best_image_id === "number") {
      thumb = h("img", { class: "thumb", src: thumbUrl(p.whale_id, ev.best_image_id), alt: `Best-matching gallery photo of ${p.whale_id}`,
        onerror: (e) => e.target.replaceWith(h("div", { class: "thumb placeholder" }, "no thumbnail")) });
    } else {
      thumb = h("div", { class: "thumb placeholder" }, "no photo");
    }
    const action = isNew
      ? h("button", { type: "button", class: "secondary assign", "aria-keyshortcuts": String(n), onclick: () => focusNew(photo) },
        "New whale… ", h("kbd", { "aria-hidden": "true" }, String(n)))
      : h("button", { type: "button", class: "assign", "aria-keyshortcuts": String(n), onclick: () => assign(photo, p.whale_id) },
        `This is ${p.whale_id} `, h("kbd", { "aria-hidden": "true" }, String(n)));
    const browse = isNew ? null : h("button", { type: "button", class: "link small", onclick: () => openWhale(p.whale_id) }, "all photos");
    refs.candidates.append(h("li", { class: `cand${isNew ? " new" : ""}`, dataset: { whale: p.whale_id, rank: String(n) } },
      thumb,
      h("div", { class: "cand-info" },
        h("p", { class: "cand-id" }, h("span", { class: "rank" }, String(n)), h("strong", { class: "whale-id" }, p.whale_id)),
        isNew
          ? h("p", { class: "muted" }, `threshold ${fmt(result.threshold, 2)}: ${n === result.predictions.length ? "every whale above" : "the whales below"} this line score${n === result.predictions.length ? "s over" : " under"} it`)
          : h("p", { class: "score" }, `score ${fmt(p.score)}`),
        facts.length ? h("p", { class: "evidence muted" }, facts.map(([k, v]) => `${k} ${v}`).join(" · ")) : null,
        edge && edge.points && ev.edge_points
          ? edgeOverlay(edge.points, ev.edge_points, `Trailing edges: this photo's in blue, ${p.whale_id}'s in orange`)
          : null),
      h("div", { class: "cand-actions" }, action, browse)));
  }
}

function update(photo) {
  const { refs, state, busy, decision, result } = photo;
  const undecided = Boolean(result) && !decision;
  let label = STATE_LABEL[state];
  if (decision && decision.kind !== "skip") label += ` · ${decision.whale_id}`;
  if (busy && state !== "identifying") label += " · working…";
  refs.badge.textContent = label;
  refs.badge.className = `badge state-${state}`;
  photo.card.dataset.state = state;
  photo.card.setAttribute("aria-busy", String(busy));
  for (const b of refs.candidates.querySelectorAll("button.assign")) b.disabled = busy || !undecided;
  refs.newInput.disabled = busy || !undecided;
  refs.newSubmit.disabled = busy || !undecided;
  refs.skip.disabled = busy || !undecided;
  refs.notFlukeButton.disabled = busy || !undecided;
  refs.undo.hidden = !decision;
  refs.undo.disabled = busy;
  refs.retry.hidden = !(state === "error" && photo.error);
  refs.retry.disabled = busy;
  if (photo.error) refs.retry.textContent = `Retry ${photo.error.action === "identify" ? "identification" : photo.error.action}`;
  refs.reidentify.disabled = busy || state === "pending";
  refs.newForm.hidden = Boolean(decision) || !result;
  refs.skip.hidden = !result;
  refs.notFluke.hidden = !result || result.looks_like_fluke !== false;
  refs.candsWrap.hidden = !result;
  setMessage(photo, photo.message, photo.messageIsError);
}

/** After a decision made from the keyboard: go on to the next photo still to decide, else stay on this card. */
function moveOn(photo, hadFocus) {
  if (!hadFocus) return;
  const i = photos.indexOf(photo);
  const next = [...photos.slice(i + 1), ...photos.slice(0, i)].find((p) => p.state === "identified" && !p.decision);
  (next ? next.card : photo.card).focus();
}

/** Run a write for a photo: busy while it runs, its error kept for Retry; after a decision, move on. */
async function write(photo, action, arg, run) {
  if (photo.busy) return;
  const hadFocus = photo.card.contains(document.activeElement);
  photo.busy = true;
  update(photo);
  try {
    await run();
    photo.error = null;
    if (action === "undo") {
      if (hadFocus) photo.card.focus(); // decide this photo again
    } else {
      moveOn(photo, hadFocus);
    }
  } catch (err) {
    photo.state = "error";
    photo.error = { action, arg, detail: err.detail ?? String(err) };
    setMessage(photo, `${action} failed: ${photo.error.detail}`, true);
    if (hadFocus && !photo.card.contains(document.activeElement)) photo.card.focus();
  } finally {
    photo.busy = false;
    update(photo);
    summarize();
  }
}

async function postPhoto(photo, whaleId) {
  const fd = new FormData();
  fd.append("files", photo.file, photo.name);
  if (whaleId) fd.append("whale_id", whaleId);
  return api("POST", "gallery", { body: fd, write: true });
}

function assign(photo, whaleId) {
  return write(photo, "assign", whaleId, async () => {
    const gone = goneIds.get(whaleId);
    if (gone) throw new ApiError(409, `${whaleId} ${gone} after this photo was identified: identify it again (i) to rank it against the gallery as it is now`, "stale");
    const r = await postPhoto(photo, whaleId);
    photo.decision = { kind: "assign", whale_id: r.whale_id, image_ids: r.image_ids, duplicates: r.duplicates };
    photo.state = "assigned";
    setMessage(photo, r.images_added
      ? `Added to ${r.whale_id} as photo #${r.image_ids.join(", #")}: ${r.whale_id} now has ${r.images_total} photos.`
      : `${r.whale_id} already has this photo (same file): nothing added.`);
    galleryChanged();
  });
}

function enrolNew(photo) {
  const typed = photo.refs.newInput.value.trim();
  return write(photo, "enrol", typed, async () => {
    if (typed) {
      // "New whale" must not silently add to a whale that already has this id.
      let exists = true;
      try {
        await api("GET", `gallery/${enc(typed)}`);
      } catch (err) {
        if (err.status === 404) exists = false;
        else if (err.status !== 422) throw err;
        else exists = false; // an invalid id: let POST /gallery give the service's message
      }
      if (exists) throw new ApiError(409, `whale ${typed} already exists: use "This is ${typed}" to add the photo to it, or type another id`, "exists");
    }
    const r = await postPhoto(photo, typed || null);
    idBack(r.whale_id);
    photo.decision = { kind: "enrol", whale_id: r.whale_id, image_ids: r.image_ids, duplicates: r.duplicates };
    photo.state = "enrolled";
    setMessage(photo, `Enrolled as new whale ${r.whale_id} (photo #${r.image_ids.join(", #")}). The gallery has ${r.gallery_size} whales.`);
    galleryChanged();
  });
}

function skip(photo) {
  if (photo.busy || !photo.result || photo.decision) return;
  const hadFocus = photo.card.contains(document.activeElement);
  photo.decision = { kind: "skip" };
  photo.state = "skipped";
  photo.error = null;
  setMessage(photo, "Skipped: nothing stored. Undo to decide after all.");
  update(photo);
  summarize();
  moveOn(photo, hadFocus);
}

function markUnusable(photo) {
  if (photo.busy || !photo.result || photo.decision) return;
  const hadFocus = photo.card.contains(document.activeElement);
  photo.decision = { kind: "unusable" };
  photo.state = "unusable";
  photo.error = null;
  setMessage(photo, "Marked as not a fluke / unusable: nothing stored. Undo to decide after all.");
  update(photo);
  summarize();
  moveOn(photo, hadFocus);
}

function undo(photo) {
  const d = photo.decision;
  if (!d || photo.busy) return;
  if (d.kind === "skip" || d.kind === "unusable") {
    photo.decision = null;
    photo.state = "identified";
    setMessage(photo, "Skip undone: decide below.");
    update(photo);
    summarize();
    return;
  }
  return write(photo, "undo", null, async () => {
    let gone = false;
    for (const id of d.image_ids || []) {
      const r = await api("DELETE", `gallery/${enc(d.whale_id)}/images/${enc(id)}`, { write: true });
      gone = r.identity_deleted;
    }
    photo.decision = null;
    photo.state = "identified";
    const n = (d.image_ids || []).length;
    setMessage(photo, n
      ? `Undone: photo #${d.image_ids.join(", #")} removed from ${d.whale_id}${gone ? ` (${d.whale_id} had no photos left and was removed)` : ""}.`
      : "Undone (nothing had been added).");
    if (n) galleryChanged();
  });
}

function retry(photo) {
  const e = photo.error;
  if (!e || photo.busy) return;
  if (e.action === "identify") return reidentify(photo);
  if (e.action === "assign") return assign(photo, e.arg);
  if (e.action === "enrol") return enrolNew(photo); // with the id as typed now (the user may have fixed it)
  if (e.action === "undo") return undo(photo);
}

function reidentify(photo) {
  if (photo.busy || queue.includes(photo)) return;
  photo.state = "pending";
  setMessage(photo, "Waiting to be identified…");
  update(photo);
  queue.push(photo);
  pump();
}

function focusNew(photo) {
  if (photo.refs.newInput.disabled) return;
  photo.refs.newInput.focus();
  photo.refs.newInput.select();
}

async function removePhoto(photo) {
  const undecided = !photo.decision;
  if (undecided && !(await confirmDialog(`Remove ${photo.name} from the list? No decision was made for it; nothing of it is stored.`, "Remove"))) return;
  const i = photos.indexOf(photo);
  photos.splice(i, 1);
  const q = queue.indexOf(photo);
  if (q >= 0) queue.splice(q, 1);
  const hadFocus = photo.card.contains(document.activeElement);
  photo.card.remove();
  URL.revokeObjectURL(photo.url);
  summarize();
  if (hadFocus) (photos[i] || photos[i - 1])?.card.focus() ?? $("#files").focus();
}

function clearDecided() {
  for (const p of photos.filter((x) => x.decision && !x.busy)) {
    photos.splice(photos.indexOf(p), 1);
    p.card.remove();
    URL.revokeObjectURL(p.url);
  }
  summarize();
}

function summarize() {
  const count = {};
  for (const p of photos) count[p.state] = (count[p.state] || 0) + 1;
  const parts = ["identified", "pending", "identifying", "error", "assigned", "enrolled", "skipped", "unusable"]
    .filter((s) => count[s])
    .map((s) => `${count[s]} ${STATE_LABEL[s].replace("…", "")}`);
  $("#summary").textContent = photos.length ? `${photos.length} photo${photos.length > 1 ? "s" : ""}: ${parts.join(", ")}.` : "No photos yet.";
  $("#clear-decided").disabled = !photos.some((p) => p.decision);
}

const hasUnfinishedWork = () => photos.some((p) => !p.decision);

// ---------------------------------------------------------------------------------------------
// Gallery view.

/**
 * Whale ids this page renamed, merged away or emptied, and how ("was renamed to X"): a card identified
 * before still lists them, and "This is X" must not re-create a whale under its old id (POST /gallery
 * creates an unknown id).
 */
const goneIds = new Map();

function idGone(whaleId, how) {
  goneIds.set(whaleId, how);
}

function idBack(whaleId) {
  goneIds.delete(whaleId);
}

// current: the whale open in the detail panel; images: its photos as last listed (GET /gallery/{id})
const gallery = { offset: 0, total: 0, q: "", current: null, images: [], stale: true };

async function loadWhales() {
  const params = new URLSearchParams({ offset: String(gallery.offset), limit: String(PAGE_SIZE) });
  if (gallery.q) params.set("q", gallery.q);
  try {
    const page = await api("GET", `gallery?${params}`);
    gallery.total = page.total;
    gallery.stale = false;
    const list = $("#whale-list");
    list.replaceChildren(...page.whales.map((w) => h("li", {},
      h("button", { type: "button", class: "whale-btn", "aria-pressed": String(w.whale_id === gallery.current), dataset: { whale: w.whale_id },
        onclick: () => openWhale(w.whale_id) },
      h("span", { class: "whale-id" }, w.whale_id), h("span", { class: "count" }, `${w.images} photo${w.images === 1 ? "" : "s"}`)))));
    const last = Math.min(page.offset + page.whales.length, page.total);
    $("#gallery-count").textContent = page.total
      ? `${page.total} whale${page.total === 1 ? "" : "s"}${gallery.q ? ` starting with “${gallery.q}”` : ""} · showing ${page.offset + 1}–${last}`
      : `No whale${gallery.q ? ` starts with “${gallery.q}”` : " in the gallery"}.`;
    $("#page-prev").disabled = gallery.offset === 0;
    $("#page-next").disabled = last >= page.total;
  } catch (err) {
    galleryStatus(`Could not list whales: ${err.detail}`, true);
  }
}

function galleryStatus(text, isError = false) {
  const el = $("#gallery-status");
  el.textContent = (isError ? "Error: " : "") + text;
  el.classList.toggle("error", isError);
}

async function openWhale(whaleId, { focus = true } = {}) {
  showView("gallery");
  if (gallery.stale) loadWhales();
  let detail;
  try {
    detail = await api("GET", `gallery/${enc(whaleId)}`);
  } catch (err) {
    galleryStatus(err.detail, true);
    return;
  }
  gallery.current = whaleId;
  gallery.images = detail.images;
  for (const b of document.querySelectorAll("#whale-list .whale-btn")) b.setAttribute("aria-pressed", String(b.dataset.whale === whaleId));
  const section = $("#whale-detail");
  section.hidden = false;
  $("#whale-h").textContent = `${whaleId} · ${detail.images.length} photo${detail.images.length === 1 ? "" : "s"}`;
  $("#whale-photos").replaceChildren(...detail.images.map((im) => {
    const meta = im.metadata || {};
    const place = fmtPlace(meta);
    const more = fmtMore(meta);
    return h("li", { dataset: { image: String(im.image_id) } },
      h("figure", {},
        im.thumbnail_url
          ? h("img", { src: im.thumbnail_url, alt: `Photo #${im.image_id} of ${whaleId}`, loading: "lazy" })
          : h("div", { class: "thumb placeholder" }, "no thumbnail"),
        h("figcaption", {}, `#${im.image_id}`, im.source ? ` · ${im.source}` : "",
          h("span", { class: "meta-when" }, meta.taken_at ? `taken ${fmtWhen(meta.taken_at)}` : "date unknown"),
          h("span", { class: "meta-where" }, place ? `at ${place}` : "place unknown"),
          more ? h("span", { class: "meta-more" }, more) : null,
          h("span", { class: "muted" }, `added ${im.added_at.slice(0, 16).replace("T", " ")}`))),
      h("div", { class: "photo-actions" },
        h("label", { class: "select" }, h("input", { type: "checkbox", class: "pick", value: String(im.image_id),
          "aria-label": `Select photo #${im.image_id} (to move several at once)`, onchange: showSelection }), "select"),
        h("button", { type: "button", class: "secondary small move", "aria-keyshortcuts": "v", onclick: () => movePhotos(whaleId, [im.image_id]) },
          "Move to… ", h("kbd", { "aria-hidden": "true" }, "v")),
        h("button", { type: "button", class: "secondary small edit", "aria-keyshortcuts": "d", onclick: () => editPhoto(whaleId, im.image_id) },
          "Edit date/place ", h("kbd", { "aria-hidden": "true" }, "d")),
        h("button", { type: "button", class: "danger small", onclick: () => deletePhoto(whaleId, im.image_id) }, `Delete photo #${im.image_id}`)));
  }));
  showSelection();
  if (focus) $("#whale-h").focus();
}

/** The photos ticked in the open whale (image ids). */
const selectedPhotos = () => [...document.querySelectorAll("#whale-photos input.pick:checked")].map((el) => Number(el.value));

function showSelection() {
  const n = selectedPhotos().length;
  const btn = $("#move-selected");
  btn.hidden = n === 0;
  btn.textContent = `Move ${n} selected…`;
}

// ---------------------------------------------------------------------------------------------
// Catalogue operations: rename, merge, move photos (split), edit a photo's date and place.

const KEEP_OPEN = Symbol("keep the form open");

/**
 * Ask for values in the form dialog and run the change with them. An error keeps the dialog open with the
 * API's message (so a taken or unknown id can be fixed), and so does `run` returning KEEP_OPEN (a refused
 * confirmation). Resolves to `run`'s result, or null when cancelled (Cancel or Esc).
 *
 * fields: [{name, label, value, hint, list, maxlength, placeholder, inputmode, textarea}]
 */
function formDialog({ title, intro = "", fields, okLabel, run }) {
  const dialog = $("#form-dialog");
  const form = $("#form-dialog-form");
  const error = $("#form-error");
  const ok = $("#form-ok");
  $("#form-h").textContent = title;
  $("#form-intro").textContent = intro;
  $("#form-intro").hidden = !intro;
  error.hidden = true;
  error.textContent = "";
  ok.textContent = okLabel;
  ok.disabled = false;
  const inputs = {};
  $("#form-fields").replaceChildren(...fields.map((f) => {
    const id = `form-${f.name}`;
    const attrs = { id, name: f.name, maxlength: f.maxlength, placeholder: f.placeholder, "aria-describedby": f.hint ? `${id}-hint` : null };
    const input = f.textarea
      ? h("textarea", { ...attrs, rows: "2" })
      : h("input", { ...attrs, type: "text", autocomplete: "off", spellcheck: "false", list: f.list, inputmode: f.inputmode });
    input.value = f.value ?? "";
    inputs[f.name] = input;
    if (f.list) input.addEventListener("input", () => suggestWhales(input.value));
    return h("div", { class: f.half ? "field half" : "field" }, h("label", { for: id }, f.label), input,
      f.hint ? h("p", { class: "hint muted", id: `${id}-hint` }, f.hint) : null);
  }));
  return new Promise((resolve) => {
    let result = null;
    let busy = false;
    const onSubmit = async (e) => {
      e.preventDefault();
      if (busy) return;
      busy = true;
      ok.disabled = true;
      error.hidden = true;
      try {
        const values = Object.fromEntries(Object.entries(inputs).map(([k, el]) => [k, el.value.trim()]));
        const out = await run(values);
        if (out !== KEEP_OPEN) {
          result = out;
          dialog.close("ok");
        }
      } catch (err) {
        const detail = String(err.detail ?? err.message);
        error.textContent = `Error: ${detail}`;
        error.hidden = false;
        // back to the field the message names (e.g. "latitude: ..."), else the first
        const named = Object.keys(inputs).find((k) => new RegExp(`\\b${k}\\b`).test(detail));
        (inputs[named] || Object.values(inputs)[0])?.focus();
        error.scrollIntoView({ block: "nearest" });
      } finally {
        busy = false;
        ok.disabled = false;
      }
    };
    const onCancel = () => dialog.close("cancel");
    const onEsc = (e) => {
      if (busy) e.preventDefault(); // the change is on its way: wait for its answer
    };
    form.addEventListener("submit", onSubmit);
    dialog.addEventListener("cancel", onEsc);
    $("#form-cancel").addEventListener("click", onCancel);
    dialog.addEventListener("close", () => {
      form.removeEventListener("submit", onSubmit);
      dialog.removeEventListener("cancel", onEsc);
      $("#form-cancel").removeEventListener("click", onCancel);
      resolve(result);
    }, { once: true });
    dialog.returnValue = "";
    dialog.showModal();
    const first = Object.values(inputs)[0];
    first?.focus();
    first?.select?.();
  });
}

let suggestTimer = null;

/** Fill the whale-id suggestions (the datalist of the id fields) with the ids starting with what is typed. */
function suggestWhales(prefix) {
  clearTimeout(suggestTimer);
  suggestTimer = setTimeout(async () => {
    const params = new URLSearchParams({ offset: "0", limit: "20" });
    if (prefix) params.set("q", prefix);
    try {
      const page = await api("GET", `gallery?${params}`);
      $("#whale-ids").replaceChildren(...page.whales.filter((w) => w.whale_id !== gallery.current)
        .map((w) => h("option", { value: w.whale_id }, `${w.images} photo${w.images === 1 ? "" : "s"}`)));
    } catch {
      /* suggestions only */
    }
  }, 150);
}

/** After a catalogue change: the header, the list and the detail panel show the gallery as it is now. */
async function afterChange(message, openId) {
  galleryChanged();
  galleryStatus(message);
  await loadWhales();
  if (openId) await openWhale(openId);
  else closeWhale();
}

const photoCount = (n) => `${n} photo${n === 1 ? "" : "s"}`;

async function renameWhale() {
  const from = gallery.current;
  if (!from) return;
  const r = await formDialog({
    title: `Rename ${from}`,
    intro: "Its photos, their dates and places, and its matches stay; only the id changes.",
    fields: [{ name: "whale_id", label: "New id", value: from, maxlength: "64",
      hint: "Letters, digits, _ . - (up to 64). An id in use is refused: merge the two whales instead." }],
    okLabel: "Rename",
    run: ({ whale_id }) => {
      if (!whale_id) throw new ApiError(0, "type the new id", "empty");
      if (whale_id === from) throw new ApiError(0, `${from} already has this id: type another`, "same");
      return api("PATCH", `gallery/${enc(from)}`, { json: { whale_id }, write: true });
    },
  });
  if (!r) return;
  idGone(from, `was renamed to ${r.whale_id}`);
  idBack(r.whale_id);
  await afterChange(`Renamed ${from} to ${r.whale_id}.`, r.whale_id);
}

async function mergeWhale() {
  const from = gallery.current;
  if (!from) return;
  const n = gallery.images.length;
  suggestWhales("");
  const r = await formDialog({
    title: `Merge ${from} into another whale`,
    intro: `For two ids that are one whale: ${from}'s ${photoCount(n)} move to the other whale and the id ${from} disappears.`,
    fields: [{ name: "into", label: "Merge into (a known whale)", list: "whale-ids", maxlength: "64",
      hint: "A photo the other whale already has (same file) is dropped, not doubled." }],
    okLabel: "Merge…",
    run: async ({ into }) => {
      if (!into) throw new ApiError(0, "type the id of the whale to merge into", "empty");
      if (into === from) throw new ApiError(0, `a whale cannot be merged into itself: choose another whale than ${from}`, "same");
      let target;
      try {
        target = await api("GET", `gallery/${enc(into)}`);
      } catch (err) {
        if (err.status === 404) throw new ApiError(404, `no whale ${into} in the gallery: merge needs a known whale (Rename gives ${from} a new id)`, "unknown");
        throw err;
      }
      const m = target.images.length;
      const sure = await confirmDialog(`Merge ${from} (${photoCount(n)}) into ${into} (${photoCount(m)})? ` +
        `${into} then has the photos of both and ${from} is removed from the gallery. ` +
        "Moving photos splits them again later, but no single step undoes a merge.", "Merge");
      if (!sure) return KEEP_OPEN;
      return api("POST", `gallery/${enc(from)}/merge`, { json: { into }, write: true });
    },
  });
  if (!r) return;
  idGone(from, `was merged into ${r.whale_id}`);
  const moved = r.moved_image_ids.length;
  const dropped = r.dropped_duplicates.length;
  await afterChange(`Merged ${from} into ${r.whale_id}: ${photoCount(moved)} moved` +
    (dropped ? `, ${dropped} that ${r.whale_id} already had (same file) dropped` : "") + `; ${from} is gone.`, r.whale_id);
}

async function movePhotos(from, imageIds) {
  const which = `photo${imageIds.length === 1 ? "" : "s"} #${imageIds.join(", #")}`;
  const all = imageIds.length === gallery.images.length;
  suggestWhales("");
  const r = await formDialog({
    title: `Move ${which} of ${from}`,
    intro: all
      ? `These are all of ${from}'s photos: ${from} is removed once they move (a rename or a merge says the same more plainly).`
      : `For a photo that shows another whale: it moves with its date, place and notes.`,
    fields: [{ name: "to", label: "To whale (known, or a new id)", list: "whale-ids", maxlength: "64",
      hint: "A known whale gets the photo; a new id creates a new whale with it (a split)." }],
    okLabel: "Move",
    run: ({ to }) => {
      if (!to) throw new ApiError(0, "type the id of the whale to move it to (a known one or a new one)", "empty");
      if (to === from) throw new ApiError(0, `the ${which} already belong${imageIds.length === 1 ? "s" : ""} to ${from}: type another id`, "same");
      return api("POST", `gallery/${enc(from)}/move`, { json: { image_ids: imageIds, to }, write: true });
    },
  });
  if (!r) return;
  idBack(r.whale_id);
  if (r.source_deleted) idGone(from, `lost its last photo to ${r.whale_id} and was removed`);
  await afterChange(`Moved ${which} to ${r.created ? "the new whale " : ""}${r.whale_id}` +
    (r.source_deleted ? `; ${from} had no photos left and was removed.` : "."), r.source_deleted ? r.whale_id : from);
}

const META_FIELDS = [
  { name: "taken_at", label: "Date taken", maxlength: "40", placeholder: "2019-07-14 or 2019-07-14T09:31:05-04:00",
    hint: "ISO 8601, with the UTC offset when known (without: the camera's clock)." },
  { name: "location", label: "Place name", maxlength: "200", placeholder: "e.g. Hervey Bay",
    hint: "A scoped search matches it exactly (case aside)." },
  { name: "latitude", label: "Latitude", inputmode: "decimal", placeholder: "-25.28", hint: "Degrees, south negative.", half: true },
  { name: "longitude", label: "Longitude", inputmode: "decimal", placeholder: "152.87", hint: "Degrees, west negative.", half: true },
  { name: "encounter_id", label: "Encounter id", maxlength: "100", half: true },
  { name: "photographer", label: "Photographer", maxlength: "200", half: true },
  { name: "notes", label: "Notes", maxlength: "2000", textarea: true },
];

async function editPhoto(whaleId, imageId) {
  const image = gallery.images.find((im) => im.image_id === imageId);
  const before = image?.metadata || {};
  const shown = (k) => (before[k] === null || before[k] === undefined ? "" : String(before[k]));
  const r = await formDialog({
    title: `Date and place of photo #${imageId} (${whaleId})`,
    intro: "An emptied field is cleared; the others stay as they are.",
    fields: META_FIELDS.map((f) => ({ ...f, value: shown(f.name) })),
    okLabel: "Save",
    run: (values) => {
      const changes = {};
      for (const f of META_FIELDS) if (values[f.name] !== shown(f.name)) changes[f.name] = values[f.name] || null;
      for (const k of ["latitude", "longitude"]) {
        if (typeof changes[k] === "string") {
          const x = Number(changes[k]);
          if (!Number.isFinite(x)) throw new ApiError(0, `${k}: “${changes[k]}” is not a number (decimal degrees with a point, e.g. -25.28)`, "number");
          changes[k] = x;
        }
      }
      if ("latitude" in changes || "longitude" in changes) {
        // the service takes the position as a pair
        const num = (k) => (k in changes ? changes[k] : before[k] ?? null);
        changes.latitude = num("latitude");
        changes.longitude = num("longitude");
      }
      if (!Object.keys(changes).length) return { unchanged: true };
      return api("PATCH", `gallery/${enc(whaleId)}/images/${enc(imageId)}`, { json: changes, write: true });
    },
  });
  if (!r) return;
  if (r.unchanged) {
    galleryStatus(`Photo #${imageId}: nothing changed.`);
    return;
  }
  galleryChanged();
  galleryStatus(`Photo #${imageId} of ${whaleId} saved: ${r.taken_at ? `taken ${fmtWhen(r.taken_at)}` : "date unknown"}, ` +
    `${fmtPlace(r) ? `at ${fmtPlace(r)}` : "place unknown"}.`);
  await openWhale(whaleId, { focus: false });
  $(`#whale-photos li[data-image="${imageId}"] button.edit`)?.focus();
}

async function deletePhoto(whaleId, imageId) {
  if (!(await confirmDialog(`Delete photo #${imageId} of ${whaleId} from the gallery? This cannot be undone.`))) return;
  try {
    const r = await api("DELETE", `gallery/${enc(whaleId)}/images/${enc(imageId)}`, { write: true });
    galleryChanged();
    if (r.identity_deleted) {
      idGone(whaleId, "was deleted");
      galleryStatus(`Photo #${imageId} deleted; ${whaleId} had no photos left and was removed from the gallery.`);
      closeWhale();
    } else {
      galleryStatus(`Photo #${imageId} of ${whaleId} deleted.`);
      await openWhale(whaleId, { focus: false });
      ($("#whale-photos button") || $("#whale-h")).focus();
    }
    await loadWhales();
  } catch (err) {
    galleryStatus(`Could not delete photo #${imageId}: ${err.detail}`, true);
  }
}

async function deleteWhale() {
  const whaleId = gallery.current;
  if (!whaleId || !(await confirmDialog(`Delete ${whaleId} and all its photos from the gallery? This cannot be undone.`, "Delete whale"))) return;
  try {
    await api("DELETE", `gallery/${enc(whaleId)}`, { write: true });
    idGone(whaleId, "was deleted");
    galleryChanged();
    galleryStatus(`${whaleId} deleted with all its photos.`);
    closeWhale();
    await loadWhales();
  } catch (err) {
    galleryStatus(`Could not delete ${whaleId}: ${err.detail}`, true);
  }
}

function closeWhale() {
  gallery.current = null;
  $("#whale-detail").hidden = true;
  $("#gallery-q").focus();
}

// ---------------------------------------------------------------------------------------------
// Views, keyboard, drag and drop.

function showView(name) {
  const review = name === "review";
  $("#review-view").hidden = !review;
  $("#gallery-view").hidden = review;
  $("#tab-review").setAttribute("aria-pressed", String(review));
  $("#tab-gallery").setAttribute("aria-pressed", String(!review));
  if (!review && gallery.stale) loadWhales();
}

const NOT_TEXT = new Set(["file", "button", "submit", "reset", "checkbox", "radio", "range", "color"]);

/** Whether keys typed now go into a field (then shortcuts stay out of the way). */
function typing(el) {
  if (!el) return false;
  if (el.tagName === "INPUT") return !NOT_TEXT.has(el.type);
  return el.isContentEditable || el.tagName === "TEXTAREA" || el.tagName === "SELECT";
}

function onKey(e) {
  if (e.ctrlKey || e.metaKey || e.altKey || e.defaultPrevented) return;
  if (document.querySelector("dialog[open]") || typing(e.target)) return;
  const card = e.target.closest?.(".photo-card");
  const photo = card && photos.find((p) => p.card === card);
  const go = (fn) => {
    e.preventDefault();
    fn();
  };
  if (e.key === "?") return go(() => { const d = $("#help"); d.open = !d.open; });
  if (e.key === "g") return go(() => { showView("gallery"); $("#gallery-q").focus(); });
  if (e.key === "r") return go(() => { showView("review"); (photos.find((p) => !p.decision)?.card || $("#files")).focus(); });
  if (!$("#gallery-view").hidden && gallery.current && !$("#whale-detail").hidden) {
    const li = e.target.closest?.("#whale-photos li");
    const imageId = li ? Number(li.dataset.image) : null;
    if (e.key === "e") return go(renameWhale);
    if (e.key === "m") return go(mergeWhale);
    if (li && e.key === "v") return go(() => movePhotos(gallery.current, [imageId]));
    if (li && e.key === "d") return go(() => editPhoto(gallery.current, imageId));
  }
  if (!photo) {
    if ((e.key === "j" || e.key === "k") && photos.length && !$("#review-view").hidden) go(() => photos[0].card.focus());
    return;
  }
  const i = photos.indexOf(photo);
  if (/^[1-9]$/.test(e.key)) {
    const pred = photo.result?.predictions?.[Number(e.key) - 1];
    if (!pred) return;
    return go(() => (pred.whale_id === NEW_WHALE ? focusNew(photo) : !photo.decision && assign(photo, pred.whale_id)));
  }
  switch (e.key) {
    case "n": return go(() => focusNew(photo));
    case "s": return go(() => skip(photo));
    case "x": return go(() => markUnusable(photo));
    case "u": return go(() => undo(photo));
    case "i": return go(() => reidentify(photo));
    case "j": return go(() => photos[Math.min(i + 1, photos.length - 1)].card.focus());
    case "k": return go(() => photos[Math.max(i - 1, 0)].card.focus());
    case "ArrowDown": if (e.target === card) go(() => photos[Math.min(i + 1, photos.length - 1)].card.focus()); return;
    case "ArrowUp": if (e.target === card) go(() => photos[Math.max(i - 1, 0)].card.focus()); return;
    default:
  }
}

function setupDrop() {
  let depth = 0;
  const zone = $("#upload-form");
  const hasFiles = (e) => [...(e.dataTransfer?.types || [])].includes("Files");
  document.addEventListener("dragenter", (e) => { if (hasFiles(e)) { depth++; zone.classList.add("dragging"); } });
  document.addEventListener("dragleave", (e) => { if (hasFiles(e) && --depth <= 0) { depth = 0; zone.classList.remove("dragging"); } });
  document.addEventListener("dragover", (e) => { if (hasFiles(e)) e.preventDefault(); });
  document.addEventListener("drop", (e) => {
    if (!hasFiles(e)) return;
    e.preventDefault();
    depth = 0;
    zone.classList.remove("dragging");
    showView("review");
    addFiles(e.dataTransfer.files);
  });
}

function init() {
  $("#files").addEventListener("change", (e) => {
    addFiles(e.target.files);
    e.target.value = ""; // the same photo can be picked again
  });
  $("#upload-form").addEventListener("submit", (e) => e.preventDefault());
  $("#clear-decided").addEventListener("click", clearDecided);
  $("#tab-review").addEventListener("click", () => showView("review"));
  $("#tab-gallery").addEventListener("click", () => showView("gallery"));
  $("#key-button").addEventListener("click", () => askKey("Changes to the gallery need the server's API key when it has one. It is kept for this browser tab only (sessionStorage)."));
  let debounce = null;
  const search = () => {
    gallery.q = $("#gallery-q").value.trim();
    gallery.offset = 0;
    loadWhales();
  };
  $("#gallery-search").addEventListener("submit", (e) => { e.preventDefault(); clearTimeout(debounce); search(); });
  $("#gallery-q").addEventListener("input", () => { clearTimeout(debounce); debounce = setTimeout(search, 250); });
  $("#page-prev").addEventListener("click", () => { gallery.offset = Math.max(0, gallery.offset - PAGE_SIZE); loadWhales(); });
  $("#page-next").addEventListener("click", () => { gallery.offset += PAGE_SIZE; loadWhales(); });
  $("#delete-whale").addEventListener("click", deleteWhale);
  $("#rename-whale").addEventListener("click", renameWhale);
  $("#merge-whale").addEventListener("click", mergeWhale);
  $("#move-selected").addEventListener("click", () => movePhotos(gallery.current, selectedPhotos()));
  for (const [, sel] of SCOPE_FIELDS) $(sel).addEventListener("input", showScopeSummary);
  document.addEventListener("keydown", onKey);
  window.addEventListener("beforeunload", (e) => {
    if (hasUnfinishedWork()) {
      e.preventDefault();
      e.returnValue = "";
    }
  });
  setupDrop();
  updateKeyButton();
  loadReady();
}

init();
