// The photo workspace: upload or capture, analyze, select a face, enroll it, identify.

import { api, ApiError } from "./api.js";
import { keepingFocus } from "./busy.js";
import { captureFrame, startCamera, stopCamera } from "./camera.js";
import { bindDropzone } from "./dropzone.js";
import { faceStatus, faceThumbnail, qualityReadout, renderOverlay } from "./faces.js";
import { showError, showInfo, showSuccess } from "./notice.js";
import { plural } from "./text.js";

const $ = (id) => document.getElementById(id);
const el = {
  stage: $("stage"),
  empty: $("stage-empty"),
  frame: $("photo-frame"),
  img: $("photo-img"),
  overlay: $("overlay"),
  camera: $("camera"),
  video: $("camera-video"),
  busy: $("stage-busy"),
  busyText: $("stage-busy-text"),
  input: $("photo-input"),
  identify: $("identify-button"),
  list: $("faces-list"),
  listEmpty: $("faces-empty"),
  summary: $("faces-summary"),
  enrollForm: $("enroll-form"),
  enrollTarget: $("enroll-target"),
  enrollButton: $("enroll-button"),
  subjectId: $("subject-id"),
  metadata: $("subject-metadata"),
};

const state = {
  gallery: "",
  photo: null, // the File being shown
  image: null, // {width, height} as the service saw it
  faces: [],
  results: null, // Map face index -> identify result, after Identify
  threshold: null,
  selected: null, // face index
  preview: false, // whether the browser could decode the photo (for thumbnails)
  busy: false,
};

function showView(view) {
  el.empty.hidden = view !== "empty";
  el.frame.hidden = view !== "photo";
  el.camera.hidden = view !== "camera";
  el.stage.classList.toggle("has-photo", view !== "empty");
}

function setBusy(text) {
  state.busy = Boolean(text);
  el.busy.hidden = !text;
  el.busyText.textContent = text || "";
  el.stage.setAttribute("aria-busy", String(state.busy));
  updateControls();
}

function updateControls() {
  const ready = state.photo && state.faces.length && !state.busy;
  el.identify.disabled = !(ready && state.gallery);
  el.identify.textContent = state.gallery ? `Identify in ${state.gallery}` : "Identify";
  el.enrollButton.disabled = !(ready && state.gallery && state.selected !== null);
  el.enrollTarget.textContent = enrollHint();
}

function enrollHint() {
  if (!state.gallery) return "Create or choose a gallery first.";
  if (state.selected === null) return "Select a face: click its box or pick it in the list.";
  return `Face ${state.selected + 1} selected, into “${state.gallery}”.`;
}

// Rendering.

function candidateRow(candidate, result, threshold) {
  const item = document.createElement("li");
  const chosen = !result.unknown && candidate.subject_id === result.subject_id;
  item.className = `candidate${chosen ? " is-match" : ""}`;
  item.dataset.testid = "candidate";
  const name = document.createElement("span");
  name.className = "candidate-name";
  name.textContent = candidate.subject_id;
  name.title = candidate.subject_id;
  const bar = document.createElement("span");
  bar.className = "bar";
  bar.setAttribute("aria-hidden", "true");
  const fill = document.createElement("span");
  fill.className = "bar-fill";
  fill.style.width = `${Math.max(0, Math.min(1, candidate.similarity)) * 100}%`;
  const mark = document.createElement("span");
  mark.className = "bar-mark";
  mark.style.left = `${Math.max(0, Math.min(1, threshold)) * 100}%`;
  bar.append(fill, mark);
  const value = document.createElement("span");
  value.className = "candidate-value";
  value.textContent = candidate.similarity.toFixed(2);
  item.append(name, bar, value);
  return item;
}

function qualityList(face) {
  const list = document.createElement("dl");
  list.className = "quality";
  list.dataset.testid = "face-quality";
  for (const [label, value] of qualityReadout(face)) {
    const term = document.createElement("dt");
    term.textContent = label;
    const data = document.createElement("dd");
    data.textContent = value;
    list.append(term, data);
  }
  return list;
}

function faceItem(face) {
  const result = state.results?.get(face.index);
  const { label, state: status } = faceStatus(face, result);
  const item = document.createElement("li");
  item.className = `face-item is-${status}`;
  item.classList.toggle("is-selected", face.index === state.selected);
  item.dataset.testid = "face-item";
  item.dataset.index = face.index;

  const button = document.createElement("button");
  button.type = "button";
  button.className = "face-select";
  button.setAttribute("aria-pressed", String(face.index === state.selected));
  if (state.preview) button.append(faceThumbnail(el.img, face));
  const name = document.createElement("span");
  name.className = "face-name";
  name.textContent = `Face ${face.index + 1}`;
  const tag = document.createElement("span");
  tag.className = "face-label";
  tag.dataset.testid = "face-label";
  tag.textContent = result ? label : `score ${face.detection_score.toFixed(2)}`;
  button.append(name, tag);
  button.addEventListener("click", () => select(face.index));
  item.append(button, qualityList(face));

  if (result?.candidates.length) {
    const candidates = document.createElement("ol");
    candidates.className = "candidates";
    candidates.setAttribute("aria-label", `Best matches for face ${face.index + 1}`);
    candidates.append(...result.candidates.map((c) => candidateRow(c, result, state.threshold)));
    item.append(candidates);
  } else if (result) {
    const none = document.createElement("p");
    none.className = "muted small";
    none.textContent = "No similar subject in the gallery.";
    item.append(none);
  }
  return item;
}

function summaryText() {
  if (!state.photo || state.busy) return "";
  const total = plural(state.faces.length, "face");
  if (!state.results) return total;
  const known = [...state.results.values()].filter((r) => !r.unknown).length;
  const unknown = state.faces.length - known;
  return `${total} · ${known} known · ${unknown} unknown · threshold ${state.threshold.toFixed(2)}`;
}

/** Without a browser preview (HEIC, TIFF…), an empty frame of the photo's shape holds the boxes. */
function shapeFrame() {
  const { image } = state;
  const placeholder = Boolean(image && !state.preview);
  el.frame.classList.toggle("no-preview", placeholder);
  el.frame.style.aspectRatio = placeholder ? `${image.width} / ${image.height}` : "";
  el.frame.style.width = placeholder ? `min(100%, ${(72 * image.width) / image.height}vh)` : "";
}

function render() {
  shapeFrame();
  if (state.image) {
    renderOverlay(el.overlay, state.image, state.faces, {
      selected: state.selected,
      results: state.results,
      onSelect: select,
    });
  } else {
    el.overlay.replaceChildren();
  }
  el.list.replaceChildren(...state.faces.map(faceItem));
  el.listEmpty.hidden = state.faces.length > 0;
  el.listEmpty.textContent = state.photo && !state.busy
    ? "No face was found in this photo."
    : "Faces found in the photo appear here. Select one to enroll it.";
  el.summary.textContent = summaryText();
  updateControls();
}

/** Scrolls the face list (not the page) so that `item` is in view. */
function revealInList(item) {
  const list = el.list;
  const top = item.offsetTop;
  const bottom = top + item.offsetHeight;
  if (top < list.scrollTop) list.scrollTop = top;
  else if (bottom > list.scrollTop + list.clientHeight) list.scrollTop = bottom - list.clientHeight;
}

function select(index) {
  state.selected = index;
  render();
  const item = el.list.querySelector(`[data-index="${index}"]`);
  item.querySelector(".face-select").focus({ preventScroll: true });
  revealInList(item);
}

// Actions.

async function decodePreview(file) {
  if (el.img.src) URL.revokeObjectURL(el.img.src);
  el.img.src = URL.createObjectURL(file);
  el.img.alt = `Uploaded photo ${file.name}`;
  try {
    await el.img.decode();
    return true;
  } catch {
    return false;
  }
}

async function setPhoto(file) {
  closeCamera();
  Object.assign(state, { photo: file, image: null, faces: [], results: null, selected: null });
  showView("photo");
  render();
  setBusy("Finding faces…");
  const [preview, analysis] = await Promise.allSettled([decodePreview(file), api.analyze(file)]);
  if (state.photo !== file) return; // another photo came in meanwhile
  state.preview = preview.value === true;
  setBusy(null);
  if (analysis.status === "rejected") {
    Object.assign(state, { photo: null });
    showView("empty");
    render();
    showError(analysis.reason);
    return;
  }
  state.image = analysis.value.image;
  state.faces = analysis.value.faces;
  render();
  if (!state.faces.length) {
    showError(new ApiError("no_face", 0));
    return;
  }
  showInfo(
    `Found ${plural(state.faces.length, "face")}. Select one to enroll it, or identify them.`,
    state.preview ? "" : "This browser cannot preview this photo; its faces are listed.",
  );
}

async function identify() {
  await keepingFocus(el.identify, identifyPhoto);
}

async function identifyPhoto() {
  setBusy("Identifying…");
  try {
    const reply = await api.identify(state.gallery, state.photo);
    state.threshold = reply.threshold;
    state.results = new Map(reply.faces.map((r) => [r.face.index, r]));
    state.faces = reply.faces.map((r) => r.face);
    state.image = reply.image;
    setBusy(null);
    render();
    const known = reply.faces.filter((r) => !r.unknown).length;
    const unknown = reply.faces.length - known;
    if (reply.faces.length && reply.faces.every((r) => !r.candidates.length)) {
      // Only an empty gallery has no candidate at all.
      showInfo(
        `No one is enrolled in “${state.gallery}” yet, so every face is unknown.`,
        "Select a face and enroll it first.",
      );
      return;
    }
    showInfo(`Identified ${plural(reply.faces.length, "face")}: ${known} known, ${unknown} unknown.`);
  } catch (error) {
    setBusy(null);
    showError(error);
  }
}

function parseMetadata(text) {
  if (!text.trim()) return null;
  let value;
  try {
    value = JSON.parse(text);
  } catch (error) {
    throw new ApiError("invalid_metadata", 0, { detail: error.message });
  }
  if (typeof value !== "object" || value === null || Array.isArray(value)) {
    throw new ApiError("invalid_metadata", 0, { detail: "metadata must be a JSON object" });
  }
  return value;
}

async function enroll(onEnrolled) {
  const subjectId = el.subjectId.value.trim();
  const index = state.selected;
  let metadata;
  try {
    metadata = parseMetadata(el.metadata.value);
  } catch (error) {
    showError(error);
    el.metadata.focus();
    return;
  }
  el.enrollButton.disabled = true;
  try {
    const reply = await api.enroll(state.gallery, subjectId, state.photo, index, metadata);
    showSuccess(
      reply.created
        ? `Enrolled face ${index + 1} as “${subjectId}” in “${state.gallery}”.`
        : `Face ${index + 1} was already enrolled as “${subjectId}”.`,
    );
    onEnrolled();
  } catch (error) {
    showError(error);
  } finally {
    updateControls();
  }
}

// Camera.

async function openCamera() {
  showView("camera");
  $("camera-capture").disabled = true;
  try {
    await startCamera(el.video);
    $("camera-capture").disabled = false;
  } catch (error) {
    closeCamera();
    showError(error);
  }
}

function closeCamera() {
  if (el.camera.hidden) return;
  stopCamera(el.video);
  showView(state.photo ? "photo" : "empty");
}

async function capture() {
  try {
    await setPhoto(await captureFrame(el.video));
  } catch (error) {
    showError(error);
  }
}

/** Wires the workspace; `onEnrolled()` runs after each enrollment. */
export function initWorkspace(onEnrolled) {
  bindDropzone(el.stage, el.input, setPhoto);
  $("photo-choose").addEventListener("click", () => el.input.click());
  $("camera-open").addEventListener("click", openCamera);
  $("camera-capture").addEventListener("click", capture);
  $("camera-cancel").addEventListener("click", closeCamera);
  el.identify.addEventListener("click", identify);
  el.enrollForm.addEventListener("submit", (event) => {
    event.preventDefault();
    keepingFocus(el.enrollButton, () => enroll(onEnrolled));
  });
  render();

  return {
    setGallery(name) {
      state.gallery = name;
      state.results = null;
      render();
    },
  };
}
