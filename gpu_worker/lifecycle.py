"""A job's life after intake: claimed, leased, progressing, and settled, each step a
conditional write on `jobs/{job_id}` (`JobStore.decide`) so that two workers (or a
worker and a cancel) can never both win.

The lease is what makes "exactly one video per job" hold through crashes: a worker owns a
running job only while its lease is live; a redelivered message for a job whose lease
ran out is taken over (attempts + 1), one for a live lease is left to its owner.

Each settling write also adds the attempt's GPU seconds and their price to the job's
`usage` (ltxv.core.usage): a job requeued after part of a render carries them on.
"""

from __future__ import annotations

import enum
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

from ltxv.core.deadlines import fail_past_queue_deadline, past_queue_deadline, run_deadline_error
from ltxv.core.jobs import (
    Changes,
    Job,
    JobError,
    Lease,
    State,
    lease_end,
    transition,
    utcnow,
)
from ltxv.core.store import Decision, JobStore
from ltxv.core.usage import add_attempt

log = logging.getLogger(__name__)


class ClaimOutcome(enum.Enum):
    CLAIMED = "claimed"  # this worker now runs the job
    SETTLED = "settled"  # succeeded, failed or canceled already: nothing to render
    BUSY = "busy"  # another worker holds a live lease
    MISSING = "missing"  # no such job
    FOREIGN = "foreign"  # recorded for another model than this worker renders


@dataclass(frozen=True)
class Claim:
    outcome: ClaimOutcome
    job: Job | None = None
    lease_left: float = 0.0  # seconds, for BUSY

    @property
    def found(self) -> Job:
        """The job as the claim left it, which every outcome but MISSING has."""
        if self.job is None:
            raise LookupError(f"a {self.outcome.value} claim has no job")
        return self.job


# How long after its message was published a job may still be being created, and when a
# message that found none then comes back. Intake's create gives up within twice its RPC
# timeout (10 s by default: a retry deadline, plus the call in flight), so a job not there
# after 30 s never will be. Deferred at most 3 times, such an orphan is dropped on its
# 4th delivery, before the subscription's 5 deliveries would dead-letter it and page an
# operator for a job that never existed (tests/integration/test_publish_beside.py).
UNRECORDED_GRACE = timedelta(seconds=30)
UNRECORDED_RETRY_SECONDS = 10


class LeaseLost(RuntimeError):
    """The job is no longer this worker's: canceled, settled, or taken over."""


@dataclass
class Attempt:
    """A render of this worker's: the GPU is the job's from its start, plus the model load
    if this job paid it (the first a worker process renders)."""

    load_seconds: float
    started: float = field(default_factory=time.monotonic)

    def gpu_seconds(self) -> float:
        return self.load_seconds + time.monotonic() - self.started


# Renders remembered for their settling write; one whose job was taken away (and so is
# never settled here) must not stay forever.
MAX_ATTEMPTS_KEPT = 16


class JobLifecycle:
    def __init__(
        self,
        store: JobStore,
        owner: str,
        lease_seconds: float = 120.0,
        *,
        model: str,
        on_claimed: Callable[[Job], None] | None = None,
        gpu_hour_usd: float = 0.0,
    ) -> None:
        self.store = store
        self.owner = owner
        self.lease_seconds = lease_seconds
        self.model = model  # the only model this worker renders
        # Told of each job this worker claims, before its render (the job.running event,
        # `running_events.RunningAnnouncer`); it must not raise.
        self.on_claimed = on_claimed
        self.gpu_hour_usd = gpu_hour_usd  # what usage.cost_usd is priced at
        self._attempts: OrderedDict[str, Attempt] = OrderedDict()

    def _lease(self, now: datetime) -> Lease:
        return {"owner": self.owner, "expires_at": now + timedelta(seconds=self.lease_seconds)}

    def _owns(self, job: Job) -> bool:
        lease = job.get("lease")
        owner = lease.get("owner") if lease else None
        return job["state"] == State.RUNNING and owner == self.owner

    def claim(self, job_id: str, published_at: datetime | None = None) -> Claim:
        """Take the job if it is there to take. A message published less than
        `UNRECORDED_GRACE` ago may have overtaken its job's creation (intake publishes a
        fresh job while it creates the document): missing, it is looked for again a few
        times within a second before the claim says MISSING."""
        claim = self._claim(job_id)
        young = published_at is not None and utcnow() - published_at < UNRECORDED_GRACE
        for pause in (0.05, 0.2, 0.75) if young else ():
            if claim.outcome is not ClaimOutcome.MISSING:
                break
            time.sleep(pause)
            claim = self._claim(job_id)
        return claim

    def _claim(self, job_id: str) -> Claim:
        def decide(job: Job, now: datetime) -> Decision[Claim]:
            state = State(job["state"])
            if state.terminal:
                return Decision(Claim(ClaimOutcome.SETTLED))
            busy_until = lease_end(job, now)
            if busy_until is not None:
                # Live lease, even our own: a duplicate message must not start a second
                # render of a job this process is still rendering or finishing.
                lease_left = (busy_until - now).total_seconds()
                return Decision(Claim(ClaimOutcome.BUSY, lease_left=lease_left))
            if past_queue_deadline(job, now):
                # Waited longer than its request allows: failed, never started, whichever
                # worker (or the sweep, QueueDeadlines) gets to it first.
                return Decision(Claim(ClaimOutcome.SETTLED), fail_past_queue_deadline(job, now))
            if job["model"] != self.model:
                # Never rendered with another model than the one recorded. Only a message
                # routed to the wrong pool gets here; the error explains the dead letter
                # that ends the job if no pool of its model ever takes it.
                error = {
                    "code": "no_worker_for_model",
                    "message": f"delivered to a worker for model {self.model}, not {job['model']}",
                    "retryable": True,
                }
                return Decision(Claim(ClaimOutcome.FOREIGN), {"error": error})
            if job.get("cancel_requested"):
                # Canceled while its worker was gone: settle it rather than render it.
                canceled = transition(job, State.CANCELED, now)
                return Decision(Claim(ClaimOutcome.SETTLED), canceled)
            queued_at = (job.get("state_times") or {}).get(State.QUEUED.value, job["created_at"])
            running = transition(
                job,
                State.RUNNING,
                now,
                attempts=job.get("attempts", 0) + 1,
                lease=self._lease(now),
                progress={"step": 0, "total": job["request"]["num_inference_steps"]},
                error=None,
                timings={"queue_seconds": round((now - queued_at).total_seconds(), 3)},
                queue_deadline_at=None,  # started in time: a later requeue does not fail it
            )
            return Decision(Claim(ClaimOutcome.CLAIMED), running)

        decided = self.store.decide(job_id, decide)
        if decided is None:
            return Claim(ClaimOutcome.MISSING)
        job, claim = decided
        if claim.outcome is ClaimOutcome.CLAIMED and self.on_claimed is not None:
            try:
                self.on_claimed(job)
            except Exception:  # an announcement never costs the render
                log.exception("on_claimed failed", extra={"job_id": job_id})
        return replace(claim, job=job)

    def rendering(self, job_id: str, load_seconds: float) -> None:
        """The job's render starts now; `load_seconds` of model load are its to pay."""
        self._attempts[job_id] = Attempt(load_seconds)
        while len(self._attempts) > MAX_ATTEMPTS_KEPT:
            self._attempts.popitem(last=False)

    def renew(self, job_id: str, progress: tuple[int, int] | None = None) -> Job:
        """Extend the lease (and record progress); raise LeaseLost if it is not ours."""

        def change(job: Job, now: datetime) -> Changes:
            if not self._owns(job):
                raise LeaseLost(job_id)
            changes: Changes = {"lease": self._lease(now)}
            if progress is not None:
                changes["progress"] = {"step": progress[0], "total": progress[1]}
            return changes

        job = self.store.transact(job_id, change)
        if job is None:
            raise LeaseLost(job_id)
        return job

    def _settle(
        self, job_id: str, state: State, fields: dict[str, Any], gpu_seconds: float | None = None
    ) -> Job:
        """Move this worker's job on, adding the attempt's GPU time to its usage: the
        seconds given, else since `rendering` (none if it never started rendering)."""
        attempt = self._attempts.pop(job_id, None)
        if gpu_seconds is None and attempt is not None:
            gpu_seconds = attempt.gpu_seconds()

        def change(job: Job, now: datetime) -> Changes:
            if not self._owns(job):
                raise LeaseLost(job_id)
            changes = transition(job, state, now, **fields)
            if gpu_seconds is not None:
                changes["usage"] = add_attempt(job.get("usage"), gpu_seconds, self.gpu_hour_usd)
            return changes

        job = self.store.transact(job_id, change)
        if job is None:
            raise LeaseLost(job_id)
        return job

    def succeed(
        self, job_id: str, outputs: dict[str, str], timings: dict[str, float], total_steps: int
    ) -> Job:
        fields = {"outputs": outputs, "progress": {"step": total_steps, "total": total_steps}}
        fields.update({f"timings.{name}": value for name, value in timings.items()})
        # The GPU's part of this attempt, by the worker's own clocks (not the upload).
        used = sum(
            timings.get(f"{part}_seconds", 0.0) for part in ("model_load", "generate", "encode")
        )
        return self._settle(job_id, State.SUCCEEDED, fields, gpu_seconds=used)

    def fail(self, job_id: str, code: str, message: str) -> Job:
        error: JobError = {"code": code, "message": message, "retryable": False}
        return self._settle(job_id, State.FAILED, {"error": error})

    def overran(self, job_id: str, max_run_seconds: int | None) -> Job:
        """Fail a job whose render was stopped at its run deadline."""
        error = run_deadline_error(max_run_seconds or 0)
        return self._settle(job_id, State.FAILED, {"error": error})

    def cancel(self, job_id: str) -> Job:
        return self._settle(job_id, State.CANCELED, {})

    def requeue(self, job_id: str, code: str, message: str) -> Job:
        """Give a running job back to the queue (transient error or shutdown)."""
        error = {"code": code, "message": message, "retryable": True}
        return self._settle(job_id, State.QUEUED, {"error": error, "progress": None})
