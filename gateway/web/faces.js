// Drawing faces over a photo: boxes, landmarks and labels, positioned in percent of the image.

const LANDMARK_NAMES = ["left eye", "right eye", "nose", "left mouth corner", "right mouth corner"];

const percent = (value, total) => `${(100 * value) / total}%`;

function place(element, box, image) {
  element.style.left = percent(box.x1, image.width);
  element.style.top = percent(box.y1, image.height);
  element.style.width = percent(box.x2 - box.x1, image.width);
  element.style.height = percent(box.y2 - box.y1, image.height);
}

function landmark(point, image, index) {
  const dot = document.createElement("span");
  dot.className = "landmark";
  dot.title = LANDMARK_NAMES[index] || "landmark";
  dot.style.left = percent(point.x, image.width);
  dot.style.top = percent(point.y, image.height);
  return dot;
}

/** The label and state of a face: its number, or the identify outcome when there is one. */
export function faceStatus(face, result) {
  if (!result) return { label: `${face.index + 1}`, state: "detected" };
  if (result.unknown || !result.subject_id) return { label: "unknown", state: "unknown" };
  return { label: result.subject_id, state: "match" };
}

/**
 * Draw `faces` over the photo. `results` maps a face index to its identify result, or
 * `status` ({label, state}) applies to every face; `onSelect(index)` makes the boxes
 * clickable (the face list is the keyboard path).
 */
export function renderOverlay(overlay, image, faces, options = {}) {
  const { selected = null, results, status, onSelect } = options;
  overlay.replaceChildren();
  for (const face of faces) {
    const { label, state } = status || faceStatus(face, results?.get(face.index));
    const box = document.createElement("div");
    box.className = `face-box is-${state}`;
    box.classList.toggle("is-selected", face.index === selected);
    box.classList.toggle("is-clickable", Boolean(onSelect));
    box.dataset.testid = "face-box";
    box.dataset.index = face.index;
    box.title = `Face ${face.index + 1}`;
    place(box, face.box, image);
    const tag = document.createElement("span");
    tag.className = "face-tag";
    tag.textContent = label;
    box.append(tag);
    if (onSelect) box.addEventListener("click", () => onSelect(face.index));
    overlay.append(box, ...face.landmarks.map((p, i) => landmark(p, image, i)));
  }
}

/** A square crop of the face from a loaded <img>, for lists. */
export function faceThumbnail(img, face, size = 56) {
  const canvas = document.createElement("canvas");
  canvas.width = size * 2;
  canvas.height = size * 2;
  canvas.className = "thumb";
  canvas.setAttribute("aria-hidden", "true");
  const { x1, y1, x2, y2 } = face.box;
  const side = Math.max(x2 - x1, y2 - y1) * 1.25;
  const cx = (x1 + x2) / 2;
  const cy = (y1 + y2) / 2;
  const context = canvas.getContext("2d");
  context.drawImage(img, cx - side / 2, cy - side / 2, side, side, 0, 0, canvas.width, canvas.height);
  return canvas;
}

const degrees = (value) => `${Math.round(value)}°`;

/** The quality readout as [label, value] pairs. */
export function qualityReadout(face) {
  const q = face.quality;
  return [
    ["size", `${Math.round(q.face_size_px)} px`],
    ["sharpness", `${Math.round(q.sharpness)}`],
    ["yaw", degrees(q.yaw)],
    ["pitch", degrees(q.pitch)],
    ["roll", degrees(q.roll)],
    ["brightness", `${Math.round(q.brightness * 100)}%`],
  ];
}
