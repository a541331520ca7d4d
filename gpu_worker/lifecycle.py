"""A job's life after intake: claimed, leased, progressing, and settled, each step a
conditional write on `jobs/{job_id}` (`JobStore.decide`) so that two workers (or a
worker and a cancel) can never both win.

The lease is what makes "exactly one video per job" hold through crashes: a worker owns a
running job only while its lease is live; a redelivered message for a job whose lease
ran out is taken over (attempts + 1), one for a live lease is left to its owner.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from ltxv.core.jobs import Changes, Job, Lease, State, lease_end, transition
from ltxv.core.store import Decision, JobStore

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


class LeaseLost(RuntimeError):
    """The job is no longer this worker's: canceled, settled, or taken over."""


class JobLifecycle:
    def __init__(
        self,
        store: JobStore,
        owner: str,
        lease_seconds: float = 120.0,
        *,
        model: str,
        on_claimed: Callable[[Job], None] | None = None,
    ) -> None:
        self.store = store
        self.owner = owner
        self.lease_seconds = lease_seconds
        self.model = model  # the only model this worker renders
        # Told of each job this worker claims, before its render (the job.running event,
        # `running_events.RunningAnnouncer`); it must not raise.
        self.on_claimed = on_claimed

    def _lease(self, now: datetime) -> Lease:
        return {"owner": self.owner, "expires_at": now + timedelta(seconds=self.lease_seconds)}

    def _owns(self, job: Job) -> bool:
        lease = job.get("lease")
        owner = lease.get("owner") if lease else None
        return job["state"] == State.RUNNING and owner == self.owner

    def claim(self, job_id: str) -> Claim:
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

    def _settle(self, job_id: str, state: State, fields: dict[str, Any]) -> Job:
        def change(job: Job, now: datetime) -> Changes:
            if not self._owns(job):
                raise LeaseLost(job_id)
            return transition(job, state, now, **fields)

        job = self.store.transact(job_id, change)
        if job is None:
            raise LeaseLost(job_id)
        return job

    def succeed(
        self, job_id: str, outputs: dict[str, str], timings: dict[str, float], total_steps: int
    ) -> Job:
        fields = {"outputs": outputs, "progress": {"step": total_steps, "total": total_steps}}
        fields.update({f"timings.{name}": value for name, value in timings.items()})
        return self._settle(job_id, State.SUCCEEDED, fields)

    def fail(self, job_id: str, code: str, message: str) -> Job:
        error = {"code": code, "message": message, "retryable": False}
        return self._settle(job_id, State.FAILED, {"error": error})

    def cancel(self, job_id: str) -> Job:
        return self._settle(job_id, State.CANCELED, {})

    def requeue(self, job_id: str, code: str, message: str) -> Job:
        """Give a running job back to the queue (transient error or shutdown)."""
        error = {"code": code, "message": message, "retryable": True}
        return self._settle(job_id, State.QUEUED, {"error": error, "progress": None})
