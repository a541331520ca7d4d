"""The HTTP API of functions/submit: routes, auth, body parsing and each endpoint.

Every client mistake becomes a 4xx JSON error naming what is wrong and where; backend
outages become a retryable 503 (the response shapes are in `responses`). The job logic
itself lives in `submission` and `store`.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import google.cloud.storage as storage
from flask import Request, Response
from werkzeug.exceptions import MethodNotAllowed, NotFound

from ltxv.core.errors import BACKEND_ERRORS
from ltxv.core.jobs import Job, State, to_json
from ltxv.core.profiles import ModelProfile
from ltxv.core.results import build_result, write_result_once
from ltxv.core.settings import Settings
from ltxv.core.store import BadPageToken, JobNotFound, JobStore
from ltxv.core.usage import page_total
from ltxv.core.webhook_secrets import WebhookSecrets
from ltxv.intake import openapi
from ltxv.intake.auth import KeyRing
from ltxv.intake.job_events import JobEvents
from ltxv.intake.job_views import JobViews
from ltxv.intake.redelivery import WebhookRedeliveries
from ltxv.intake.refusals import Unavailable, refusals_as_http_errors, refuse_conditions_on_predict
from ltxv.intake.responses import HttpError, json_response, unavailable
from ltxv.intake.routes import IDEMPOTENCY_KEY, JOB_ID, LIST_PARAMS, MAX_PAGE_SIZE, ROUTES
from ltxv.intake.strict_json import JsonSyntaxError, parse_json
from ltxv.intake.submission import Intake
from ltxv.intake.uploads import Uploads
from ltxv.intake.web import PAGE, WebPage

log = logging.getLogger(__name__)

PREFER_WAIT = re.compile(r"(?:^|[,;\s])wait\s*=\s*(\d{1,9})\b", re.IGNORECASE | re.ASCII)
PAGE_SIZE = re.compile(r"[0-9]{1,4}")


@dataclass(eq=False)
class JobsApi:
    """A callable that functions-framework hands each Flask request; its parts come from
    `ltxv.intake.compose.api`."""

    settings: Settings
    profiles: Mapping[str, ModelProfile]
    store: JobStore
    intake: Intake
    keyring: KeyRing
    webhook_secrets: WebhookSecrets
    storage: storage.Client
    views: JobViews
    uploads: Uploads
    sleep: Callable[[float], None] = time.sleep
    clock: Callable[[], float] = time.monotonic

    def __post_init__(self) -> None:
        self.web = WebPage(self.settings.storage_origin)
        self.redeliveries = WebhookRedeliveries(self.store, self.storage, self.settings)
        self.events = JobEvents(
            self.settings, self.store, self.views, sleep=self.sleep, clock=self.clock
        )

    def __call__(self, request: Request) -> Response:
        started = self.clock()
        try:
            endpoint, args = ROUTES.bind("", "").match(request.path, request.method)
            response = getattr(self, endpoint)(request, **args)
        except NotFound:
            response = HttpError(404, "not_found", f"no route for {request.path}").response()
        except MethodNotAllowed as exc:
            allowed = ", ".join(sorted(exc.valid_methods or []))
            response = HttpError(
                405,
                "method_not_allowed",
                f"{request.method} is not allowed on {request.path}; use {allowed}",
                headers={"Allow": allowed},
            ).response()
        except HttpError as exc:
            response = exc.response()
        except (Unavailable, *BACKEND_ERRORS) as exc:
            log.warning("backend unavailable", extra={"error": str(exc)})
            response = unavailable("a backend is unavailable; retry shortly").response()
        except Exception:
            log.exception("unhandled error", extra={"path": request.path})
            response = HttpError(500, "internal", "internal error").response()
        log.info(
            "request",
            extra={
                "httpRequest": {
                    "requestMethod": request.method,
                    "requestUrl": request.path,
                    "status": response.status_code,
                    "latency": f"{self.clock() - started:.3f}s",
                }
            },
        )
        return response

    # --- plumbing -------------------------------------------------------------------------

    def _authenticate(self, request: Request) -> str:
        presented = request.headers.get("X-API-Key")
        authorization = request.headers.get("Authorization", "")
        if presented is None and authorization:
            scheme, _, token = authorization.partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                raise HttpError(
                    401,
                    "unauthenticated",
                    "Authorization must be 'Bearer <API key>'",
                    [{"path": "header.Authorization", "message": "expected 'Bearer <API key>'"}],
                    headers={"WWW-Authenticate": "Bearer"},
                )
            presented = token.strip()
        if not presented:
            raise HttpError(
                401,
                "unauthenticated",
                "missing API key: send X-API-Key: <key> or Authorization: Bearer <key>",
                headers={"WWW-Authenticate": "Bearer"},
            )
        try:
            key_id = self.keyring.authenticate(presented)
        except BACKEND_ERRORS as exc:
            raise unavailable("API keys cannot be read right now; retry shortly") from exc
        if key_id is None:
            raise HttpError(
                401, "unauthenticated", "invalid API key", headers={"WWW-Authenticate": "Bearer"}
            )
        return key_id

    def _json_body(self, request: Request) -> Any:
        limit = self.settings.max_body_bytes
        if request.mimetype != "application/json":
            raise HttpError(
                415,
                "unsupported_media_type",
                "send the request body as JSON with Content-Type: application/json",
                [{"path": "header.Content-Type", "message": "must be application/json"}],
            )
        if request.content_length is not None and request.content_length > limit:
            raise self._too_large(limit)
        raw = request.stream.read(limit + 1)
        if len(raw) > limit:
            raise self._too_large(limit)
        if not raw.strip():
            raise HttpError(400, "invalid_json", "request body is empty; send a JSON object")
        try:
            return parse_json(raw.decode("utf-8-sig"))
        except UnicodeDecodeError as exc:
            raise HttpError(400, "invalid_json", "request body is not valid UTF-8") from exc
        except JsonSyntaxError as exc:
            raise HttpError(400, "invalid_json", f"request body is not valid JSON: {exc}") from exc

    @staticmethod
    def _too_large(limit: int) -> HttpError:
        return HttpError(
            413, "payload_too_large", f"request body is larger than the limit of {limit} bytes"
        )

    @staticmethod
    def _idempotency_key(request: Request) -> str | None:
        key = request.headers.get("Idempotency-Key")
        if key is None:
            return None
        if not IDEMPOTENCY_KEY.match(key):
            raise HttpError(
                400,
                "invalid_argument",
                "Idempotency-Key must be 1 to 255 printable ASCII characters without spaces",
                [{"path": "header.Idempotency-Key", "message": "1-255 printable ASCII characters"}],
            )
        return key

    def _wait_seconds(self, request: Request) -> int:
        match = PREFER_WAIT.search(request.headers.get("Prefer", ""))
        return min(int(match.group(1)), self.settings.max_wait_seconds) if match else 0

    def _owned_job(self, job_id: str, key_id: str) -> Job:
        job = self.store.get(job_id) if JOB_ID.match(job_id) else None
        if job is None or job["api_key_id"] != key_id:
            # Another key's job is reported exactly like a missing one: ids leak nothing.
            raise HttpError(404, "not_found", f"job {job_id} not found")
        return job

    def _wait_until_settled(self, job: Job, seconds: float) -> Job:
        deadline = self.clock() + seconds
        interval = 0.1
        while not State(job["state"]).terminal and self.clock() < deadline:
            self.sleep(min(interval, max(0.0, deadline - self.clock())))
            interval = min(interval * 1.5, 1.0)
            job = self.store.get(job["job_id"]) or job
        return job

    def _submit(self, request: Request, *, legacy: bool = False) -> tuple[Job, bool]:
        key_id = self._authenticate(request)
        idempotency_key = self._idempotency_key(request)
        body = self._json_body(request)
        with refusals_as_http_errors():
            if legacy:
                refuse_conditions_on_predict(body)
            accepted = self.intake.submit_http(
                body, api_key_id=key_id, idempotency_key=idempotency_key
            )
        return accepted.job, accepted.created

    # --- endpoints ------------------------------------------------------------------------

    def page(self, request: Request) -> Response:
        return self.asset(request, PAGE)

    def asset(self, request: Request, name: str) -> Response:
        """The web page's files; no key needed (they hold no data, the API calls do)."""
        response = self.web.response(name, request)
        if response is None:
            raise HttpError(404, "not_found", f"no such asset: {name}")
        return response

    def health(self, request: Request) -> Response:
        return json_response({"status": "ok"})

    def openapi(self, request: Request) -> Response:
        settings = self.settings
        return json_response(
            openapi.document(self.profiles, settings.max_body_bytes, settings.default_model)
        )

    def create_job(self, request: Request) -> Response:
        job, created = self._submit(request)
        return self._accepted(request, job, created)

    def retry_job(self, request: Request, job_id: str) -> Response:
        """A failed or canceled job's request again, as a new job naming it as its parent;
        answered like a submit. Any body is ignored: the request is the parent's."""
        key_id = self._authenticate(request)
        idempotency_key = self._idempotency_key(request)
        parent = self._owned_job(job_id, key_id)
        with refusals_as_http_errors():
            accepted = self.intake.retry(parent, idempotency_key=idempotency_key)
        return self._accepted(request, accepted.job, accepted.created)

    def _accepted(self, request: Request, job: Job, created: bool) -> Response:
        """A created (or replayed) job's answer: 202 with Location, or 200 when it settled
        within Prefer: wait."""
        wait = self._wait_seconds(request)
        headers = {"Location": f"/v1/jobs/{job['job_id']}"}
        if not created:
            headers["Idempotent-Replayed"] = "true"
        if wait:
            job = self._wait_until_settled(job, wait)
            headers["Preference-Applied"] = f"wait={wait}"
        status = 200 if State(job["state"]).terminal else 202
        return json_response(self.views.job(job), status, headers)

    def get_job(self, request: Request, job_id: str) -> Response:
        key_id = self._authenticate(request)
        return json_response(self.views.detailed(self._owned_job(job_id, key_id)))

    def job_events(self, request: Request, job_id: str) -> Response:
        """Server-Sent Events of the job's state and progress until it settles."""
        key_id = self._authenticate(request)
        return self.events.open(job_id, key_id, request.headers.get("Last-Event-ID"))

    def list_jobs(self, request: Request) -> Response:
        key_id = self._authenticate(request)
        args = request.args
        problems = [
            {"path": f"query.{name}", "message": "unknown query parameter"}
            for name in sorted(set(args).difference(LIST_PARAMS))
        ]
        state = args.get("state")
        if state is not None and state not in {s.value for s in State}:
            problems.append(
                {"path": "query.state", "message": f"must be one of {[s.value for s in State]}"}
            )
        raw_size = args.get("page_size", "20")
        # ASCII digits only: str.isdigit() also says yes to "²", which int() refuses.
        page_size = int(raw_size) if PAGE_SIZE.fullmatch(raw_size) else 0
        if not 1 <= page_size <= MAX_PAGE_SIZE:
            problems.append({"path": "query.page_size", "message": f"must be 1 to {MAX_PAGE_SIZE}"})
        if problems:
            raise HttpError(400, "invalid_argument", "invalid query parameters", problems)
        try:
            page = self.store.list(
                key_id, state=state, page_size=page_size, page_token=args.get("page_token")
            )
        except BadPageToken as exc:
            raise HttpError(
                400,
                "invalid_argument",
                str(exc),
                [{"path": "query.page_token", "message": "not a token this API returned"}],
            ) from exc
        jobs = [self.views.listed(job) for job in page.jobs]
        # This page's usage summed, not all time's: one more query per page otherwise.
        total = page_total(jobs)
        return json_response(
            {"jobs": jobs, "next_page_token": page.next_page_token, "usage_total": total}
        )

    def cancel_job(self, request: Request, job_id: str) -> Response:
        key_id = self._authenticate(request)
        if not JOB_ID.match(job_id):
            raise HttpError(404, "not_found", f"job {job_id} not found")
        try:
            job, changed = self.store.request_cancel(job_id, key_id)
        except JobNotFound as exc:
            raise HttpError(404, "not_found", f"job {job_id} not found") from exc
        if job["state"] in (State.SUCCEEDED, State.FAILED):
            raise HttpError(409, "conflict", f"job {job_id} already {job['state']}", job_id=job_id)
        if job["state"] == State.CANCELED and changed:
            self._write_canceled_result(job)  # once, by the call that canceled it
        # A running job stops between denoising steps: accepted, not yet done.
        status = 202 if job["state"] == State.RUNNING else 200
        return json_response(self.views.job(job), status)

    def _write_canceled_result(self, job: Job) -> None:
        """result.json (and so the job.canceled webhook) for a job canceled in the queue.

        A job canceled while running gets it from its worker. If this write fails, the
        cancel still stands: the job's message, when a worker pulls it, finds the job
        settled without a result.json and writes it.
        """
        try:
            write_result_once(self.storage, self.settings.outputs, build_result(job))
        except BACKEND_ERRORS as exc:
            log.warning(
                "result.json for a canceled job not written yet",
                extra={"job_id": job["job_id"], "error": str(exc)},
            )

    def predict(self, request: Request) -> Response:
        """The old synchronous API: same body (no conditions), waits for the video, same
        response shape."""
        job, _ = self._submit(request, legacy=True)
        started = self.clock()
        job = self._wait_until_settled(job, self.settings.predict_wait_seconds)
        job_id = job["job_id"]
        state = job["state"]
        if state == State.SUCCEEDED:
            return json_response(self.views.predict(job))
        if state == State.FAILED:
            error: Mapping[str, Any] = job.get("error") or {}
            retryable = bool(error.get("retryable"))
            raise HttpError(
                503 if retryable else 422,
                "job_failed",
                error.get("message") or "the job failed",
                retryable=retryable,
                job_id=job_id,
            )
        if state == State.CANCELED:
            raise HttpError(409, "job_canceled", f"job {job_id} was canceled", job_id=job_id)
        waited = round(self.clock() - started)
        raise HttpError(
            504,
            "timeout",
            f"job {job_id} did not finish within {waited}s; it goes on, follow it at "
            f"/v1/jobs/{job_id}",
            retryable=False,
            headers={"Location": f"/v1/jobs/{job_id}"},
            job_id=job_id,
        )

    def create_upload(self, request: Request) -> Response:
        """A signed URL to PUT one conditioning input to, and the gs:// URI to name it by."""
        key_id = self._authenticate(request)
        body = self._json_body(request)
        with refusals_as_http_errors():
            upload = self.uploads.create(body, key_id)
        return json_response(upload, 201)

    def redeliver_webhook(self, request: Request, job_id: str) -> Response:
        """The settled event once more (same webhook-id): 202 with the webhook record."""
        key_id = self._authenticate(request)
        job = self.redeliveries.request(job_id, key_id)
        return json_response(to_json(job["webhook"]), 202, {"Location": f"/v1/jobs/{job_id}"})

    def webhook_secret(self, request: Request) -> Response:
        """This key's webhook signing secrets (current first), and no other key's."""
        key_id = self._authenticate(request)
        try:
            secrets = self.webhook_secrets.for_key(key_id)
        except BACKEND_ERRORS as exc:
            raise unavailable("webhook secrets cannot be read right now; retry shortly") from exc
        if not secrets:
            raise HttpError(404, "not_found", "this API key has no webhook signing secret")
        return json_response({"key_id": key_id, "secret": secrets[0], "secrets": list(secrets)})
