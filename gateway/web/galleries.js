// The gallery selector in the top bar, and the form that creates a gallery.

import { api } from "./api.js";
import { showError, showSuccess } from "./notice.js";
import { plural } from "./text.js";

const STORAGE = "facescore.gallery";
const select = document.getElementById("gallery-select");
const newButton = document.getElementById("gallery-new");
const form = document.getElementById("gallery-form");
const nameInput = document.getElementById("gallery-name");

function option(value, text) {
  const element = document.createElement("option");
  element.value = value;
  element.textContent = text;
  return element;
}

function fill(galleries, wanted) {
  if (!galleries.length) {
    select.replaceChildren(option("", "No galleries yet"));
    select.disabled = true;
    return "";
  }
  select.replaceChildren(
    ...galleries.map((g) => option(g.name, `${g.name} · ${plural(g.face_count, "face")}`)),
  );
  select.disabled = false;
  select.value = galleries.some((g) => g.name === wanted) ? wanted : galleries[0].name;
  return select.value;
}

function toggleForm(open) {
  form.hidden = !open;
  newButton.setAttribute("aria-expanded", String(open));
  if (open) nameInput.focus();
  else newButton.focus();
}

/** Wires the selector; `onChange(name)` runs whenever the chosen gallery changes. */
export function initGalleries(onChange) {
  let current = "";

  const choose = (name) => {
    if (name === current) return;
    current = name;
    if (name) localStorage.setItem(STORAGE, name);
    onChange(name);
  };

  async function refresh(wanted = current || localStorage.getItem(STORAGE)) {
    try {
      const { galleries } = await api.galleries();
      choose(fill(galleries, wanted));
    } catch (error) {
      select.replaceChildren(option("", "Unavailable"));
      select.disabled = true;
      showError(error);
    }
  }

  select.addEventListener("change", () => choose(select.value));
  newButton.addEventListener("click", () => toggleForm(form.hidden));
  document.getElementById("gallery-cancel").addEventListener("click", () => toggleForm(false));
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const name = nameInput.value.trim();
    try {
      await api.createGallery(name);
    } catch (error) {
      showError(error);
      return;
    }
    nameInput.value = "";
    toggleForm(false);
    showSuccess(`Gallery “${name}” created.`);
    await refresh(name);
  });

  return { current: () => current, refresh };
}
