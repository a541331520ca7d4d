"""Firestore `jobs/{job_id}`: create, read, list and change jobs.

Every call carries a bounded retry and timeout, so a Firestore outage turns into a fast,
retryable error for the caller instead of a request that hangs for minutes.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Generic, TypeVar, cast

from google.api_core import exceptions as gexc
from google.api_core.retry import Retry
from google.cloud import firestore
from google.cloud.firestore_v1.bulk_batch import BulkWriteBatch

from ltxv.core.jobs import Changes, Job, Page, State, transition, utcnow

if TYPE_CHECKING:
    from google.cloud.firestore_v1.aggregation import AggregationQuery
    from google.cloud.firestore_v1.base_aggregation import AggregationResult


class JobExists(Exception):
    def __init__(self, job: Job) -> None:
        super().__init__(job["job_id"])
        self.job = job


class JobNotFound(LookupError):
    pass


class BadPageToken(ValueError):
    pass


# Read-decide-write rounds of `decide` before it gives up on a job others keep writing.
WRITE_ATTEMPTS = 20

# A BatchWrite's per-write statuses worth another try, and how many tries in all:
# RESOURCE_EXHAUSTED, ABORTED, UNAVAILABLE (google.rpc.Code), as BulkWriter retries.
PASSING_WRITE_ERRORS = frozenset({8, 10, 14})
WRITE_TOGETHER_ATTEMPTS = 3


class TransactionContended(gexc.Aborted):
    """Other writers kept changing the job between each read and write. A backend error
    like any other (a subclass of Aborted): the caller retries later, a client gets 503.
    (`firestore.transactional` raises a plain ValueError for its version of this, which
    reads as a bug; `decide` does not use it.)"""


T = TypeVar("T")


@dataclass(frozen=True)
class Decision(Generic[T]):
    """What a read-decide-write round (`JobStore.decide`) concluded: `outcome`, for its
    caller, and the `changes` to write (None: nothing to write)."""

    outcome: T
    changes: Changes | None = None


def published_at(now: datetime) -> Changes:
    """The `published` mark: Pub/Sub has the job's message (the sweep leaves it alone)."""
    return {"published": True, "published_at": now}


def _encode_cursor(job: dict[str, Any]) -> str:
    raw = json.dumps({"t": job["created_at"].isoformat(), "id": job["job_id"]})
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def _decode_cursor(token: str) -> dict[str, Any]:
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        data = json.loads(raw)
        return {"created_at": datetime.fromisoformat(data["t"]), "job_id": str(data["id"])}
    except (binascii.Error, ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
        raise BadPageToken("page_token is not one this API returned") from exc


class JobStore:
    def __init__(
        self, client: firestore.Client, collection: str = "jobs", timeout: float = 10.0
    ) -> None:
        self.client = client
        self.collection = client.collection(collection)
        self.timeout = timeout
        self.retry = Retry(initial=0.1, maximum=1.0, multiplier=2.0, timeout=timeout)

    def ref(self, job_id: str) -> firestore.DocumentReference:
        return self.collection.document(job_id)

    def create(self, job: Job) -> None:
        """Create the document; raise JobExists (with the stored job) if the id is taken."""
        try:
            self.ref(job["job_id"]).create(dict(job), retry=self.retry, timeout=self.timeout)
        except (gexc.AlreadyExists, gexc.Conflict):
            self.taken(job)

    def taken(self, job: Job) -> None:
        """After a create of `job` was told its id is taken: JobExists with the stored
        job, unless what is stored is this very job (a retried write that had landed
        the first time) or nothing is (deleted in between: one more create settles it)."""
        existing = self.get(job["job_id"])
        if existing is None:
            self.ref(job["job_id"]).create(dict(job), retry=self.retry, timeout=self.timeout)
            return
        if all(existing.get(k) == job.get(k) for k in ("created_at", "request_hash")):
            return
        raise JobExists(existing)

    def write_together(self, creates: list[Job], marks: list[str]) -> list[Exception | None]:
        """Create `creates` and mark the jobs `marks` published in one BatchWrite, whose
        writes succeed or fail each on its own (one request's conflict is not another's);
        what became of each, creates first: None, or the error a write of its own would
        have raised. A job may appear once. A write Firestore answers with a passing
        error (as BulkWriter does) is tried again, alone with the others that got one."""
        now = utcnow()
        writes: list[tuple[Job | None, str]] = [(job, job["job_id"]) for job in creates]
        writes += [(None, job_id) for job_id in marks]
        outcomes: list[Exception | None] = [None] * len(writes)
        pending = list(range(len(writes)))
        for attempt in range(WRITE_TOGETHER_ATTEMPTS):
            batch = BulkWriteBatch(self.client)
            for i in pending:
                job, job_id = writes[i]
                if job is not None:
                    batch.create(self.ref(job_id), dict(job))
                else:
                    batch.update(self.ref(job_id), published_at(now))
            answer = batch.commit(retry=self.retry, timeout=self.timeout)
            again = []
            for i, status in zip(pending, answer.status, strict=True):
                if status.code in PASSING_WRITE_ERRORS and attempt + 1 < WRITE_TOGETHER_ATTEMPTS:
                    again.append(i)
                elif status.code != 0:
                    outcomes[i] = gexc.from_grpc_status(status.code, status.message)
            if not again:
                break
            pending = again
            time.sleep(0.05 * 2**attempt)
        return outcomes

    def get(self, job_id: str) -> Job | None:
        found = self.get_versioned(job_id)
        return None if found is None else found[0]

    def get_versioned(self, job_id: str) -> tuple[Job, datetime] | None:
        """The job and Firestore's update time of the version read: it grows with every
        write of the document, whoever wrote it (the job's `updated_at` is the writer's
        clock, and not every writer sets it)."""
        snapshot = self.ref(job_id).get(retry=self.retry, timeout=self.timeout)
        if not snapshot.exists:
            return None
        return cast(Job, snapshot.to_dict()), snapshot.update_time

    def delete_unpublished(self, job_id: str) -> None:
        """Undo a create whose publish failed, unless something already moved the job on."""

        snapshot = self.ref(job_id).get(retry=self.retry, timeout=self.timeout)
        if not snapshot.exists or snapshot.get("published"):
            return
        unchanged = self.client.write_option(last_update_time=snapshot.update_time)
        with contextlib.suppress(gexc.FailedPrecondition, gexc.NotFound):
            # Changed since the read: a replay published it, or it is gone already.
            self.ref(job_id).delete(option=unchanged, retry=self.retry, timeout=self.timeout)

    def mark_published(self, job_ids: list[str]) -> None:
        now = utcnow()
        batch = self.client.batch()
        for job_id in job_ids:
            batch.update(self.ref(job_id), published_at(now))
        batch.commit(retry=self.retry, timeout=self.timeout)

    def unpublished_before(self, cutoff: datetime, limit: int = 500) -> list[Job]:
        query = (
            self.collection.where(filter=firestore.FieldFilter("published", "==", False))
            .where(filter=firestore.FieldFilter("created_at", "<", cutoff))
            .limit(limit)
        )
        stream = query.stream(retry=self.retry, timeout=self.timeout)
        return [cast(Job, s.to_dict()) for s in stream]

    def queued_past_deadline(self, now: datetime, limit: int = 500) -> list[Job]:
        """Queued jobs whose queue deadline has come (composite index: state,
        queue_deadline_at); a started job's deadline is cleared, so only never-started
        ones match."""
        query = (
            self.collection.where(filter=firestore.FieldFilter("state", "==", State.QUEUED.value))
            .where(filter=firestore.FieldFilter("queue_deadline_at", "<=", now))
            .order_by("queue_deadline_at")
            .limit(limit)
        )
        stream = query.stream(retry=self.retry, timeout=self.timeout)
        return [cast(Job, s.to_dict()) for s in stream]

    def count_in_flight(self, api_key_id: str, up_to: int | None = None) -> int:
        """How many of a key's jobs are queued or running, counting no further than
        `up_to`: one count aggregation (billed as one read per 1000 index entries), whose
        work the limit bounds however deep the key's backlog is."""
        return self.count_active("api_key_id", api_key_id, up_to)

    def count_active(self, field: str, value: str, up_to: int | None = None) -> int:
        """How many jobs whose `field` is `value` are queued or running (at most `up_to`),
        in one count aggregation; each field counted on has its index in firestore.tf."""
        query = self.collection.where(filter=firestore.FieldFilter(field, "==", value)).where(
            filter=firestore.FieldFilter("state", "in", [State.QUEUED, State.RUNNING])
        )
        if up_to is not None:
            query = query.limit(up_to)
        # firestore annotates count() as returning the AggregationQuery class and get() as a
        # list of results: count() returns an instance, get() one list per aggregation query.
        counting = cast("AggregationQuery", query.count())
        rows = cast(
            "list[list[AggregationResult]]",
            counting.get(retry=self.retry, timeout=self.timeout),
        )
        (result,) = rows[0]
        return int(result.value)

    def list(
        self,
        api_key_id: str,
        *,
        state: str | None = None,
        page_size: int = 50,
        page_token: str | None = None,
    ) -> Page:
        """One key's jobs, newest first; needs the composite indexes terraform creates."""
        query = self.collection.where(filter=firestore.FieldFilter("api_key_id", "==", api_key_id))
        if state:
            query = query.where(filter=firestore.FieldFilter("state", "==", state))
        query = query.order_by("created_at", direction=firestore.Query.DESCENDING).order_by(
            "job_id", direction=firestore.Query.DESCENDING
        )
        if page_token:
            query = query.start_after(_decode_cursor(page_token))
        docs = [
            cast(dict[str, Any], s.to_dict())  # None only for a snapshot of no document
            for s in query.limit(page_size + 1).stream(retry=self.retry, timeout=self.timeout)
        ]
        more = len(docs) > page_size
        docs = docs[:page_size]
        return Page(docs, _encode_cursor(docs[-1]) if more and docs else None)

    def transact(
        self, job_id: str, change: Callable[[Job, datetime], Changes | None]
    ) -> Job | None:
        """`decide` for a change with nothing to report: `change(job, now)` names the
        changes (None: none); returns the job as it now is, or None if there is none."""
        decided = self.decide(job_id, lambda job, now: Decision(None, change(job, now)))
        return None if decided is None else decided[0]

    def decide(
        self, job_id: str, decide: Callable[[Job, datetime], Decision[T]]
    ) -> tuple[Job, T] | None:
        """Read the job, let `decide(job, now)` conclude and name the changes, and apply
        them only if nobody wrote the job in between; returns the job as it now is with
        the outcome of the decision that stands, or None if there is no such job.
        `decide` may raise to abort without a write.

        Optimistic, not a Firestore transaction: the write carries the read's update time
        as a precondition, and a job written meanwhile is read and decided again. A
        transaction would lock the document from its read to its commit; with a worker
        renewing its lease, cancels and notify all writing one job, locks held across
        round trips on a busy machine time each other out until every writer gives up.
        The precondition holds nothing, so the first writer wins and the others decide
        again on what it wrote (e.g. a second cancel finds the first one's flag)."""
        ref = self.ref(job_id)
        # The `updated_at` and outcome of the last write that failed; a job showing that
        # `updated_at` got the write after all.
        lost: tuple[datetime, T] | None = None
        for attempt in range(1, WRITE_ATTEMPTS + 1):
            snapshot = ref.get(retry=self.retry, timeout=self.timeout)
            if not snapshot.exists:
                return None
            job = cast(Job, snapshot.to_dict())
            if lost is not None and job.get("updated_at") == lost[0]:
                # Our write landed after all: its answer was lost, and the client's retry
                # of it then failed on its own precondition. Deciding again would read our
                # own change as someone else's (a lease we hold as "busy", a job we just
                # settled as "not ours").
                return job, lost[1]
            now = utcnow()
            decision = decide(job, now)
            changes = decision.changes
            if not changes:
                return job, decision.outcome
            changes.setdefault("updated_at", now)
            unchanged = self.client.write_option(last_update_time=snapshot.update_time)
            try:
                ref.update(changes, option=unchanged, retry=self.retry, timeout=self.timeout)
            except (gexc.FailedPrecondition, gexc.NotFound):
                # Written (or deleted) since the read: spread the writers out a little.
                lost = (changes["updated_at"], decision.outcome)
                time.sleep(random.uniform(0.0, 0.02) * attempt)
                continue
            return _apply_changes(job, changes), decision.outcome
        raise TransactionContended(
            f"job {job_id} changed under each of {WRITE_ATTEMPTS} attempts to write it"
        )

    def request_cancel(self, job_id: str, api_key_id: str) -> tuple[Job, bool]:
        """queued -> canceled at once; running -> cancel requested (the worker stops it).
        Returns the job and whether this call changed it.

        Terminal jobs are returned unchanged; the caller decides what that means. A cancel
        that finds nothing left to change is a plain read: a client repeating its cancel,
        or many cancelling at once, do not queue up writes on a job whose worker is
        writing its progress to it.
        """

        def needs(job: Job) -> bool:
            if job["api_key_id"] != api_key_id:
                raise JobNotFound(job_id)
            return job["state"] == State.QUEUED or (
                job["state"] == State.RUNNING and not job["cancel_requested"]
            )

        def decide(job: Job, now: datetime) -> Decision[bool]:
            """Whether this cancel changes the job, and how."""
            if not needs(job):
                return Decision(False)
            requested = {"cancel_requested": True, "cancel_requested_at": now}
            if job["state"] == State.QUEUED:
                return Decision(True, transition(job, State.CANCELED, now, **requested))
            return Decision(True, requested)

        try:
            # A cancel that changes nothing is one read: nothing is written.
            decided = self.decide(job_id, decide)
        except TransactionContended:
            # Others wrote the job meanwhile (another cancel, its worker): what matters
            # is whether a cancel now stands.
            job = self.get(job_id)
            if job is None or needs(job):
                raise
            return job, False
        if decided is None:
            raise JobNotFound(job_id)
        return decided


def _apply_changes(job: Job, changes: Changes) -> Job:
    """What `update(changes)` did to the document, without reading it back."""
    document: dict[str, Any] = {**job}
    for path, value in changes.items():
        target = document
        *parents, leaf = path.split(".")
        for part in parents:
            target[part] = dict(target.get(part) or {})
            target = target[part]
        target[leaf] = value
    return cast(Job, document)
