// Subjects of the selected gallery: a paginated list with delete.

import { api } from "./api.js";
import { confirmAction } from "./confirm.js";
import { showError, showSuccess } from "./notice.js";
import { plural } from "./text.js";

const PAGE_SIZE = 20;
const list = document.getElementById("subjects-list");
const empty = document.getElementById("subjects-empty");
const summary = document.getElementById("subjects-summary");
const more = document.getElementById("subjects-more");
const refreshButton = document.getElementById("subjects-refresh");
const options = document.getElementById("subject-options");

function metadataText(metadata) {
  const entries = Object.entries(metadata || {});
  return entries.map(([k, v]) => `${k}: ${typeof v === "string" ? v : JSON.stringify(v)}`).join(" · ");
}

function dateText(iso) {
  return iso ? new Date(iso).toLocaleDateString(undefined, { dateStyle: "medium" }) : "";
}

function cell(className, text, title = "") {
  const element = document.createElement("span");
  element.className = className;
  element.textContent = text;
  if (title) element.title = title; // the whole text of a cut-off cell
  return element;
}

export function initSubjects(onChanged) {
  let gallery = "";
  let nextToken = null;
  let generation = 0;

  function row(subject) {
    const item = document.createElement("li");
    item.className = "subject-row";
    item.dataset.testid = "subject-row";
    item.dataset.subjectId = subject.subject_id;
    const remove = document.createElement("button");
    remove.type = "button";
    remove.className = "button button-ghost button-danger-text";
    remove.dataset.testid = "subject-delete";
    remove.textContent = "Delete";
    remove.setAttribute("aria-label", `Delete subject ${subject.subject_id}`);
    remove.addEventListener("click", () => removeSubject(subject, item));
    const created = dateText(subject.created_at);
    item.append(
      cell("subject-id", subject.subject_id, subject.subject_id),
      cell("subject-faces", plural(subject.face_count, "face")),
      cell("subject-meta", metadataText(subject.metadata), metadataText(subject.metadata)),
      cell("subject-date", created ? `enrolled ${created}` : ""),
      remove,
    );
    return item;
  }

  function updateState() {
    const count = list.children.length;
    empty.hidden = count > 0;
    empty.textContent = gallery ? "No subjects enrolled yet." : "No gallery selected.";
    summary.textContent = count ? `${plural(count, "subject")}${nextToken ? "+" : ""}` : "";
    more.hidden = !nextToken;
    refreshButton.disabled = !gallery;
    options.replaceChildren(
      ...[...list.children].map((item) => new Option(item.dataset.subjectId)),
    );
  }

  async function loadPage(token) {
    const mine = generation;
    more.disabled = true;
    try {
      const page = await api.subjects(gallery, token, PAGE_SIZE);
      if (mine !== generation) return;
      list.append(...page.subjects.map(row));
      nextToken = page.next_page_token || null;
    } catch (error) {
      if (mine === generation) showError(error);
    } finally {
      more.disabled = false;
      updateState();
    }
  }

  async function removeSubject(subject, item) {
    const ok = await confirmAction(
      `Delete “${subject.subject_id}”?`,
      `This removes the subject and its ${plural(subject.face_count, "enrolled face")} ` +
        `from “${gallery}”. It cannot be undone.`,
    );
    if (!ok) return;
    try {
      const { deleted_faces: deleted } = await api.deleteSubject(gallery, subject.subject_id);
      // The focus was on this row's button: move it to a neighbour's rather than lose it.
      const neighbour = item.nextElementSibling || item.previousElementSibling;
      const focus = document.activeElement;
      const hadFocus = item.contains(focus) || focus === document.body;
      item.remove();
      updateState();
      if (hadFocus) (neighbour?.querySelector("button") || refreshButton).focus();
      showSuccess(`Deleted “${subject.subject_id}” (${plural(deleted, "face")}).`);
      onChanged();
    } catch (error) {
      showError(error);
    }
  }

  function show(name) {
    gallery = name;
    generation += 1;
    nextToken = null;
    list.replaceChildren();
    updateState();
    if (gallery) return loadPage(null);
    return Promise.resolve();
  }

  more.addEventListener("click", () => loadPage(nextToken));
  refreshButton.addEventListener("click", () => show(gallery));

  return { show, reload: () => show(gallery) };
}
