// The page: key, form, job list and player wired together.

import { ApiError, api, apiKey } from "./api.js";
import { KeyframePicker, extendBody, keyframeConditions } from "./conditions.js";
import { JobList, PAGE_SIZE } from "./jobs.js";
import { follow, stopAll } from "./live.js";
import { NUMBER_FIELDS, hint, loadRules, validate } from "./rules.js";

const $ = (id) => document.getElementById(id);
const FORM_FIELDS = ["prompt", "negative_prompt", "model", ...NUMBER_FIELDS];

let rules = null;
let keyframes = null; // {first, last}: KeyframePicker
let pickersShowingErrors = new Set(); // what showErrors wrote under pickers, to clear
const submittedHere = new Set();

function announce(text) {
  // Cleared first so that the same message twice is announced twice.
  $("status").textContent = "";
  requestAnimationFrame(() => ($("status").textContent = text));
}

function label(job) {
  const prompt = job.request?.prompt || job.job_id;
  return prompt.length > 40 ? `“${prompt.slice(0, 37)}…”` : `“${prompt}”`;
}

// --- the key ------------------------------------------------------------------------------

function showKeyForm(message) {
  stopAll();
  jobs.reset();
  $("app").hidden = true;
  $("key-state").hidden = true;
  $("key-section").hidden = false;
  const error = $("api-key-error");
  error.hidden = !message;
  error.textContent = message || "";
  $("api-key").setAttribute("aria-invalid", message ? "true" : "false");
  $("api-key").focus();
}

async function startWithKey(key) {
  try {
    await api.listJobs(PAGE_SIZE, null, key);
  } catch (error) {
    if (error.status === 401) {
      apiKey.clear();
      showKeyForm(`The API rejected this key (${error.message}). Check it and enter it again.`);
      announce("API key rejected");
      return;
    }
    showKeyForm(`The key could not be checked: ${error.message}`);
    return;
  }
  apiKey.set(key);
  $("api-key").value = "";
  $("key-section").hidden = true;
  $("key-state").hidden = false;
  $("app").hidden = false;
  announce("API key accepted");
  // Focus first, then load the list: focusing after it would pull the caret out of a
  // field the user already started typing in while the list loaded.
  $("f-prompt").focus();
  await refreshJobs();
}

function onUnauthorized(error) {
  apiKey.clear();
  showKeyForm(`The API rejected the key (${error.message}). Enter a valid key.`);
}

// --- the form -----------------------------------------------------------------------------

function fieldError(field, message) {
  const input = $(`f-${field}`);
  const error = $(`f-${field}-error`);
  if (!input || !error) return false;
  error.hidden = !message;
  error.textContent = message || "";
  input.setAttribute("aria-invalid", message ? "true" : "false");
  return true;
}

function formError(message) {
  $("form-error").hidden = !message;
  $("form-error").textContent = message || "";
}

// A picker's own message (a file refused when chosen) stays until it is chosen again.
function clearErrors() {
  FORM_FIELDS.forEach((field) => fieldError(field, ""));
  pickersShowingErrors.forEach((picker) => picker.showError(""));
  pickersShowingErrors = new Set();
  formError("");
}

// Shows API-style errors ({path: "$.height", message}) next to their fields. One on an item
// of `conditions` ("$.conditions[1].image"), or naming its `picker`, goes under that
// picker: `pickers[i]` made item i of the request. One on `conditions` as a whole goes
// with the form's errors, as it is about no one picker.
function showErrors(errors, summary, pickers = []) {
  clearErrors();
  const general = [];
  const underPickers = new Map(); // picker -> its messages
  let first = null;
  for (const { path, message, picker: named } of errors) {
    const field = path.startsWith("$.") ? path.slice(2).split(/[.[]/)[0] : "";
    const item = /^\$\.conditions\[(\d+)\]/.exec(path);
    const picker = named || (item ? pickers[Number(item[1])] : null);
    // The first picker's input is f-conditions, but `conditions` is no field of its own.
    const own = field !== "conditions" ? field : "";
    if (picker) {
      underPickers.set(picker, [...(underPickers.get(picker) || []), message]);
      first = first || picker.input;
    } else if (own && fieldError(own, `${labelOf(own)} ${message}`)) {
      first = first || $(`f-${field}`);
    } else {
      general.push(field === "conditions" ? `Images: ${message}` : message);
    }
  }
  for (const [picker, messages] of underPickers) {
    picker.showError(`${picker.label} ${messages.join("; ")}`);
    pickersShowingErrors.add(picker);
  }
  if (general.length || summary) formError([summary, ...general].filter(Boolean).join(" "));
  (first || $("form-error")).focus();
  announce(summary || general.join(" "));
}

function labelOf(field) {
  return $(`f-${field}`).labels[0].firstChild.textContent.trim();
}

function applyModel(model) {
  const defaults = rules.models[model].defaults;
  for (const field of NUMBER_FIELDS) {
    $(`f-${field}`).value = field === "seed" ? "" : defaults[field];
    $(`f-${field}`).placeholder = String(defaults[field]);
  }
  for (const field of ["prompt", "negative_prompt", ...NUMBER_FIELDS]) {
    $(`f-${field}-hint`).textContent = hint(field, rules, model);
  }
  $("f-model-hint").textContent = rules.models[model].description;
}

// The numeric fields share one template; each gets ids that tie label, hint and error
// to its input.
const NUMBER_LABELS = {
  width: "Width (pixels)",
  height: "Height (pixels)",
  num_frames: "Frames",
  num_inference_steps: "Inference steps",
  seed: "Seed",
};

function addNumberFields() {
  const template = $("number-field");
  for (const field of NUMBER_FIELDS) {
    const node = template.content.firstElementChild.cloneNode(true);
    const id = `f-${field}`;
    node.dataset.field = field;
    node.querySelector(".name").textContent = NUMBER_LABELS[field];
    node.querySelector(".optional").hidden = field !== "seed";
    node.querySelector("label").htmlFor = id;
    const input = node.querySelector("input");
    Object.assign(input, { id, name: field });
    input.setAttribute("aria-describedby", `${id}-hint ${id}-error`);
    node.querySelector(".hint").id = `${id}-hint`;
    node.querySelector(".field-error").id = `${id}-error`;
    $("number-fields").append(node);
  }
}

function setUpForm() {
  addNumberFields();
  const select = $("f-model");
  select.replaceChildren();
  for (const name of Object.keys(rules.models)) {
    const option = new Option(name, name, name === rules.defaultModel, name === rules.defaultModel);
    select.append(option);
  }
  select.disabled = select.options.length < 2;
  applyModel(rules.defaultModel);
  select.addEventListener("change", () => applyModel(select.value));
  $("f-prompt").maxLength = rules.schema.prompt.maxLength;
  const picker = (name) =>
    new KeyframePicker({
      input: $(name === "first" ? "f-conditions" : "f-last-image"),
      drop: $(`${name}-drop`),
      preview: $(`${name}-preview`),
      clear: $(`${name}-clear`),
      error: $(name === "first" ? "f-conditions-error" : "f-last-image-error"),
      note: $(`${name}-note`),
      announce,
    });
  keyframes = { first: picker("first"), last: picker("last") };
  $("job-form").addEventListener("submit", onSubmit);
  $("submit").disabled = false;
}

async function onSubmit(event) {
  event.preventDefault();
  const form = new FormData($("job-form"));
  const values = Object.fromEntries(FORM_FIELDS.map((f) => [f, String(form.get(f) ?? "")]));
  values.model = $("f-model").value;
  const { body, errors } = validate(values, rules);
  if (errors.length) {
    showErrors(errors, `Fix ${errors.length} field(s) before generating.`);
    return;
  }
  body.priority = $("f-priority").value; // a select of the schema's lanes: nothing to check
  clearErrors();
  $("submit").disabled = true;
  let pickers = [];
  try {
    try {
      const chosen = await keyframeConditions(keyframes.first, keyframes.last);
      pickers = chosen.pickers;
      if (chosen.conditions) body.conditions = chosen.conditions;
    } catch (error) {
      if (error.status === 401) return onUnauthorized(error);
      const failed = error.failures.map(({ picker, message }) => ({
        path: "$.conditions",
        picker,
        message: `could not be uploaded: ${message}`,
      }));
      showErrors(failed, "Not submitted: an image could not be uploaded.");
      return;
    }
    const job = await api.createJob(body);
    submittedHere.add(job.job_id);
    jobs.update(job);
    jobs.render();
    jobs.schedule();
    watch(job.job_id);
    announce(`Submitted ${label(job)}: ${job.state}`);
  } catch (error) {
    if (error.status === 401) onUnauthorized(error);
    else if (error.status === 422) {
      showErrors(error.details, "The API refused the request.", pickers);
    }
    else showErrors([], `Not submitted: ${error.message}`);
  } finally {
    $("submit").disabled = false;
  }
}

// --- jobs and player ----------------------------------------------------------------------

const jobs = new JobList({
  list: $("jobs"),
  empty: $("jobs-empty"),
  older: $("older"),
  onPlay: (job) => play(job, { start: true }),
  onCancel: cancel,
  onRetry: retry,
  onExtend: extend,
  onChange: (job) => {
    announce(`${label(job)} is ${job.state}`);
    if (job.state === "succeeded" && submittedHere.has(job.job_id)) play(job, { start: false });
  },
  onError: handleError,
});

// A job submitted (or retried) here is followed live, step by step, through its event
// stream; the list's polling goes on beside it and is all there is where the stream is
// unavailable.
function watch(jobId) {
  follow(jobId, {
    onJob: (job) => {
      jobs.update(job);
      jobs.render();
    },
    onUnavailable: () => jobs.schedule(),
  });
}

function handleError(error) {
  if (error instanceof ApiError && error.status === 401) onUnauthorized(error);
  else announce(`Could not update the list: ${error.message}`);
}

async function refreshJobs() {
  try {
    await jobs.refresh();
    jobs.schedule();
  } catch (error) {
    handleError(error);
  }
}

async function play(job, { start }) {
  const video = $("player");
  $("player-error").hidden = true;
  let fresh;
  try {
    // The list holds no URLs: each play gets new short-lived signed ones.
    fresh = await api.getJob(job.job_id);
  } catch (error) {
    handleError(error);
    return;
  }
  if (!fresh.video_url) return;
  video.poster = fresh.poster_url || "";
  video.src = fresh.video_url;
  $("player-caption").textContent = fresh.request.prompt;
  $("player-figure").hidden = false;
  $("player-empty").hidden = true;
  const download = $("download");
  download.href = fresh.download_url || fresh.video_url;
  download.setAttribute("download", `${fresh.job_id}.mp4`);
  // An extend's joined video: the earlier frames, then this job's (outputs.extended).
  const whole = $("whole-video");
  whole.hidden = !fresh.extended_url;
  whole.href = fresh.extended_url || "#";
  $("player-actions").hidden = false;
  if (start) {
    $("player-heading").focus();
    announce(`Playing ${label(fresh)}`);
    video.play().catch(() => {}); // a refused autoplay leaves the controls to the person
  } else {
    announce(`${label(fresh)} is ready to play`);
  }
}

$("player").addEventListener("error", () => {
  const error = $("player").error;
  $("player-error").hidden = false;
  $("player-error").textContent =
    `The video could not be played (${error ? error.message || `code ${error.code}` : "unknown"}). ` +
    "Its link may have expired: choose Play again.";
});

async function cancel(job) {
  try {
    const updated = await api.cancelJob(job.job_id);
    jobs.update(updated);
    jobs.render();
    announce(
      updated.state === "canceled"
        ? `${label(updated)} canceled`
        : `Cancel requested for ${label(updated)}; it stops after the current step`,
    );
    jobs.schedule();
  } catch (error) {
    if (error.status === 401) onUnauthorized(error);
    else announce(`Could not cancel: ${error.message}`);
  }
}

// A new job made from this one, by `create`: a retry (the same request) or an extend (one
// click continuing its video; extendBody says which prompt and size). It joins the list
// (newest first) and takes the focus.
async function startFrom(job, button, verb, create) {
  button.disabled = true;
  try {
    const fresh = await create();
    submittedHere.add(fresh.job_id);
    jobs.update(fresh);
    jobs.render();
    jobs.schedule();
    watch(fresh.job_id);
    jobs.items.get(fresh.job_id)?.querySelector(".job-prompt").focus();
    announce(`${verb}ing ${label(job)} as a new job: ${fresh.state}`);
  } catch (error) {
    if (error.status === 401) onUnauthorized(error);
    else {
      const why = [error.message, ...(error.details || []).map((d) => d.message)].join(" ");
      announce(`Could not ${verb.toLowerCase()}: ${why}`);
    }
  } finally {
    button.disabled = false;
  }
}

// Declarations, not constants: the job list's handlers above name them before this line.
function retry(job, button) {
  return startFrom(job, button, "Retry", () => api.retryJob(job.job_id));
}

function extend(job, button) {
  return startFrom(job, button, "Extend", () =>
    api.createJob(extendBody(job, $("f-prompt").value)),
  );
}

// --- start --------------------------------------------------------------------------------

$("key-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const key = $("api-key").value.trim();
  if (!key) {
    showKeyForm("Enter an API key.");
    return;
  }
  startWithKey(key);
});
$("forget-key").addEventListener("click", () => {
  apiKey.clear();
  showKeyForm("");
  announce("API key forgotten");
});
$("refresh").addEventListener("click", refreshJobs);
$("use-key").disabled = false;

async function main() {
  try {
    rules = await loadRules();
  } catch (error) {
    showKeyForm(`The page cannot start: ${error.message}`);
    return;
  }
  setUpForm();
  const key = apiKey.get();
  if (key) await startWithKey(key);
  else showKeyForm("");
}

main();
