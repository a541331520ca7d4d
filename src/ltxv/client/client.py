"""A Python client for the jobs API, the same one the `ltxv` command uses.

    from ltxv.client import Client

    client = Client.configured()  # LTXV_API_URL / LTXV_API_KEY, else .local/stack.env
    job = client.submit("A red fox trotting through fresh snow", num_frames=41)
    job = client.wait(job["job_id"], on_progress=lambda j: print(j["state"], j["progress"]))
    client.download(job, "fox.mp4")

Jobs are the API's JSON objects as dicts (`schemas/job.schema.json`). Every error the API
answers becomes an `ApiError` carrying its code, message and per-field details; a service
that cannot be reached is a `ServiceUnavailable`. Submits carry an Idempotency-Key (one is
made up when none is given), so the client's own retries never create a second job.
"""

from __future__ import annotations

import json
import os
import shlex
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import google.cloud.storage as storage
import requests
from google.api_core import exceptions as gexc
from requests.adapters import HTTPAdapter

from ltxv.client.http_retries import RETRY, without_429
from ltxv.core.jobs import Page, State
from ltxv.core.prompt_names import INCOMING, SUFFIXES, receipt_name

from .conditioning import ConditioningCalls
from .job_stream import changes_only, follow_events

DEFAULT_TIMEOUT = 30.0  # seconds per HTTP request


class ClientError(Exception):
    """Base of everything this module raises."""


class ConfigurationError(ClientError):
    """No API URL or key was given and none could be found."""


class ServiceUnavailable(ClientError):
    """The service could not be reached, or kept answering 5xx."""


class WaitTimedOut(ClientError):
    def __init__(self, job: dict[str, Any], seconds: float) -> None:
        super().__init__(
            f"job {job['job_id']} is still {job['state']} after {seconds:.0f}s; it goes on "
            "running, ask again later"
        )
        self.job = job


class ApiError(ClientError):
    """An error answer of the API: `{"error": {"code", "message", "details"}}`."""

    def __init__(
        self, status: int, code: str, message: str, details: list[dict[str, str]] | None = None
    ) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.details = details or []

    @classmethod
    def from_response(cls, response: requests.Response) -> ApiError:
        try:
            error = response.json()["error"]
            return cls(response.status_code, error["code"], error["message"], error.get("details"))
        except (ValueError, KeyError, TypeError):
            text = response.text.strip().splitlines()[0][:200] if response.text.strip() else ""
            return cls(response.status_code, "http_error", text or response.reason or "no body")


# --- configuration --------------------------------------------------------------------------


def stack_env_file() -> Path:
    """LTXV_STATE_DIR's stack.env, else `.local/stack.env` here or in a parent directory
    (so `ltxv` finds `make dev`'s stack from anywhere inside the checkout)."""
    state = os.environ.get("LTXV_STATE_DIR")
    if state:
        return Path(state) / "stack.env"
    here = Path.cwd()
    for directory in (here, *here.parents):
        if (directory / ".local" / "stack.env").is_file():
            return directory / ".local" / "stack.env"
    return here / ".local" / "stack.env"


def read_stack_env(path: Path | None = None) -> dict[str, str]:
    """`KEY=value` lines (values shell-quoted) as `make dev` writes them; {} if absent."""
    path = path or stack_env_file()
    try:
        text = path.read_text()
    except FileNotFoundError:
        return {}
    values = {}
    for line in text.splitlines():
        key, sep, raw = line.partition("=")
        if sep and key.strip() and not key.startswith("#"):
            parts = shlex.split(raw)
            values[key.strip()] = parts[0] if parts else ""
    return values


def setting(name: str, given: str | None = None) -> str | None:
    """A value given explicitly, else the environment's, else `.local/stack.env`'s."""
    return given or os.environ.get(name) or read_stack_env().get(name) or None


EMULATOR_HOSTS = ("PUBSUB_EMULATOR_HOST", "FIRESTORE_EMULATOR_HOST", "STORAGE_EMULATOR_HOST")


def use_local_emulators() -> dict[str, str]:
    """Point Google's client libraries at the emulators the environment or
    `.local/stack.env` names (the libraries read these variables themselves); returns them.
    With none found, the clients talk to Google Cloud as usual."""
    found = {name: value for name in EMULATOR_HOSTS if (value := setting(name))}
    os.environ.update(found)
    return found


# --- the client -----------------------------------------------------------------------------


class Client(ConditioningCalls):  # upload() and extend(): conditioning.py
    def __init__(
        self,
        url: str,
        api_key: str,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        session: requests.Session | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.session = session or requests.Session()
        adapter = HTTPAdapter(max_retries=RETRY)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        self.session.headers["X-API-Key"] = api_key
        self.session.headers["User-Agent"] = "ltxv-client"

    @classmethod
    def configured(
        cls, url: str | None = None, api_key: str | None = None, **kwargs: Any
    ) -> Client:
        """From the arguments, else LTXV_API_URL and LTXV_API_KEY, else `.local/stack.env`."""
        url, api_key = setting("LTXV_API_URL", url), setting("LTXV_API_KEY", api_key)
        if not url:
            raise ConfigurationError(
                "no API URL: pass --url, set LTXV_API_URL, or start the local stack with "
                "`make dev` (it writes .local/stack.env)"
            )
        if not api_key:
            raise ConfigurationError("no API key: pass --api-key or set LTXV_API_KEY")
        return cls(url, api_key, **kwargs)

    # --- jobs ---

    def submit(
        self,
        prompt: str | None = None,
        *,
        idempotency_key: str | None = None,
        **fields: Any,
    ) -> dict[str, Any]:
        """POST /v1/jobs with the old /predict fields (`height`, `num_frames`, ...)."""
        body = {"prompt": prompt, **fields} if prompt is not None else fields
        headers = {"Idempotency-Key": idempotency_key or f"ltxv-client-{uuid.uuid4()}"}
        return self._call("POST", "/v1/jobs", json=body, headers=headers)

    def get(self, job_id: str) -> dict[str, Any]:
        """GET /v1/jobs/{id}; a succeeded job carries a signed `video_url`."""
        return self._call("GET", f"/v1/jobs/{_segment(job_id)}")

    def list(
        self, state: str | None = None, page_size: int = 20, page_token: str | None = None
    ) -> Page:
        """One page of this key's jobs, newest first, with `usage_total`: their GPU
        seconds, cost and count of jobs that used a GPU, summed over this page."""
        params = {"page_size": page_size, "state": state, "page_token": page_token}
        body = self._call("GET", "/v1/jobs", params={k: v for k, v in params.items() if v})
        return Page(body["jobs"], body.get("next_page_token"), body.get("usage_total"))

    def iter_jobs(self, state: str | None = None, page_size: int = 50) -> Iterator[dict[str, Any]]:
        """Every job of this key, newest first, page by page."""
        token = None
        while True:
            page = self.list(state=state, page_size=page_size, page_token=token)
            yield from page.jobs
            if not page.next_page_token:
                return
            token = page.next_page_token

    def cancel(self, job_id: str) -> dict[str, Any]:
        """Cancel a queued job at once, a running one between denoising steps."""
        return self._call("POST", f"/v1/jobs/{_segment(job_id)}/cancel")

    def retry(self, job_id: str, idempotency_key: str | None = None) -> dict[str, Any]:
        """A failed or canceled job's request again, as a new job whose `parent_job_id` is
        `job_id` (ApiError 409 `not_retryable` for any other job). Carries an
        Idempotency-Key (made up when none is given), so a repeat with the same key, or
        the client's own retries, return the same new job."""
        headers = {"Idempotency-Key": idempotency_key or f"ltxv-client-{uuid.uuid4()}"}
        return self._call("POST", f"/v1/jobs/{_segment(job_id)}/retry", headers=headers)

    def wait(
        self,
        job_id: str,
        *,
        timeout: float | None = None,
        poll_interval: float = 1.0,
        on_progress: Callable[[dict[str, Any]], None] | None = None,
        stream: bool = True,
    ) -> dict[str, Any]:
        """Follow the job until it is succeeded, failed or canceled, and return it.

        Reads its event stream (GET /v1/jobs/{id}/events); where that is unavailable, or
        with `stream=False`, polls every `poll_interval`.
        `on_progress(job)` is called with the first answer and whenever its state or
        denoising step changes. Raises `WaitTimedOut` after `timeout` seconds.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        report = changes_only(on_progress)
        if stream:
            url = f"{self.url}/v1/jobs/{_segment(job_id)}/events"
            outcome, job = follow_events(self.session, url, self.timeout, deadline, report)
            if outcome == "settled" and job:
                return job
            if outcome == "timed_out":
                raise WaitTimedOut(job or self.get(job_id), timeout or 0)
        while True:
            job = self.get(job_id)
            report(job)
            if State(job["state"]).terminal:
                return job
            if deadline is not None and time.monotonic() >= deadline:
                raise WaitTimedOut(job, timeout or 0)
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            time.sleep(poll_interval if remaining is None else min(poll_interval, remaining))

    def download(self, job: str | dict[str, Any], path: str | Path, *, what: str = "video") -> Path:
        """Write a succeeded job's video (or `what="poster"`, or `"extended"`: an extend's
        whole, joined video) to `path`; returns the path.

        The file appears whole or not at all (written beside it, then renamed).
        """
        if isinstance(job, str) or not job.get(f"{what}_url"):
            job = self.get(job if isinstance(job, str) else job["job_id"])
        url = job.get(f"{what}_url")
        if not url and what == "extended" and job["state"] == "succeeded":
            raise ClientError(f"job {job['job_id']} has no extended video: it did not extend one")
        if not url:
            raise ClientError(
                f"job {job['job_id']} is {job['state']}; only a succeeded job has a {what}"
            )
        path = Path(path)
        partial = path.with_name(f".{path.name}.partial")
        try:
            # The signed URL carries its own authorisation; the API key must not travel there.
            with requests.get(url, stream=True, timeout=self.timeout) as response:
                if response.status_code != 200:
                    raise ClientError(
                        f"downloading {what} of job {job['job_id']}: HTTP {response.status_code}"
                    )
                with partial.open("wb") as out:
                    for chunk in response.iter_content(1 << 20):
                        out.write(chunk)
            partial.replace(path)
        except requests.RequestException as exc:
            raise ServiceUnavailable(f"downloading {what} of job {job['job_id']}: {exc}") from exc
        finally:
            partial.unlink(missing_ok=True)
        return path

    # --- webhooks ---

    def redeliver_webhook(self, job_id: str) -> dict[str, Any]:
        """A settled job's event once more (same webhook-id): its webhook record. ApiError
        409 while a delivery is under way; 429 (too soon) is raised at once, not waited out."""
        path = f"/v1/jobs/{_segment(job_id)}/webhook/redeliver"
        return self._call("POST", path, retry_429=False)

    def webhook_secret(self) -> dict[str, Any]:
        """This key's webhook signing secrets: `secret` (the current one, to verify with)
        and `secrets` (every one that signs, current first; two during a rotation)."""
        return self._call("GET", "/v1/webhooks/secret")

    # --- service ---

    def health(self) -> dict[str, Any]:
        return self._call("GET", "/healthz")

    def openapi(self) -> dict[str, Any]:
        return self._call("GET", "/openapi.json")

    def _call(self, method: str, path: str, *, retry_429: bool = True, **kwargs: Any) -> Any:
        session = self.session if retry_429 else without_429(self.session)
        try:
            response = session.request(method, self.url + path, timeout=self.timeout, **kwargs)
        except requests.ConnectionError as exc:
            raise ServiceUnavailable(f"cannot reach the API at {self.url}") from exc
        except requests.RequestException as exc:
            raise ServiceUnavailable(f"{method} {self.url}{path}: {exc}") from exc
        if response.status_code >= 500:
            raise ServiceUnavailable(str(ApiError.from_response(response)))
        if response.status_code >= 400:
            raise ApiError.from_response(response)
        try:
            return response.json()
        except ValueError as exc:
            raise ServiceUnavailable(
                f"{method} {path}: the answer is not JSON; is {self.url} this API?"
            ) from exc


def _segment(job_id: str) -> str:
    """A job id as one path segment: a `/` in it must not reach another route."""
    return quote(job_id, safe="")


# --- prompt files ---------------------------------------------------------------------------


class PromptDrops:
    """Upload `.json`/`.jsonl` prompt files under `incoming/` and read their receipts.

    This talks to Cloud Storage, not the API: it needs write access to the prompts bucket
    (locally, STORAGE_EMULATOR_HOST points it at fake-gcs-server).
    """

    def __init__(self, bucket: str, storage_client: storage.Client | None = None) -> None:
        if storage_client is None:
            use_local_emulators()
            storage_client = storage.Client()
        self.bucket = storage_client.bucket(bucket)

    @classmethod
    def configured(cls, bucket: str | None = None) -> PromptDrops:
        bucket = setting("LTXV_PROMPTS_BUCKET", bucket)
        if not bucket:
            raise ConfigurationError(
                "no prompts bucket: pass --bucket, set LTXV_PROMPTS_BUCKET, or run `make dev`"
            )
        return cls(bucket)

    def drop(self, source: str | Path, name: str | None = None) -> tuple[str, str]:
        """Upload a local prompt file; returns (object name, generation)."""
        source = Path(source)
        name = name or source.name
        if not name.endswith(SUFFIXES):
            raise ClientError(f"{name}: a prompt file ends in .json or .jsonl")
        blob = self.bucket.blob(INCOMING + name.removeprefix(INCOMING))
        try:
            blob.upload_from_filename(str(source), content_type="application/json")
        except OSError as exc:
            raise ClientError(f"cannot read {source}: {exc.strerror}") from exc
        except Exception as exc:  # google.api_core errors, requests' connection errors
            raise ServiceUnavailable(f"uploading to gs://{self.bucket.name}: {exc}") from exc
        return blob.name, str(blob.generation)

    def receipt(
        self, object_name: str, generation: str, *, timeout: float = 120, poll_interval: float = 0.5
    ) -> dict[str, Any]:
        """Wait for the receipt of this upload (a re-upload's receipt replaces the last)."""
        name = receipt_name(object_name)
        deadline = time.monotonic() + timeout
        while True:
            # A fresh Blob each time: one that has been read pins the generation it saw.
            blob = self.bucket.blob(name)
            try:
                receipt = json.loads(blob.download_as_bytes())
                if receipt.get("generation") == generation:
                    return receipt
            except gexc.NotFound:
                pass
            except Exception as exc:
                raise ServiceUnavailable(
                    f"reading gs://{self.bucket.name}/{blob.name}: {exc}"
                ) from exc
            if time.monotonic() >= deadline:
                raise ClientError(
                    f"no receipt gs://{self.bucket.name}/{blob.name} for generation "
                    f"{generation} after {timeout:.0f}s; is the prompt-file function running?"
                )
            time.sleep(poll_interval)
