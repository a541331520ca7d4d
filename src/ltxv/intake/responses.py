"""The HTTP API's answers: a JSON response, and the JSON error every client mistake or
outage becomes (`{"error": {code, message, details, retryable[, job_id]}}`), also for
errors raised before a request reaches `JobsApi`."""

from __future__ import annotations

import json
from typing import Any

from flask import Response
from werkzeug.exceptions import HTTPException


class HttpError(Exception):
    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        details: list[dict[str, str]] | None = None,
        *,
        retryable: bool = False,
        headers: dict[str, str] | None = None,
        job_id: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.details = details or []
        self.retryable = retryable
        self.headers = headers or {}
        self.job_id = job_id

    def response(self) -> Response:
        body: dict[str, Any] = {
            "code": self.code,
            "message": self.message,
            "details": self.details,
            "retryable": self.retryable,
        }
        if self.job_id:
            body["job_id"] = self.job_id
        return json_response({"error": body}, self.status, self.headers)


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    response = Response(
        # allow_nan=False: a stored infinity must fail here, not reach a client as the
        # non-JSON `Infinity` that breaks every parser of the response.
        json.dumps(body, ensure_ascii=False, separators=(",", ":"), allow_nan=False),
        status=status,
        mimetype="application/json",
    )
    response.headers["Cache-Control"] = "no-store"
    response.headers["X-Content-Type-Options"] = "nosniff"
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response


def framework_error(error: HTTPException) -> Response:
    """Errors raised before a request reaches JobsApi (e.g. a path no route can hold)."""
    code = {404: "not_found", 405: "method_not_allowed", 413: "payload_too_large"}
    status = error.code or 500
    return HttpError(
        status,
        code.get(status, "invalid_argument" if status < 500 else "internal"),
        error.description or error.name,
    ).response()


def retry_after(status: int, code: str, message: str, seconds: int, **extra: Any) -> HttpError:
    """A refusal the client may retry in `seconds`, which Retry-After tells it."""
    return HttpError(
        status, code, message, retryable=True, headers={"Retry-After": str(seconds)}, **extra
    )


def unavailable(message: str) -> HttpError:
    return retry_after(503, "unavailable", message, 2)
