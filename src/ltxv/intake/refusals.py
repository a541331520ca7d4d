"""Why the intake refused a job (`submission` raises these), and the HTTP error a client
is answered with: shared by the endpoints that create jobs (`POST /v1/jobs`, `/predict`,
`POST /v1/jobs/{id}/retry`)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from ltxv.core.errors import BACKEND_ERRORS
from ltxv.core.jobs import Job
from ltxv.intake.conditions import CONDITION_FIELDS
from ltxv.intake.field_errors import FieldError, RequestInvalid
from ltxv.intake.responses import HttpError, retry_after


class Unavailable(RuntimeError):
    """A backend failed; nothing was accepted and the client may retry."""


class InspectionsBusy(Unavailable):
    """Every slot for checking conditioning media on this server stayed taken while the
    request waited (input_inspection): nothing was accepted; retry in a few seconds."""

    retry_after_seconds = 5


@contextlib.contextmanager
def unavailable_on_error(backend: str) -> Iterator[None]:
    """A backend error inside becomes Unavailable, naming the backend."""
    try:
        yield
    except BACKEND_ERRORS as exc:
        raise Unavailable(f"{backend} unavailable: {exc}") from exc


class TooManyJobs(Exception):
    """The key has its limit of jobs queued or running; nothing was accepted."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"this API key already has {limit} jobs queued or running, its limit")
        self.limit = limit


class NotRetryable(Exception):
    """Only a failed or canceled job can be retried; nothing was accepted."""

    def __init__(self, job: Job) -> None:
        super().__init__(
            f"job {job['job_id']} is {job['state']}; only a failed or canceled job can be retried"
        )
        self.job = job


class IdempotencyConflict(Exception):
    def __init__(self, job: Job) -> None:
        super().__init__(job["job_id"])
        self.job = job


def refuse_conditions_on_predict(body: object) -> None:
    """POST /predict is the old text-to-video API, kept as it was: conditioning is for
    POST /v1/jobs, whose answer says where the job is while its inputs render."""
    if not isinstance(body, dict):
        return
    refused = [
        FieldError(f"$.{name}", "is not part of POST /predict (the old text-to-video API); "
                   "use POST /v1/jobs")
        for name in CONDITION_FIELDS
        if body.get(name) is not None
    ]  # fmt: skip
    if refused:
        raise RequestInvalid(refused)


@contextlib.contextmanager
def refusals_as_http_errors() -> Iterator[None]:
    """Inside, an intake refusal becomes the HttpError that names it."""
    try:
        yield
    except RequestInvalid as exc:
        raise HttpError(
            422,
            "validation_failed",
            f"the request has {len(exc.errors)} invalid field(s)",
            [e.as_dict() for e in exc.errors],
        ) from exc
    except InspectionsBusy as exc:
        raise retry_after(503, "unavailable", str(exc), exc.retry_after_seconds) from exc
    except TooManyJobs as exc:
        raise retry_after(
            429, "too_many_jobs", f"{exc}; submit again once some have finished", 30
        ) from exc
    except IdempotencyConflict as exc:
        raise HttpError(
            409,
            "idempotency_key_reused",
            "this Idempotency-Key was used with a different request body",
            [{"path": "header.Idempotency-Key", "message": "already used for another body"}],
            job_id=exc.job["job_id"],
        ) from exc
    except NotRetryable as exc:
        raise HttpError(409, "not_retryable", str(exc), job_id=exc.job["job_id"]) from exc
