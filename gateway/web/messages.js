// Every error code of docs/rest-api.md as a sentence for people.

const SERVICES = {
  score: "scoring",
  detect: "face detection",
  embed: "face recognition",
  qdrant: "gallery database",
  redis: "cache",
  cache: "cache",
};

const number = (value) => {
  const n = Number(value);
  return Number.isFinite(n) ? String(Math.round(n * 100) / 100) : String(value);
};

// Each enrollment gate: what is wrong, and the measured value against the limit.
const GATES = {
  min_face_size: ["the face is too small", (v, l) => `${v} px; at least ${l} px needed`],
  min_sharpness: ["the face is too blurry", (v, l) => `sharpness ${v}; at least ${l} needed`],
  min_detection_score: [
    "the face was not detected with enough confidence",
    (v, l) => `${v}; at least ${l} needed`,
  ],
  max_abs_yaw: ["the head is turned too far to the side", (v, l) => `${v}°; at most ${l}° allowed`],
};

function qualityMessage(p) {
  const gate = GATES[p.gate];
  const reason = gate
    ? `${gate[0]} (${gate[1](number(p.value), number(p.limit))})`
    : `it fails the ${p.gate || "quality"} check`;
  return `This face is not good enough to enroll: ${reason}. Try a sharper, more frontal photo.`;
}

function retryHint(error) {
  return error.retryAfter ? `try again in ${error.retryAfter} s` : "try again shortly";
}

function validationMessage(p) {
  const fields = (p.errors || []).map((e) => e.field).filter(Boolean);
  return fields.length
    ? `Some fields are not valid: ${fields.join(", ")}.`
    : "The request has a field that is not valid.";
}

const MESSAGES = {
  no_face: () => "No face was found in this photo.",
  multiple_faces: () => "This photo has more than one face. Select the face to use.",
  face_quality_too_low: (p) => qualityMessage(p),
  corrupt_image: () => "This photo is damaged or incomplete and could not be read.",
  empty_image: () => "The file is empty.",
  image_too_many_pixels: () => "This photo has too many pixels. Resize it and try again.",
  image_too_complex: () =>
    "This photo is encoded in an unusually complex way. Save it again as an ordinary JPEG and try again.",
  invalid_metadata: () => 'Metadata must be a JSON object, for example {"team": "research"}.',
  invalid_argument: (p) =>
    p.field ? `The value of “${p.field}” is not valid.` : "A value in the request is not valid.",
  invalid_crop: () => "The requested face region is not valid.",
  too_many_crops: () => "Too many face regions were requested at once.",
  missing_api_key: () => "This service needs an API key. Enter it under “API key” at the top.",
  invalid_api_key: () => "The API key was not accepted. Check it under “API key” at the top.",
  insufficient_scope: (p) =>
    `Your API key may not do this${p.scope ? ` (it needs the “${p.scope}” scope)` : ""}.`,
  gallery_not_found: () => "This gallery does not exist any more. Choose or create another one.",
  subject_not_found: () => "This subject is not in the gallery.",
  face_not_found: () => "This face is not in the gallery.",
  not_found: () => "The service does not know this address. Is the gateway up to date?",
  method_not_allowed: () => "The service does not allow this action.",
  gallery_exists: () => "A gallery with this name already exists.",
  image_too_large: () => "This photo file is too large. Use a smaller photo.",
  request_too_large: () => "The upload is too large. Use a smaller photo.",
  unsupported_image_format: () =>
    "This file is not a supported image. Use a JPEG, PNG, WebP, GIF, BMP, TIFF, HEIC or AVIF photo.",
  unsupported_media_type: () => "The service did not accept the format of the request.",
  validation_error: (p) => validationMessage(p),
  rate_limited: (p, error) => `Too many requests in a short time; ${retryHint(error)}.`,
  dependency_unavailable: (p, error) => {
    const service = SERVICES[p.dependency] || p.dependency || "backend";
    return `The ${service} service is unavailable; ${retryHint(error)}.`;
  },
  not_ready: (p, error) => `The service is still starting; ${retryHint(error)}.`,
  queue_full: (p, error) => `The service is busy; ${retryHint(error)}.`,
  deadline_exceeded: () => "The service took too long to answer. Try again.",
  embedding_model_mismatch: () =>
    "This gallery was built with a different recognition model and cannot be used with the current one.",
  internal: () => "Something went wrong on the server. Try again; if it persists, contact the operator.",
  unaddressable_subject_id: () =>
    "A subject ID that is “.” or “..” or contains “/” cannot be sent in a web address: " +
    "use another ID.",
  network_error: () => "The service could not be reached. Check the connection and try again.",
  camera_unavailable: () => "This browser cannot use a camera here (it needs HTTPS or localhost).",
  camera_denied: () => "Access to the camera was refused. Allow it in the browser to take a photo.",
  camera_failed: () => "The camera could not be started.",
};

/** `{title, detail}` for an ApiError (or any Error): title for people, detail from the service. */
export function describeError(error) {
  const problem = error.problem || {};
  const message = MESSAGES[error.code];
  const title = message
    ? message(problem, error)
    : `The request failed${error.status ? ` (HTTP ${error.status})` : ""}.`;
  const detail = problem.detail || (message ? "" : error.message);
  const code = error.code ? `code: ${error.code}` : "";
  return { title, detail: [detail, code].filter(Boolean).join(" · ") };
}
