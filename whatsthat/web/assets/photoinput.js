// whatsthat's photo input (whatsthat/web/photoinput.py says what and why): Upload, Take a photo,
// drop anywhere on the page, paste; each photo shrunk here through a canvas and sent in a message of
// its own; the kernel answers "received" once a choice has arrived, else the page says the connection
// was lost (the "went to sleep" banner's script, asleep.js, exposes window.whatsthatAsleep).
// The kernel answers "received" as soon as a choice has arrived: this long without it means it was lost.
// The photos must first cross the phone's network: 30 s, plus their bytes at 50 kB/s (0.4 Mbit/s).
const ACK_MS = 30000, ACK_BYTES_PER_MS = 50;
let counter = 0;

function mb(bytes) {
  return (bytes / 1048576).toFixed(bytes < 10485760 ? 1 : 0) + " MB";
}

function toBlob(canvas, quality) {
  return new Promise((resolve) => canvas.toBlob(resolve, "image/jpeg", quality));
}

// A JPEG of at most maxSide px aiming at target bytes, upright (EXIF orientation applied by
// createImageBitmap); the file itself when it is small enough already; null when the browser cannot
// decode it (not an image, or a format it does not read, e.g. HEIC outside Safari).
async function shrink(file, maxSide, target) {
  let bitmap;
  try {
    bitmap = await createImageBitmap(file, { imageOrientation: "from-image" });
  } catch (e) {
    return null;
  }
  try {
    const side = Math.max(bitmap.width, bitmap.height);
    if (side <= maxSide && file.size <= target && /^image\/(jpeg|png|webp|gif|bmp)$/.test(file.type)) return file;
    let scale = Math.min(1, maxSide / side), best = null;
    for (let attempt = 0; attempt < 6; attempt++) {
      const canvas = document.createElement("canvas");
      canvas.width = Math.max(1, Math.round(bitmap.width * scale));
      canvas.height = Math.max(1, Math.round(bitmap.height * scale));
      const context = canvas.getContext("2d");
      context.fillStyle = "#fff"; // a transparent PNG becomes white, not black
      context.fillRect(0, 0, canvas.width, canvas.height);
      context.imageSmoothingQuality = "high";
      context.drawImage(bitmap, 0, 0, canvas.width, canvas.height);
      for (const quality of [0.9, 0.8, 0.7]) {
        const blob = await toBlob(canvas, quality);
        if (!blob) return best;
        best = blob;
        if (blob.size <= target) return blob;
      }
      scale *= 0.7;
    }
    return best;
  } finally {
    bitmap.close();
  }
}

function button(text, className) {
  const b = document.createElement("button");
  b.type = "button";
  b.className = "whatsthat-photoinput-button " + className;
  b.textContent = text;
  return b;
}

function fileInput(accept, multiple, capture) {
  const input = document.createElement("input");
  input.type = "file";
  input.accept = accept;
  input.multiple = multiple;
  if (capture) input.setAttribute("capture", capture);
  input.className = "whatsthat-photoinput-file";
  input.tabIndex = -1; // the visible button is the one the keyboard reaches
  return input;
}

function filesOf(list) {
  return Array.from(list || []).filter((f) => f); // not an image? the server says so, by name
}

function render({ model, el }) {
  el.classList.add("whatsthat-photoinput");
  const upload = button(model.get("description"), "whatsthat-upload");
  const camera = button(model.get("camera_description"), "whatsthat-camera");
  const uploadInput = fileInput(model.get("accept"), model.get("multiple"), null);
  const cameraInput = fileInput(model.get("accept"), false, "environment");
  uploadInput.setAttribute("aria-label", model.get("description"));
  cameraInput.setAttribute("aria-label", model.get("camera_description"));
  const hint = document.createElement("div");
  hint.className = "whatsthat-photoinput-hint";
  hint.textContent = "or drop or paste a photo anywhere on this page";
  const status = document.createElement("div");
  status.className = "whatsthat-photoinput-status";
  status.setAttribute("role", "status");
  status.setAttribute("aria-live", "polite");
  const row = document.createElement("div");
  row.className = "whatsthat-photoinput-row";
  row.append(upload, camera, uploadInput, cameraInput);
  el.append(row, hint, status);

  let waiting = null; // {batch, timer}: the choice sent, until the kernel says it arrived
  let last = []; // the photos last sent (Files), which the kernel keeps: asleep.js takes them across a reload

  function say(text, problem) {
    status.textContent = text;
    status.classList.toggle("whatsthat-photoinput-problem", !!problem);
  }

  function lost(files) {
    const asleep = window.whatsthatAsleep;
    if (asleep) asleep.lost(files);
    else say("The connection to the server was lost: reload the page to classify again.", true);
  }

  async function send(files) {
    files = filesOf(files);
    if (!files.length || model.get("disabled")) return;
    const asleep = window.whatsthatAsleep;
    if (asleep && (await asleep.check())) return asleep.keepAndReload({ photos: files });
    const maxFiles = model.get("max_files"), maxBytes = model.get("max_bytes");
    const notes = [];
    if (files.length > maxFiles) {
      notes.push(`Only the first ${maxFiles} of ${files.length} photos are classified.`);
      files = files.slice(0, maxFiles);
    }
    say(files.length === 1 ? "Preparing the photo..." : `Preparing ${files.length} photos...`);
    const ready = [];
    let total = 0;
    for (const file of files) {
      const name = file.name || "photo.jpg";
      let blob = await shrink(file, model.get("max_side"), model.get("target_bytes"));
      if (!blob && file.size <= maxBytes) blob = file; // not shrinkable here: the server decodes and checks it
      if (!blob) {
        notes.push(`${name} is ${mb(file.size)}, and this browser cannot shrink it: ` +
          `photos up to ${mb(maxBytes)} only. Try a JPEG or PNG, or a smaller photo.`);
      } else if (total + blob.size > model.get("max_total")) {
        notes.push(`${name} was not sent: too much at once (${mb(model.get("max_total"))} in all). Send it on its own.`);
      } else {
        total += blob.size;
        ready.push({ name, blob, file });
      }
    }
    if (!ready.length) return say(notes.join(" "), true);
    const batch = `${Date.now()}-${++counter}`;
    for (const [index, { name, blob, file }] of ready.entries()) {
      const buffer = await blob.arrayBuffer();
      model.send({ event: "photo", batch, index, name, type: blob.type || file.type, size: blob.size,
                   original_size: file.size, last_modified: file.lastModified || 0 }, undefined, [buffer]);
    }
    model.send({ event: "done", batch, count: ready.length });
    if (waiting) clearTimeout(waiting.timer);
    const sent = ready.map(({ name, blob }) => new File([blob], name, { type: blob.type || "image/jpeg" }));
    last = sent;
    const patience = ACK_MS + total / ACK_BYTES_PER_MS;
    waiting = { batch, timer: setTimeout(() => { waiting = null; lost(sent); }, patience) };
    say(notes.join(" ") + (notes.length ? " " : "") +
        (ready.length === 1 ? "Classifying the photo..." : `Classifying ${ready.length} photos...`), notes.length > 0);
  }

  function onMessage(msg) {
    if (!msg || msg.event !== "received" || !waiting || msg.batch !== waiting.batch) return;
    clearTimeout(waiting.timer);
    waiting = null;
    if (!status.classList.contains("whatsthat-photoinput-problem")) say("");
  }
  model.on("msg:custom", onMessage);

  upload.addEventListener("click", () => uploadInput.click());
  camera.addEventListener("click", () => cameraInput.click());
  for (const input of [uploadInput, cameraInput]) {
    input.addEventListener("change", () => {
      const files = Array.from(input.files || []);
      input.value = ""; // choosing the same photo again is a new choice
      send(files);
    });
  }
  function syncDisabled() {
    upload.disabled = camera.disabled = model.get("disabled");
  }
  model.on("change:disabled", syncDisabled);
  syncDisabled();

  // drop anywhere on the page, paste anywhere (the page has no text field to paste into)
  function hasFiles(event) {
    return event.dataTransfer && Array.from(event.dataTransfer.types || []).includes("Files");
  }
  function onDragOver(event) {
    if (!hasFiles(event)) return;
    event.preventDefault();
    event.dataTransfer.dropEffect = "copy";
    document.body.classList.add("whatsthat-dragging");
  }
  function onDragLeave(event) {
    if (!event.relatedTarget) document.body.classList.remove("whatsthat-dragging");
  }
  function onDrop(event) {
    document.body.classList.remove("whatsthat-dragging");
    if (!event.dataTransfer || !event.dataTransfer.files.length) return;
    event.preventDefault();
    send(event.dataTransfer.files);
  }
  function onPaste(event) {
    const data = event.clipboardData;
    if (!data) return;
    const files = Array.from(data.files || []).filter((f) => f.type.startsWith("image/"));
    if (!files.length) return;
    event.preventDefault();
    send(files);
  }
  document.addEventListener("dragover", onDragOver);
  document.addEventListener("dragleave", onDragLeave);
  document.addEventListener("drop", onDrop);
  document.addEventListener("paste", onPaste);
  // asleep.js keeps the last photos across a reload, and gives them back
  window.whatsthatPhotoInput = { choose: send, last: () => last };

  return () => {
    document.removeEventListener("dragover", onDragOver);
    document.removeEventListener("dragleave", onDragLeave);
    document.removeEventListener("drop", onDrop);
    document.removeEventListener("paste", onPaste);
    model.off("msg:custom", onMessage);
    model.off("change:disabled", syncDisabled);
    if (window.whatsthatPhotoInput && window.whatsthatPhotoInput.choose === send) delete window.whatsthatPhotoInput;
  };
}

export default { render };
