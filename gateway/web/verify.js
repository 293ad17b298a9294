// Verify: the largest face of a photo against another photo's, or an enrolled subject.

import { api } from "./api.js";
import { keepingFocus } from "./busy.js";
import { bindDropzone } from "./dropzone.js";
import { renderOverlay } from "./faces.js";
import { showError, showInfo } from "./notice.js";

const $ = (id) => document.getElementById(id);
const button = $("verify-button");
const result = $("verify-result");
const subjectField = $("verify-subject-field");
const subjectInput = $("verify-subject");

/** One photo slot: a drop zone with a preview where the compared face is drawn. */
function slot(zone, onChange) {
  const parts = {
    file: null,
    empty: zone.querySelector(".slot-empty"),
    frame: zone.querySelector(".photo-frame"),
    img: zone.querySelector("img"),
    overlay: zone.querySelector(".overlay"),
    input: zone.querySelector("input[type=file]"),
  };
  const change = zone.querySelector(".slot-change");
  for (const pick of zone.querySelectorAll("[data-pick]")) {
    pick.addEventListener("click", () => parts.input.click());
  }
  bindDropzone(zone, parts.input, (file) => {
    parts.file = file;
    if (parts.img.src) URL.revokeObjectURL(parts.img.src);
    parts.img.src = URL.createObjectURL(file);
    parts.img.alt = `Photo ${file.name}`;
    parts.overlay.replaceChildren();
    parts.frame.classList.remove("no-preview");
    // The service reads more formats (HEIC, TIFF…) than browsers show.
    parts.img.decode().catch(() => {
      if (parts.file === file) parts.frame.classList.add("no-preview");
    });
    parts.empty.hidden = true;
    parts.frame.hidden = false;
    change.hidden = false;
    zone.classList.add("has-photo");
    onChange();
  });
  parts.drawFace = (face, match) => {
    const image = { width: parts.img.naturalWidth, height: parts.img.naturalHeight };
    const status = { label: "compared", state: match ? "match" : "unknown" };
    if (face && image.width) renderOverlay(parts.overlay, image, [face], { status });
  };
  return parts;
}

function showResult(reply) {
  const decision = $("verify-decision");
  decision.textContent = reply.match ? "Same person" : "Different people";
  decision.className = `pill ${reply.match ? "pill-match" : "pill-nomatch"}`;
  $("verify-similarity").textContent = reply.similarity.toFixed(3);
  $("verify-threshold").textContent = reply.threshold.toFixed(2);
  const clamp = (v) => `${Math.max(0, Math.min(1, v)) * 100}%`;
  result.querySelector(".meter-fill").style.width = clamp(reply.similarity);
  result.querySelector(".meter-mark").style.left = clamp(reply.threshold);
  result.classList.toggle("is-match", reply.match);
  result.hidden = false;
}

export function initVerify(currentGallery) {
  let mode = "photo";
  const a = slot($("verify-a"), update);
  const b = slot($("verify-b"), update);

  function update() {
    result.hidden = true;
    const other = mode === "photo" ? b.file : subjectInput.value.trim() && currentGallery();
    button.disabled = !(a.file && other);
  }

  for (const radio of document.querySelectorAll("input[name=verify-mode]")) {
    radio.addEventListener("change", () => {
      mode = radio.value;
      $("verify-b").hidden = mode !== "photo";
      subjectField.hidden = mode !== "subject";
      update();
    });
  }
  subjectInput.addEventListener("input", update);

  button.addEventListener("click", () => keepingFocus(button, compare));

  async function compare() {
    button.disabled = true;
    showInfo("Comparing faces…");
    try {
      const reply = mode === "photo"
        ? await api.verifyPhotos(a.file, b.file)
        : await api.verifySubject(a.file, currentGallery(), subjectInput.value.trim());
      a.drawFace(reply.face, reply.match);
      if (mode === "photo") b.drawFace(reply.other_face, reply.match);
      showResult(reply);
      showInfo(`Similarity ${reply.similarity.toFixed(3)}: ${reply.match ? "a match" : "not a match"}.`);
    } catch (error) {
      showError(error);
    } finally {
      button.disabled = false;
    }
  }

  return { setGallery: update };
}
