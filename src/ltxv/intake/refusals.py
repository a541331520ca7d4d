"""Why the intake refused a job, as the HTTP error a client is answered with: shared by
the endpoints that create jobs (`POST /v1/jobs`, `/predict`, `POST /v1/jobs/{id}/retry`)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from ltxv.intake.responses import HttpError
from ltxv.intake.submission import IdempotencyConflict, NotRetryable, TooManyJobs
from ltxv.intake.validation import RequestInvalid


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
    except TooManyJobs as exc:
        raise HttpError(
            429,
            "too_many_jobs",
            f"{exc}; submit again once some have finished",
            retryable=True,
            headers={"Retry-After": "30"},
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
