// The REST API of docs/rest-api.md: one function per call, errors as ApiError.

const BASE = "/api/v1";
const KEY_STORAGE = "facescore.apiKey";

/** A failed call: `code` is the problem's stable reason, or a client-side one. */
export class ApiError extends Error {
  constructor(code, status, problem = {}, retryAfter = null) {
    super(problem.detail || code);
    this.code = code;
    this.status = status;
    this.problem = problem;
    this.retryAfter = retryAfter;
  }
}

export function apiKey() {
  return localStorage.getItem(KEY_STORAGE) || "";
}

export function setApiKey(value) {
  if (value) localStorage.setItem(KEY_STORAGE, value);
  else localStorage.removeItem(KEY_STORAGE);
}

// Reverse proxies answer some errors themselves, without a problem body.
const CODE_OF_STATUS = {
  401: "missing_api_key",
  403: "insufficient_scope",
  404: "not_found",
  413: "request_too_large",
  429: "rate_limited",
  502: "dependency_unavailable",
  503: "dependency_unavailable",
  504: "deadline_exceeded",
};

function fallbackCode(status, key) {
  if (status === 401 && key) return "invalid_api_key";
  return CODE_OF_STATUS[status] || "http_error";
}

async function problemOf(response) {
  const type = response.headers.get("content-type") || "";
  if (type.includes("json")) {
    try {
      return await response.json();
    } catch {
      // An unreadable body: fall back to the status.
    }
  }
  return { status: response.status, title: response.statusText };
}

function retryAfterOf(response) {
  const seconds = Number.parseInt(response.headers.get("retry-after") || "", 10);
  return Number.isFinite(seconds) ? seconds : null;
}

async function call(method, path, { json, form, query } = {}) {
  const url = new URL(BASE + path, window.location.origin);
  for (const [name, value] of Object.entries(query || {})) {
    if (value !== undefined && value !== null && value !== "") url.searchParams.set(name, value);
  }
  const headers = { Accept: "application/json, application/problem+json" };
  const key = apiKey();
  if (key) headers["X-API-Key"] = key;
  let body;
  if (json !== undefined) {
    headers["Content-Type"] = "application/json";
    body = JSON.stringify(json);
  } else if (form) {
    body = form;
  }

  let response;
  try {
    response = await fetch(url, { method, headers, body });
  } catch (error) {
    throw new ApiError("network_error", 0, { detail: error.message });
  }
  if (!response.ok) {
    const problem = await problemOf(response);
    const code = problem.code || fallbackCode(response.status, key);
    throw new ApiError(code, response.status, problem, retryAfterOf(response));
  }
  return response.status === 204 ? null : response.json();
}

function photoForm(fields) {
  const form = new FormData();
  for (const [name, value] of Object.entries(fields)) {
    if (value === undefined || value === null || value === "") continue;
    if (value instanceof Blob) form.append(name, value, value.name || `${name}.jpg`);
    else form.append(name, String(value));
  }
  return form;
}

const enc = encodeURIComponent;

/**
 * A subject ID as one path segment. Browsers resolve "." and ".." segments (even as %2E)
 * and the gateway routes on the decoded path, so such IDs would reach another address.
 */
function subjectSegment(subjectId) {
  if (subjectId === "." || subjectId === ".." || subjectId.includes("/")) {
    throw new ApiError("unaddressable_subject_id", 0, { detail: `subject ID “${subjectId}”` });
  }
  return enc(subjectId);
}

export const api = {
  version: () => call("GET", "/version"),

  analyze: (image) => call("POST", "/analyze", { form: photoForm({ image }) }),

  galleries: () => call("GET", "/galleries"),

  createGallery: (name) => call("POST", "/galleries", { json: { name } }),

  subjects: (gallery, pageToken, pageSize) =>
    call("GET", `/galleries/${enc(gallery)}/subjects`, {
      query: { page_size: pageSize, page_token: pageToken },
    }),

  deleteSubject: async (gallery, subjectId) =>
    call("DELETE", `/galleries/${enc(gallery)}/subjects/${subjectSegment(subjectId)}`),

  enroll: async (gallery, subjectId, image, faceIndex, metadata) =>
    call("POST", `/galleries/${enc(gallery)}/subjects/${subjectSegment(subjectId)}/faces`, {
      form: photoForm({
        image,
        face_index: faceIndex,
        metadata: metadata ? JSON.stringify(metadata) : null,
      }),
    }),

  identify: (gallery, image) =>
    call("POST", `/galleries/${enc(gallery)}/identify`, { form: photoForm({ image }) }),

  verifyPhotos: (image, otherImage) =>
    call("POST", "/verify", { form: photoForm({ image, other_image: otherImage }) }),

  verifySubject: (image, gallery, subjectId) =>
    call("POST", "/verify", { form: photoForm({ image, gallery, subject_id: subjectId }) }),
};
