// Images the video starts (or ends) from: picked or dropped, shown at once as a preview,
// uploaded through POST /v1/uploads and the signed PUT, and named in the request's
// `conditions` by the gs:// URI the upload answered with. And the body of an "Extend".

import { api, putUpload } from "./api.js";

// What the API conditions on as an image (the profiles' media types); it decides from
// the bytes, this only spares a round trip for an obviously wrong file.
const IMAGE_TYPES = ["image/png", "image/jpeg", "image/webp"];
const FRAME_STEP = 8;
const EXTEND_FRAMES = 9; // the API's default: the earlier video's last 9 frames

export class KeyframePicker {
  // input: <input type=file>, drop: the drop zone, preview: <img>, clear: <button>,
  // error: the field's error <p>, note: a hint that says where the upload stands.
  constructor({ input, drop, preview, clear, error, note, announce }) {
    Object.assign(this, { input, drop, preview, clear, error, note, announce });
    this.upload = null; // a promise of the gs:// URI, while a file is chosen
    input.addEventListener("change", () => input.files[0] && this.choose(input.files[0]));
    clear.addEventListener("click", () => this.reset());
    drop.addEventListener("dragover", (event) => {
      event.preventDefault();
      drop.classList.add("dragging");
    });
    drop.addEventListener("dragleave", () => drop.classList.remove("dragging"));
    drop.addEventListener("drop", (event) => {
      event.preventDefault();
      drop.classList.remove("dragging");
      const file = event.dataTransfer.files[0];
      if (file) this.choose(file);
    });
  }

  // The picker's label ("First frame"), to start a message shown under it.
  get label() {
    return this.input.labels[0].firstChild.textContent.trim();
  }

  showError(message) {
    this.error.hidden = !message;
    this.error.textContent = message || "";
    this.input.setAttribute("aria-invalid", message ? "true" : "false");
  }

  choose(file) {
    this.reset();
    if (!IMAGE_TYPES.includes(file.type)) {
      this.showError(`${file.name} is not a PNG, JPEG or WebP image`);
      return;
    }
    // A blob: URL: the preview needs no round trip and the file never leaves the page
    // except through the signed PUT.
    this.objectUrl = URL.createObjectURL(file);
    this.preview.src = this.objectUrl;
    this.preview.alt = `Chosen image: ${file.name}`;
    this.preview.hidden = false;
    this.clear.hidden = false;
    this.note.textContent = `Uploading ${file.name}…`;
    const upload = (async () => {
      const ticket = await api.createUpload(file.type, file.size);
      await putUpload(ticket, file);
      return ticket.uri;
    })();
    this.upload = upload;
    upload.then(
      (uri) => {
        if (this.upload !== upload) return; // replaced or removed meanwhile
        this.uri = uri;
        this.note.textContent = `${file.name} uploaded`;
        this.announce(`${file.name} uploaded`);
      },
      (failure) => {
        if (this.upload !== upload) return;
        this.note.textContent = "";
        this.showError(`${file.name} could not be uploaded: ${failure.message}`);
      },
    );
  }

  reset() {
    if (this.objectUrl) URL.revokeObjectURL(this.objectUrl);
    this.objectUrl = null;
    this.upload = null;
    this.uri = null;
    this.preview.removeAttribute("src");
    this.preview.hidden = true;
    this.clear.hidden = true;
    this.note.textContent = "";
    this.input.value = "";
    this.showError("");
  }

  // The chosen image's URI once uploaded (waits for an upload under way); null for none.
  async resolved() {
    return this.upload ? await this.upload : null;
  }
}

// `conditions` for the pickers (the first at frame 0, the last at -1, the last frame), and
// the picker each item came from, in the same order: an error the API reports on
// `$.conditions[i]` belongs to pickers[i] (with only a last image, that is item 0).
// Failed uploads reject with every failure, each with its `picker`, as `failures` (the
// error itself is one of them, a 401 first).
export async function keyframeConditions(first, last) {
  const both = [first, last];
  const settled = await Promise.allSettled(both.map((picker) => picker.resolved()));
  const failures = [];
  const conditions = [];
  const pickers = [];
  [0, -1].forEach((frame_index, i) => {
    const { status, value, reason } = settled[i];
    if (status === "rejected") failures.push(Object.assign(reason, { picker: both[i] }));
    else if (value) {
      conditions.push({ image: value, frame_index });
      pickers.push(both[i]);
    }
  });
  if (failures.length) {
    const error = failures.find((failure) => failure.status === 401) || failures[0];
    throw Object.assign(error, { failures });
  }
  return { conditions: conditions.length ? conditions : null, pickers };
}

// "Extend" on a finished job: the same look (model, size, steps, fps) continued from its
// last 9 frames, with the form's prompt when one is typed, else the job's own; as long as
// the job, and at least 17 frames (a new job must be longer than what it continues from).
export function extendBody(job, formPrompt) {
  const request = job.request || {};
  const body = {};
  for (const field of ["negative_prompt", "model", "width", "height", "num_inference_steps", "fps"]) {
    if (request[field] !== undefined && request[field] !== null) body[field] = request[field];
  }
  body.prompt = formPrompt.trim() || request.prompt;
  body.num_frames = Math.max(request.num_frames || 0, EXTEND_FRAMES + FRAME_STEP);
  body.extend = { job_id: job.job_id };
  return body;
}
