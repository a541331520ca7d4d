// Live state and progress of a job, from GET /v1/jobs/{id}/events (Server-Sent Events).
//
// Read with fetch rather than EventSource: EventSource cannot send the X-API-Key header,
// and the key must never be part of a URL (it would land in access logs and history).
// The parser follows the WHATWG rules EventSource uses; like EventSource, a stream the
// server ends (its lifetime) is reopened after `retry:` with Last-Event-ID. Where the
// stream cannot be had (an older API, the stream caps, no connection), onUnavailable is
// called and the job list's polling carries on alone.

import { apiKey } from "./api.js";

const TERMINAL = new Set(["succeeded", "failed", "canceled"]);
const following = new Map(); // job id -> AbortController

const sleep = (ms, signal) =>
  new Promise((resolve) => {
    const timer = setTimeout(resolve, ms);
    signal.addEventListener("abort", () => {
      clearTimeout(timer);
      resolve();
    });
  });

// Splits a text stream into lines at CR LF, CR or LF (nowhere else), then into events.
class EventParser {
  constructor(onEvent) {
    this.onEvent = onEvent;
    this.buffer = "";
    this.reset();
    this.lastId = null;
    this.retryMs = null;
  }

  reset() {
    this.name = "";
    this.data = [];
  }

  feed(text) {
    this.buffer += text;
    for (;;) {
      const match = /\r\n|\r|\n/.exec(this.buffer);
      // A CR at the very end may be the first half of CR LF: wait for more.
      if (!match || (match[0] === "\r" && match.index === this.buffer.length - 1)) return;
      const line = this.buffer.slice(0, match.index);
      this.buffer = this.buffer.slice(match.index + match[0].length);
      this.line(line);
    }
  }

  line(line) {
    if (line === "") {
      if (this.data.length) this.onEvent(this.name || "message", this.data.join("\n"), this.lastId);
      this.reset();
      return;
    }
    if (line.startsWith(":")) return; // a comment: the keep-alive
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? "" : line.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    if (field === "event") this.name = value;
    else if (field === "data") this.data.push(value);
    else if (field === "id" && !value.includes("\0")) this.lastId = value;
    else if (field === "retry" && /^[0-9]+$/.test(value)) this.retryMs = Number(value);
  }
}

async function connect(jobId, state, onJob, signal) {
  const headers = { Accept: "text/event-stream", "X-API-Key": apiKey.get() ?? "" };
  if (state.lastId) headers["Last-Event-ID"] = state.lastId;
  const response = await fetch(`/v1/jobs/${encodeURIComponent(jobId)}/events`, {
    headers,
    cache: "no-store",
    credentials: "omit",
    signal,
  });
  if (response.status === 204) return "settled";
  const type = response.headers.get("Content-Type") || "";
  if (!response.ok || !type.startsWith("text/event-stream") || !response.body) {
    return "unavailable";
  }
  let settled = false;
  const parser = new EventParser((name, data, id) => {
    if (name !== "state" && name !== "progress") return;
    const job = JSON.parse(data);
    state.lastId = id;
    onJob(job, name);
    settled = settled || TERMINAL.has(job.state);
  });
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    parser.feed(value);
    if (parser.retryMs !== null) state.retryMs = parser.retryMs;
    if (settled) {
      reader.cancel().catch(() => {});
      return "settled";
    }
  }
  return "ended";
}

// Follows a job until it settles; onJob(job, "state" | "progress") for each event.
export function follow(jobId, { onJob, onUnavailable }) {
  if (following.has(jobId)) return;
  const controller = new AbortController();
  following.set(jobId, controller);
  const state = { lastId: null, retryMs: 1000 };
  (async () => {
    try {
      while (!controller.signal.aborted) {
        const outcome = await connect(jobId, state, onJob, controller.signal);
        if (outcome === "settled") return;
        if (outcome === "unavailable") {
          onUnavailable();
          return;
        }
        await sleep(state.retryMs, controller.signal); // ended by the server: reconnect
      }
    } catch (error) {
      if (!controller.signal.aborted) onUnavailable(error);
    } finally {
      following.delete(jobId);
    }
  })();
}

export function stopAll() {
  for (const controller of following.values()) controller.abort();
  following.clear();
}
