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
 * first. The API key (when the server has one) is asked for on the first 401 (again on a 403) and kept
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
const enc = encodeURIComponent;
const thumbUrl = (whaleId, imageId) => `gallery/${enc(whaleId)}/images/${enc(imageId)}`;

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
 * user is asked for the key and the request is sent again (FormData bodies can be re-sent).
 */
async function api(method, path, { body = null, write = false } = {}) {
  for (let attempt = 0; ; attempt++) {
    const headers = { Accept: "application/json" };
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
    for (const mode of ready.scoring_modes || []) {
      const thr = ready.thresholds?.[mode];
      select.append(h("option", { value: mode }, mode + (typeof thr === "number" ? ` (new_whale below ${fmt(thr, 2)})` : "")));
    }
    if (ready.scoring) select.value = ready.scoring;
  } catch (err) {
    $("#server-info").textContent = `Service not ready: ${err.detail}`;
  }
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
  refs.candsWrap = h("div", { class: "cands-wrap" }, h("h4", { class: "cands-h" }, "Top 5"), refs.candidates);
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
  h("figure", { class: "query" }, refs.frame, refs.caption),
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
  refs.caption.textContent =
    `${w}×${hgt} px${result.exif_rotated ? " (turned upright from EXIF)" : ""} · ${result.boxes.length} boxes embedded ` +
    `(first solid, variants dashed${result.detected_box ? ", detector box orange" : ""}) · ${result.scoring} scoring, ` +
    `new_whale below ${fmt(result.threshold, 2)}`;

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
        facts.length ? h("p", { class: "evidence muted" }, facts.map(([k, v]) => `${k} ${v}`).join(" · ")) : null),
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

const gallery = { offset: 0, total: 0, q: "", current: null, stale: true };

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
  for (const b of document.querySelectorAll("#whale-list .whale-btn")) b.setAttribute("aria-pressed", String(b.dataset.whale === whaleId));
  const section = $("#whale-detail");
  section.hidden = false;
  $("#whale-h").textContent = `${whaleId} · ${detail.images.length} photo${detail.images.length === 1 ? "" : "s"}`;
  $("#whale-photos").replaceChildren(...detail.images.map((im) => h("li", { dataset: { image: String(im.image_id) } },
    h("figure", {},
      im.thumbnail_url
        ? h("img", { src: im.thumbnail_url, alt: `Photo #${im.image_id} of ${whaleId}`, loading: "lazy" })
        : h("div", { class: "thumb placeholder" }, "no thumbnail"),
      h("figcaption", {}, `#${im.image_id}`, im.source ? ` · ${im.source}` : "", h("br"), h("span", { class: "muted" }, `added ${im.added_at.slice(0, 16).replace("T", " ")}`))),
    h("button", { type: "button", class: "danger small", onclick: () => deletePhoto(whaleId, im.image_id) }, `Delete photo #${im.image_id}`))));
  if (focus) $("#whale-h").focus();
}

async function deletePhoto(whaleId, imageId) {
  if (!(await confirmDialog(`Delete photo #${imageId} of ${whaleId} from the gallery? This cannot be undone.`))) return;
  try {
    const r = await api("DELETE", `gallery/${enc(whaleId)}/images/${enc(imageId)}`, { write: true });
    galleryChanged();
    if (r.identity_deleted) {
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
    const r = await api("DELETE", `gallery/${enc(whaleId)}`, { write: true });
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
