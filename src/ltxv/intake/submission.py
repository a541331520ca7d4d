"""Accepting jobs: validate, record in Firestore, publish to Pub/Sub, in that order.

The document is written first and marked `published` only after Pub/Sub has the
message, so the one state that can be left behind by a crash is "queued, not published",
which the redispatch sweep publishes. When publishing fails while the client is still
waiting, the document is removed again and the client is told to retry: a job the
client was told was accepted is always published, and no job waits for a message that
will never come.

Publishing is claimed (`publish_claim_until` on the job): the request that creates a job
holds the claim, so a burst of replays of one Idempotency-Key waits for that publish
instead of publishing again; a replay takes the claim over only once it has run out (the
creator crashed). Every duplicate message would be one more delivery toward the
subscription's dead-letter limit.

An HTTP submit waits for no more than the create and the publish (the floor any intake
pays), and for a fresh random id only for the slower of the two (`publish_beside`). The
key's in-flight count, when one is due (`in_flight`), runs beside the create, and the
`published` mark is written after the answer, riding along with the creates of later
submits (`grouped_writes`): all the mark buys is that the sweep leaves the job alone, so
one lost with its process costs a second message, which the worker's claim ignores.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import datetime, timedelta
from typing import Any

from google.api_core import exceptions as gexc

from ltxv.core.dispatch import Dispatcher
from ltxv.core.errors import BACKEND_ERRORS
from ltxv.core.jobs import (
    TERMINAL,
    Job,
    State,
    job_id_for_idempotency_key,
    job_id_for_retry,
    new_job,
    new_job_id,
    utcnow,
)
from ltxv.core.store import Decision, JobExists, JobStore
from ltxv.core.urlsafety import LookupTimedOut
from ltxv.intake.field_errors import FieldError, RequestInvalid
from ltxv.intake.grouped_writes import MAX_BATCH, GroupedWrites
from ltxv.intake.in_flight import InFlightGauge
from ltxv.intake.input_inspection import InputInspector
from ltxv.intake.job_origin import Accepted, JobOrigin
from ltxv.intake.refusals import (
    IdempotencyConflict,
    NotRetryable,
    TooManyJobs,
    Unavailable,
    unavailable_on_error,
)
from ltxv.intake.request_checks import RequestChecks
from ltxv.intake.validation import IntakePolicy, request_hash

log = logging.getLogger(__name__)


# How long a replay waits for another request's publish of the same job before it asks
# its client to retry (the creator normally publishes within milliseconds).
REPLAY_WAIT_SECONDS = 5.0


# What a retry may start from: a job that ended without a video (a job past its deadline
# ends failed too). Queued and running jobs are still on their way; a succeeded one is done.
RETRYABLE = TERMINAL - {State.SUCCEEDED}


class Intake(RequestChecks):
    def __init__(
        self,
        store: JobStore,
        dispatcher: Dispatcher,
        policy: IntakePolicy,
        ttl_days: int = 30,
        max_in_flight: int = 0,
        inputs: InputInspector | None = None,
        writes_per_batch: int = MAX_BATCH,
    ) -> None:
        self.store = store
        self.dispatcher = dispatcher
        self.policy = policy
        self.ttl_days = ttl_days
        self.max_in_flight = max_in_flight
        self.inputs = inputs  # None: a request with conditions cannot be checked, so is refused
        # Longer than a publish can take (its retries and its wait for Pub/Sub's answer).
        self.publish_claim = timedelta(seconds=dispatcher.timeout * 3)
        # Counts taken beside creates, and the ones no request waits for (apart, so that
        # those cannot hold up these while Firestore is slow).
        self._beside = ThreadPoolExecutor(8, thread_name_prefix="intake")
        self._recounts = ThreadPoolExecutor(2, thread_name_prefix="recount")
        self.in_flight = InFlightGauge(max_in_flight)
        self.writes = GroupedWrites(store, max_batch=writes_per_batch)

    def submit_http(
        self, body: Any, *, api_key_id: str, idempotency_key: str | None = None
    ) -> Accepted:
        inline: dict[str, bytes] = {}
        try:
            request = self.validate(body, api_key_id=api_key_id, inline=inline)
        except LookupTimedOut as exc:
            raise Unavailable(str(exc)) from exc  # the client may retry; nothing accepted
        job_id = (
            job_id_for_idempotency_key(api_key_id, idempotency_key)
            if idempotency_key
            else new_job_id()
        )
        answered = self._before_inputs(request, job_id, api_key_id, idempotency_key)
        if answered is not None:
            return answered
        resolved = self.inspect(request, api_key_id=api_key_id, inline=inline)
        origin = JobOrigin(
            api_key_id=api_key_id,
            idempotency_key=idempotency_key,
            parent_job_id=resolved.extends,
            inputs=tuple(resolved.inputs),
        )
        return self._accept_counted(request, job_id=job_id, origin=origin)

    def retry(self, parent: Job, *, idempotency_key: str | None = None) -> Accepted:
        """A new job with `parent`'s stored request and `parent_job_id`, accepted like a
        submit: the request passes today's validation (limits may have changed since:
        RequestInvalid), counts against the key's jobs in flight, and an Idempotency-Key
        makes a repeat return the same new job. NotRetryable unless `parent` failed or
        was canceled."""
        if State(parent["state"]) not in RETRYABLE:
            raise NotRetryable(parent)
        api_key_id = parent["api_key_id"]
        try:
            request = self.validate(parent["request"], api_key_id=api_key_id)
        except LookupTimedOut as exc:
            raise Unavailable(str(exc)) from exc
        job_id = (
            job_id_for_retry(api_key_id, parent["job_id"], idempotency_key)
            if idempotency_key
            else new_job_id()
        )
        answered = self._before_inputs(request, job_id, api_key_id, idempotency_key)
        if answered is not None:
            return answered
        resolved = self.inspect(request, api_key_id=api_key_id)
        origin = JobOrigin(  # its parent is the job retried, even one that extended another
            api_key_id=api_key_id,
            idempotency_key=idempotency_key,
            parent_job_id=parent["job_id"],
            inputs=tuple(resolved.inputs),
        )
        return self._accept_counted(request, job_id=job_id, origin=origin)

    def _accept_counted(
        self, request: dict[str, Any], *, job_id: str, origin: JobOrigin
    ) -> Accepted:
        """`accept`, if the key has room for one more job in flight (TooManyJobs if not);
        a replay of a job already accepted is answered whatever the count. The count runs
        while the job is created, and is waited for before it is published."""
        if not self.max_in_flight or not self.in_flight.needs_count(origin.api_key_id):
            if self.max_in_flight and self.in_flight.refresh_due(origin.api_key_id):
                self._recounts.submit(self._refresh_in_flight, origin.api_key_id)
            # A fresh random id names no job yet: nothing to replay, so its message may go
            # out while the job is created (a worker that finds it first looks again).
            fresh = origin.idempotency_key is None
            return self.accept(
                request, job_id=job_id, origin=origin, mark_later=True, publish_beside=fresh
            )
        counting = self._beside.submit(self._count_in_flight, origin.api_key_id)
        return self.accept(
            request,
            job_id=job_id,
            origin=origin,
            admit=lambda: self._has_room(counting, origin.api_key_id),
            mark_later=True,
        )

    def _count_in_flight(self, api_key_id: str, beside_create: bool = True) -> int:
        started = self.in_flight.clock()  # a count is as old as its start
        with unavailable_on_error("job store"):
            counted = self.store.count_in_flight(api_key_id, up_to=self.max_in_flight + 1)
        self.in_flight.counted(api_key_id, counted, admitted=int(beside_create), at=started)
        return counted

    def _refresh_in_flight(self, api_key_id: str) -> None:
        """A count taken in the background, for the submits after this one."""
        try:
            self._count_in_flight(api_key_id, beside_create=False)
        except Exception as exc:  # nobody waits on this future: say so here
            self.in_flight.refresh_failed(api_key_id)
            log.warning("could not count jobs in flight", extra={"error": str(exc)})

    def _has_room(self, counting: Future[int], api_key_id: str) -> bool:
        """Whether the key had room for the job just created, from a count taken while it
        was created (so it may or may not include it): below the limit there was room
        either way, above it there was none either way, and at the limit a second count,
        which certainly includes it, decides."""
        counted = counting.result()
        if counted == self.max_in_flight:
            counted = self._count_in_flight(api_key_id) - 1
        return counted < self.max_in_flight

    def room_for(self, api_key_id: str) -> int | float:
        """How many more jobs the key may have queued or running now. A soft limit: a
        burst of requests counted at the same moment may pass it by a few."""
        if not self.max_in_flight:
            return float("inf")
        with unavailable_on_error("job store"):
            return self.max_in_flight - self.store.count_in_flight(
                api_key_id, up_to=self.max_in_flight
            )

    def accept(
        self,
        request: dict[str, Any],
        *,
        job_id: str,
        origin: JobOrigin,
        admit: Callable[[], bool] | None = None,
        mark_later: bool = False,
        publish_beside: bool = False,
    ) -> Accepted:
        """Record and publish a validated request under a stable job id, exactly once.
        `admit`, asked once the job is recorded and before it is published, may refuse a
        new job (TooManyJobs); `mark_later` writes the `published` mark after returning;
        `publish_beside` publishes while the job is created, for an id no request can
        have used before (a job whose create then fails leaves a message naming no job,
        which the workers drop once it is older than a create can take)."""
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
            parent_job_id=origin.parent_job_id,
            ttl_days=self.ttl_days,
        )
        job["publish_claim_until"] = job["created_at"] + self.publish_claim
        if origin.batch_id:
            job["batch_id"] = origin.batch_id
        if origin.inputs:
            job["inputs"] = list(origin.inputs)
        started = self._start_publish(job) if publish_beside else None
        try:
            self.writes.create(job)
        except JobExists as exists:
            return self._replay(exists.job, digest)
        except gexc.InvalidArgument as exc:
            # Firestore refuses the document itself; retrying cannot help. Validation
            # rejects everything known to cause this, so this is the last line.
            log.error("the job store refused a validated job", extra={"error": str(exc)})
            raise RequestInvalid(
                [FieldError("$", "the request holds a key or value the job store cannot keep")]
            ) from exc
        except BACKEND_ERRORS as exc:
            raise Unavailable(f"job store unavailable: {exc}") from exc
        if admit is not None:
            self._admit_or_undo(job_id, admit)
        try:
            self.dispatcher.wait(started or self.dispatcher.start([job]))
        except BACKEND_ERRORS as exc:
            self._undo_create(job_id)
            raise Unavailable(f"job queue unavailable: {exc}") from exc
        if mark_later:
            self.writes.mark_published(job_id)
            return Accepted({**job, "published": True, "published_at": utcnow()}, created=True)
        return Accepted(self._mark_published(job), created=True)

    def _start_publish(self, job: Job) -> list[Future[str]]:
        try:
            return self.dispatcher.start([job])
        except BACKEND_ERRORS as exc:
            raise Unavailable(f"job queue unavailable: {exc}") from exc

    def _admit_or_undo(self, job_id: str, admit: Callable[[], bool]) -> None:
        try:
            admitted = admit()
        except Unavailable:
            self._undo_create(job_id)
            raise
        if admitted:
            return
        try:
            self.store.delete_unpublished(job_id)
        except BACKEND_ERRORS as exc:
            # Left in place, the sweep would publish the job the client is told was
            # refused: say "unknown, retry" instead (a retry with its Idempotency-Key
            # finds the job).
            raise Unavailable(f"job store unavailable: {exc}") from exc
        raise TooManyJobs(self.max_in_flight)

    def _replay(self, job: Job, digest: str) -> Accepted:
        if job.get("request_hash") != digest:
            raise IdempotencyConflict(job)
        return self.replay(job)

    def replay(self, job: Job) -> Accepted:
        """A job already created, answered as it is once it is surely published."""
        give_up = time.monotonic() + REPLAY_WAIT_SECONDS
        pause = 0.05  # growing: a burst of replays must not poll the job flat out
        while not job.get("published") and job["state"] == State.QUEUED:
            # An earlier request created it and has not published it yet: it is doing so
            # now (wait), or it stopped between create and publish (finish its work).
            claimed, current = self._claim_publish(job["job_id"])
            if current is None:
                raise Unavailable("the job's creation was undone (its publish failed)")
            job = current
            if claimed:
                with unavailable_on_error("job queue"):
                    self.dispatcher.publish([job])
                job = self._mark_published(job)
                break
            if time.monotonic() > give_up:
                raise Unavailable("another request is publishing this job right now")
            time.sleep(pause)
            pause = min(pause * 1.5, 0.5)
        return Accepted(job, created=False)

    def _claim_publish(self, job_id: str) -> tuple[bool, Job | None]:
        """(True, job) if this caller now holds the job's publish claim; (False, job) if
        it is published, settled or claimed by someone else; (False, None) if it is gone."""

        def decide(job: Job, now: datetime) -> Decision[bool]:
            held_until = job.get("publish_claim_until")
            if job.get("published") or job["state"] != State.QUEUED:
                return Decision(False)
            if held_until is not None and held_until > now:
                return Decision(False)
            return Decision(True, {"publish_claim_until": now + self.publish_claim})

        with unavailable_on_error("job store"):
            decided = self.store.decide(job_id, decide)
        if decided is None:
            return False, None
        job, claimed = decided
        return claimed, job

    def _mark_published(self, job: Job) -> Job:
        try:
            self.store.mark_published([job["job_id"]])
        except gexc.NotFound as exc:
            # Removed since it was published (its creator's publish failed meanwhile and
            # undid it): the client must not hear "accepted" for a job that is not there.
            raise Unavailable(f"job {job['job_id']} is gone") from exc
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
        stranded = []
        for job in found:
            if job["state"] == State.QUEUED:
                claimed, current = self._claim_publish(job["job_id"])
                if claimed and current is not None:
                    stranded.append(current)
        if stranded:
            self.dispatcher.publish(stranded)
            log.warning(
                "republished stranded jobs", extra={"job_ids": [j["job_id"] for j in stranded]}
            )
        # Jobs canceled before their message went out need none; mark them too so the
        # sweep does not look at them again. One that vanished meanwhile needs nothing.
        settled = [job["job_id"] for job in found if job["state"] != State.QUEUED]
        for job_id in [j["job_id"] for j in stranded] + settled:
            with contextlib.suppress(gexc.NotFound):
                self.store.mark_published([job_id])
        return [job["job_id"] for job in stranded]
