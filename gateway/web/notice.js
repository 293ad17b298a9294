// The status line: progress and results fade out, errors stay until dismissed or replaced.

import { describeError } from "./messages.js";

const notice = document.getElementById("notice");
const title = document.getElementById("notice-title");
const detail = document.getElementById("notice-detail");
const HIDE_AFTER_MS = 6000;
let timer = null;

function show(kind, text, secondary = "") {
  clearTimeout(timer);
  notice.dataset.kind = kind;
  title.textContent = text;
  detail.textContent = secondary;
  detail.hidden = !secondary;
  notice.hidden = false;
  if (kind !== "error") timer = setTimeout(hideNotice, HIDE_AFTER_MS);
}

function hideNotice() {
  clearTimeout(timer);
  notice.hidden = true;
}

export const showInfo = (text, secondary) => show("info", text, secondary);
export const showSuccess = (text, secondary) => show("success", text, secondary);

export function showError(error) {
  const { title: text, detail: secondary } = describeError(error);
  show("error", text, secondary);
}

document.getElementById("notice-close").addEventListener("click", hideNotice);
