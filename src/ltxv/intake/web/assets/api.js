// The jobs API, called with the key the person entered. Errors keep the server's
// {code, message, details} so the page can show each detail next to its field.

const KEY_STORAGE = "ltxv.apiKey";

export class ApiError extends Error {
  constructor(status, error) {
    super(error.message || `HTTP ${status}`);
    this.status = status;
    this.code = error.code || "http_error";
    this.details = Array.isArray(error.details) ? error.details : [];
  }
}

// sessionStorage: the key lives as long as the tab, and is never part of a URL.
export const apiKey = {
  get: () => sessionStorage.getItem(KEY_STORAGE),
  set: (key) => sessionStorage.setItem(KEY_STORAGE, key),
  clear: () => sessionStorage.removeItem(KEY_STORAGE),
};

function idempotencyKey() {
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  return "web-" + Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

async function call(method, path, { body, key, idempotent } = {}) {
  const headers = { Accept: "application/json", "X-API-Key": key ?? apiKey.get() ?? "" };
  const init = { method, headers, cache: "no-store", credentials: "omit" };
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  if (idempotent) headers["Idempotency-Key"] = idempotent;
  let response;
  try {
    response = await fetch(path, init);
  } catch (error) {
    throw new ApiError(0, { code: "network", message: "the API cannot be reached; retry" });
  }
  let data = null;
  try {
    data = await response.json();
  } catch {
    data = null;
  }
  if (!response.ok) {
    throw new ApiError(response.status, (data && data.error) || {});
  }
  return data;
}

export const api = {
  listJobs: (pageSize, pageToken, key) => {
    const query = new URLSearchParams({ page_size: String(pageSize) });
    if (pageToken) query.set("page_token", pageToken);
    return call("GET", `/v1/jobs?${query}`, { key });
  },
  getJob: (id) => call("GET", `/v1/jobs/${encodeURIComponent(id)}`),
  // One Idempotency-Key per submission: a retried request cannot create a second job.
  createJob: (body) => call("POST", "/v1/jobs", { body, idempotent: idempotencyKey() }),
  cancelJob: (id) => call("POST", `/v1/jobs/${encodeURIComponent(id)}/cancel`),
  // A new job with a failed or canceled job's request; one key per click, as for submits.
  retryJob: (id) =>
    call("POST", `/v1/jobs/${encodeURIComponent(id)}/retry`, { idempotent: idempotencyKey() }),
  // A signed URL for one file of this size and type in the key's part of the inputs bucket.
  createUpload: (contentType, size) =>
    call("POST", "/v1/uploads", { body: { content_type: contentType, size } }),
};

// PUT the file to the signed URL with exactly the headers it was signed with. No API key
// and no cookies go to storage: the URL is its own authorisation.
export async function putUpload(ticket, file) {
  let response;
  try {
    response = await fetch(ticket.upload_url, {
      method: ticket.method || "PUT",
      headers: ticket.headers || {},
      body: file,
      credentials: "omit",
      cache: "no-store",
    });
  } catch (error) {
    throw new ApiError(0, { code: "network", message: "the upload could not reach storage" });
  }
  if (!response.ok) {
    throw new ApiError(response.status, {
      code: "upload_failed",
      message: `storage refused the upload (HTTP ${response.status})`,
    });
  }
}
