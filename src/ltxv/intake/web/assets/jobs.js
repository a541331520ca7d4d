// The key's jobs: newest first, older pages on request, live while any is unfinished.
// Items are updated in place (never re-created) so that focus and screen-reader position
// survive each poll.

import { api } from "./api.js";

export const PAGE_SIZE = 10;
const POLL_MS = 2000;
// A list item leaves a queued job's `queue` out (a count per item); the page asks each
// queued job it shows for it, this often.
const QUEUE_MS = 5000;
const TERMINAL = new Set(["succeeded", "failed", "canceled"]);
// What the API retries (POST /v1/jobs/{id}/retry): jobs that ended without a video.
const RETRYABLE = new Set(["failed", "canceled"]);

export const isTerminal = (job) => TERMINAL.has(job.state);

function newer(a, b) {
  if (a.created_at !== b.created_at) return a.created_at > b.created_at ? -1 : 1;
  return a.job_id > b.job_id ? -1 : 1;
}

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function shortPrompt(job) {
  const prompt = (job.request && job.request.prompt) || "";
  return prompt.length > 60 ? prompt.slice(0, 57) + "…" : prompt;
}

// "in ~40 s", "in ~3 min", "any moment" from an ISO time; null for none.
function fromNow(iso) {
  if (!iso) return null;
  const seconds = (Date.parse(iso) - Date.now()) / 1000;
  if (seconds < 5) return "any moment";
  return seconds < 90 ? `in ~${Math.round(seconds)} s` : `in ~${Math.round(seconds / 60)} min`;
}

// What `queue` says of a queued or running job, in words; "" when the job has none yet.
export function queueText(job) {
  const queue = job.queue;
  if (!queue || (job.state !== "queued" && job.state !== "running")) return "";
  if (job.state === "running") {
    const done = fromNow(queue.estimated_finish_at);
    return done ? `done ${done}` : "";
  }
  if (queue.position === null) return "no estimate right now";
  const ahead = queue.position === 1 ? "1 job ahead" : `${queue.position} jobs ahead`;
  const start = fromNow(queue.estimated_start_at);
  return start ? `${ahead} · starts ${start}` : `${ahead} · no estimate yet`;
}

function button(label, action, job) {
  const node = el("button", "secondary small");
  node.type = "button";
  node.dataset.action = action;
  node.append(label);
  // Visible "Play", heard "Play: a red fox in snow": many such buttons share the list.
  node.append(el("span", "visually-hidden", `: ${shortPrompt(job)}`));
  return node;
}

export class JobList {
  constructor({ list, empty, older, onPlay, onCancel, onRetry, onExtend, onChange, onError }) {
    Object.assign(this, { list, empty, older, onPlay, onCancel, onRetry, onExtend });
    Object.assign(this, { onChange, onError });
    this.jobs = new Map();
    this.items = new Map();
    this.nextToken = undefined; // undefined: first page not loaded; null: no older page
    this.timer = null;
    this.queueAsked = new Map(); // job id -> when its queue estimate was last asked for
    older.addEventListener("click", () => this.loadOlder());
    list.addEventListener("click", (event) => {
      const target = event.target.closest("button[data-action]");
      if (!target) return;
      const id = target.closest("li").dataset.jobId;
      if (target.dataset.action === "play") this.onPlay(this.jobs.get(id));
      if (target.dataset.action === "cancel") this.onCancel(this.jobs.get(id));
      if (target.dataset.action === "retry") this.onRetry(this.jobs.get(id), target);
      if (target.dataset.action === "extend") this.onExtend(this.jobs.get(id), target);
    });
  }

  reset() {
    this.stop();
    this.jobs.clear();
    this.items.clear();
    this.queueAsked.clear();
    this.list.replaceChildren();
    this.nextToken = undefined;
  }

  stop() {
    clearTimeout(this.timer);
    this.timer = null;
  }

  async refresh() {
    const first = await api.listJobs(PAGE_SIZE);
    if (this.nextToken === undefined) this.nextToken = first.next_page_token;
    first.jobs.forEach((job) => this.update(job));
    // Unfinished jobs beyond the first page (rare) are followed one by one.
    const firstIds = new Set(first.jobs.map((job) => job.job_id));
    const stragglers = [...this.jobs.values()].filter(
      (job) => !isTerminal(job) && !firstIds.has(job.job_id),
    );
    for (const job of stragglers) this.update(await api.getJob(job.job_id));
    await this.askQueue(first.jobs);
    this.render();
  }

  async askQueue(jobs) {
    const now = Date.now();
    for (const job of jobs.filter((j) => j.state === "queued")) {
      if (now - (this.queueAsked.get(job.job_id) || 0) < QUEUE_MS) continue;
      this.queueAsked.set(job.job_id, now);
      this.update(await api.getJob(job.job_id));
    }
  }

  async loadOlder() {
    if (!this.nextToken) return;
    this.older.disabled = true;
    try {
      const page = await api.listJobs(PAGE_SIZE, this.nextToken);
      this.nextToken = page.next_page_token;
      page.jobs.forEach((job) => this.update(job));
      this.render();
      const firstNew = page.jobs[0] && this.items.get(page.jobs[0].job_id);
      if (firstNew) firstNew.querySelector(".job-prompt").focus();
    } catch (error) {
      this.onError(error);
    } finally {
      this.older.disabled = false;
    }
  }

  // Poll while anything is unfinished; stop once all have settled.
  schedule() {
    this.stop();
    if (![...this.jobs.values()].some((job) => !isTerminal(job))) return;
    this.timer = setTimeout(async () => {
      try {
        await this.refresh();
      } catch (error) {
        this.onError(error);
      }
      this.schedule();
    }, POLL_MS);
  }

  update(job) {
    const before = this.jobs.get(job.job_id);
    this.jobs.set(job.job_id, { ...before, ...job });
    if (before && before.state !== job.state) this.onChange(job, before.state);
  }

  render() {
    const ordered = [...this.jobs.values()].sort(newer);
    let cursor = this.list.firstElementChild;
    for (const job of ordered) {
      let item = this.items.get(job.job_id);
      if (!item) {
        item = this.create(job);
        this.items.set(job.job_id, item);
      }
      if (item === cursor) cursor = cursor.nextElementSibling;
      else this.list.insertBefore(item, cursor);
      this.fill(item, this.jobs.get(job.job_id));
    }
    this.empty.hidden = ordered.length > 0;
    this.older.hidden = !this.nextToken;
  }

  create(job) {
    const item = el("li", "job");
    item.dataset.jobId = job.job_id;
    const prompt = el("p", "job-prompt", job.request?.prompt || "(no prompt)");
    prompt.tabIndex = -1;
    const meta = el("p", "job-meta");
    const state = el("span", "state");
    const details = el("span", "job-details");
    const time = el("time");
    meta.append(state, details, time);
    const progress = el("div", "job-progress");
    const bar = el("progress");
    bar.setAttribute("aria-label", `Progress: ${shortPrompt(job)}`);
    const progressText = el("span", "progress-text");
    progress.append(bar, progressText);
    const queue = el("p", "job-queue hint");
    const thumb = el("img", "job-thumb");
    thumb.alt = `First frame: ${shortPrompt(job)}`;
    thumb.hidden = true;
    const error = el("p", "job-error");
    const lineage = el("p", "job-lineage hint");
    const actions = el("div", "job-actions");
    actions.append(
      button("Play", "play", job),
      button("Cancel", "cancel", job),
      button("Retry", "retry", job),
      button("Extend", "extend", job),
    );
    item.append(prompt, meta, progress, queue, thumb, error, lineage, actions);
    return item;
  }

  fill(item, job) {
    const request = job.request || {};
    const state = item.querySelector(".state");
    state.textContent = job.cancel_requested && job.state === "running" ? "canceling" : job.state;
    state.className = `state state-${job.state}`;
    item.dataset.state = job.state;
    item.querySelector(".job-details").textContent =
      ` ${request.width}×${request.height}, ${request.num_frames} frames, seed ${request.seed} · `;
    const time = item.querySelector("time");
    time.dateTime = job.created_at;
    time.textContent = new Date(job.created_at).toLocaleString();

    const progress = job.progress || {};
    const total = progress.total || request.num_inference_steps || 1;
    const step = job.state === "succeeded" ? total : progress.step || 0;
    const showProgress = job.state === "running" || job.state === "queued";
    item.querySelector(".job-progress").hidden = !showProgress;
    const bar = item.querySelector("progress");
    bar.max = total;
    bar.value = step;
    item.querySelector(".progress-text").textContent =
      job.state === "queued" ? "waiting for a worker" : `step ${step} of ${total}`;

    const queue = item.querySelector(".job-queue");
    queue.textContent = queueText(job);
    queue.title = (job.queue && job.queue.basis) || "";
    queue.hidden = !queue.textContent;
    // The list signs each finished job's poster; a new signature is a new src.
    const thumb = item.querySelector(".job-thumb");
    if (job.poster_url && thumb.getAttribute("src") !== job.poster_url) thumb.src = job.poster_url;
    thumb.hidden = !job.poster_url || job.state !== "succeeded";

    const error = item.querySelector(".job-error");
    error.hidden = !job.error;
    error.textContent = job.error ? `Error: ${job.error.message}` : "";

    const lineage = item.querySelector(".job-lineage");
    lineage.hidden = !job.parent_job_id;
    const continues = request.extend && request.extend.job_id === job.parent_job_id;
    lineage.textContent = !job.parent_job_id
      ? ""
      : continues
        ? `Continues job ${job.parent_job_id}`
        : `Retry of job ${job.parent_job_id}`;

    const play = item.querySelector('[data-action="play"]');
    const cancel = item.querySelector('[data-action="cancel"]');
    const retry = item.querySelector('[data-action="retry"]');
    const extend = item.querySelector('[data-action="extend"]');
    const focused = document.activeElement;
    play.hidden = job.state !== "succeeded";
    cancel.hidden = isTerminal(job) || Boolean(job.cancel_requested);
    retry.hidden = !RETRYABLE.has(job.state);
    extend.hidden = job.state !== "succeeded";
    // A button that just disappeared under the keyboard hands focus to its item.
    if ([play, cancel, retry, extend].some((action) => focused === action && action.hidden)) {
      item.querySelector(".job-prompt").focus();
    }
  }
}
