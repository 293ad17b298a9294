// A modal yes/no question on a <dialog>; resolves true when confirmed.

const dialog = document.getElementById("confirm-dialog");
const heading = document.getElementById("confirm-title");
const text = document.getElementById("confirm-text");
const okButton = document.getElementById("confirm-ok");

export function confirmAction(title, message, action = "Delete") {
  heading.textContent = title;
  text.textContent = message;
  okButton.textContent = action;
  dialog.returnValue = "cancel";
  dialog.showModal();
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => resolve(dialog.returnValue === "ok"), { once: true });
  });
}
