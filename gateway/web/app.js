// facescore web page: wires the gallery selector, workspace, verify and subjects panels.

import { api, apiKey, setApiKey } from "./api.js";
import { initGalleries } from "./galleries.js";
import { initSubjects } from "./subjects.js";
import { initVerify } from "./verify.js";
import { initWorkspace } from "./workspace.js";

function initApiKey(onChange) {
  const input = document.getElementById("api-key");
  const settings = document.getElementById("settings");
  input.value = apiKey();
  settings.classList.toggle("has-key", Boolean(input.value));
  settings.addEventListener("keydown", (event) => {
    if (event.key !== "Escape" || !settings.open) return;
    settings.open = false;
    settings.querySelector("summary").focus();
  });
  input.addEventListener("change", () => {
    setApiKey(input.value.trim());
    settings.classList.toggle("has-key", Boolean(input.value.trim()));
    onChange();
  });
}

async function showVersion() {
  try {
    const v = await api.version();
    document.getElementById("version").textContent =
      `facescore ${v.version} · detector ${v.detector.name} · recognizer ${v.recognizer.name} · ` +
      `threshold ${v.threshold.toFixed(2)}`;
  } catch {
    // The footer stays empty; the gallery list reports why the service is unreachable.
  }
}

function main() {
  // The panels call each other back only after this wiring is done.
  const subjects = initSubjects(() => galleries.refresh());
  const workspace = initWorkspace(() => {
    galleries.refresh();
    subjects.reload();
  });
  const galleries = initGalleries((name) => {
    workspace.setGallery(name);
    verify.setGallery();
    subjects.show(name);
  });
  const verify = initVerify(() => galleries.current());
  initApiKey(async () => {
    showVersion();
    await galleries.refresh();
    subjects.reload();
  });
  galleries.refresh();
  showVersion();
}

main();
