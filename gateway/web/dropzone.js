// A drop target for one photo file, with a hidden file input as the keyboard path.

function firstFile(fileList) {
  return fileList && fileList.length ? fileList[0] : null;
}

const carriesFiles = (event) => Boolean(event.dataTransfer?.types.includes("Files"));

// A file dropped beside a drop zone would make the browser leave the page to show it.
for (const type of ["dragover", "drop"]) {
  document.addEventListener(type, (event) => {
    if (!carriesFiles(event) || event.defaultPrevented) return;
    event.preventDefault();
    event.dataTransfer.dropEffect = "none";
  });
}

/** Calls `onFile(file)` for a file dropped on `zone` or picked with `input`. */
export function bindDropzone(zone, input, onFile) {
  zone.addEventListener("dragover", (event) => {
    event.preventDefault();
    event.dataTransfer.dropEffect = "copy";
    zone.classList.add("is-dragging");
  });
  zone.addEventListener("dragleave", (event) => {
    if (!zone.contains(event.relatedTarget)) zone.classList.remove("is-dragging");
  });
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    zone.classList.remove("is-dragging");
    const file = firstFile(event.dataTransfer.files);
    if (file) onFile(file);
  });
  input.addEventListener("change", () => {
    const file = firstFile(input.files);
    input.value = "";
    if (file) onFile(file);
  });
}
