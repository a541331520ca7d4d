"""Accepting jobs: validate, record in Firestore, publish to Pub/Sub, in that order.

The document is written first and marked `published` only after Pub/Sub has the
message, so the one state that can be left behind by a crash is "queued, not published",
which the redispatch sweep publishes. When publishing fails while the client is still
waiting, the document is removed again and the client is told to retry: a job the
client was told was accepted is always published, and no job waits for a message that
will never come.
"""

from __future__ import annotations

import concurrent.futures
import logging
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from google.api_core import exceptions as gexc

from .dispatch import Dispatcher
from .jobs import State, job_id_for_idempotency_key, new_job, new_job_id, utcnow
from .store import JobExists, JobStore
from .validation import IntakePolicy, request_hash, validate_request

log = logging.getLogger(__name__)

# What a Firestore or Pub/Sub outage looks like from the client libraries.
BACKEND_ERRORS = (
    gexc.GoogleAPIError,
    concurrent.futures.TimeoutError,
    TimeoutError,
    ConnectionError,
)


class Unavailable(RuntimeError):
    """A backend failed; nothing was accepted and the client may retry."""


class IdempotencyConflict(Exception):
    def __init__(self, job: dict[str, Any]) -> None:
        super().__init__(job["job_id"])
        self.job = job


@dataclass(frozen=True)
class Accepted:
    job: dict[str, Any]
    created: bool  # False: an earlier request (or event) had already created this job


@dataclass(frozen=True)
class JobOrigin:
    api_key_id: str
    source: str = "http"
    source_generation: str | None = None
    source_line: int | None = None
    idempotency_key: str | None = None


class Intake:
    def __init__(
        self, store: JobStore, dispatcher: Dispatcher, policy: IntakePolicy, ttl_days: int = 30
    ) -> None:
        self.store = store
        self.dispatcher = dispatcher
        self.policy = policy
        self.ttl_days = ttl_days

    def validate(self, body: Any) -> dict[str, Any]:
        return validate_request(body, self.policy)

    def submit_http(
        self, body: Any, *, api_key_id: str, idempotency_key: str | None = None
    ) -> Accepted:
        request = self.validate(body)
        job_id = (
            job_id_for_idempotency_key(api_key_id, idempotency_key)
            if idempotency_key
            else new_job_id()
        )
        origin = JobOrigin(api_key_id=api_key_id, idempotency_key=idempotency_key)
        return self.accept(request, job_id=job_id, origin=origin)

    def accept(self, request: dict[str, Any], *, job_id: str, origin: JobOrigin) -> Accepted:
        """Record and publish a validated request under a stable job id, exactly once."""
        digest = request_hash(request)
        job = new_job(
            job_id=job_id,
            request=request,
            request_hash=digest,
            api_key_id=origin.api_key_id,
            source=origin.source,
            source_generation=origin.source_generation,
            source_line=origin.source_line,
            idempotency_key=origin.idempotency_key,
            ttl_days=self.ttl_days,
        )
        try:
            self.store.create(job)
        except JobExists as exists:
            return self._replay(exists.job, digest)
        except BACKEND_ERRORS as exc:
            raise Unavailable(f"job store unavailable: {exc}") from exc
        try:
            self.dispatcher.publish([job])
        except BACKEND_ERRORS as exc:
            self._undo_create(job_id)
            raise Unavailable(f"job queue unavailable: {exc}") from exc
        return Accepted(self._mark_published(job), created=True)

    def _replay(self, job: dict[str, Any], digest: str) -> Accepted:
        if job.get("request_hash") != digest:
            raise IdempotencyConflict(job)
        if not job.get("published") and job["state"] == State.QUEUED:
            # An earlier attempt stopped between create and publish: finish its work.
            try:
                self.dispatcher.publish([job])
            except BACKEND_ERRORS as exc:
                raise Unavailable(f"job queue unavailable: {exc}") from exc
            job = self._mark_published(job)
        return Accepted(job, created=False)

    def _mark_published(self, job: dict[str, Any]) -> dict[str, Any]:
        try:
            self.store.mark_published([job["job_id"]])
        except BACKEND_ERRORS:
            # The message is out; a missing mark only makes the sweep publish it twice,
            # and the worker's claim renders a job once whatever it receives.
            log.warning("could not mark job published", extra={"job_id": job["job_id"]})
            return job
        return {**job, "published": True, "published_at": utcnow()}

    def _undo_create(self, job_id: str) -> None:
        try:
            self.store.delete_unpublished(job_id)
        except BACKEND_ERRORS:
            log.error(
                "publish failed and the job could not be removed; the sweep will publish it",
                extra={"job_id": job_id},
            )

    def redispatch(self, older_than: timedelta) -> list[str]:
        """Publish queued jobs that a crash left unpublished (the sweep's work)."""
        found = self.store.unpublished_before(utcnow() - older_than)
        stranded = [job for job in found if job["state"] == State.QUEUED]
        if stranded:
            self.dispatcher.publish(stranded)
            log.warning(
                "republished stranded jobs", extra={"job_ids": [j["job_id"] for j in stranded]}
            )
        if found:
            # Jobs canceled before their message went out need none; mark them too so
            # the sweep does not look at them again.
            self.store.mark_published([job["job_id"] for job in found])
        return [job["job_id"] for job in stranded]
