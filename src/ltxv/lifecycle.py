"""A job's life after intake: claimed, leased, progressing, and settled, each step a
conditional write on `jobs/{job_id}` (`JobStore.transact`) so that two workers (or a
worker and a cancel) can never both win.

The lease is what makes "exactly one video per job" hold through crashes: a worker owns a
running job only while its lease is live; a redelivered message for a job whose lease
ran out is taken over (attempts + 1), one for a live lease is left to its owner.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from .jobs import State, check_transition
from .store import JobStore


class ClaimOutcome(enum.Enum):
    CLAIMED = "claimed"  # this worker now runs the job
    SETTLED = "settled"  # succeeded, failed or canceled already: nothing to render
    BUSY = "busy"  # another worker holds a live lease
    MISSING = "missing"  # no such job
    FOREIGN = "foreign"  # recorded for another model than this worker renders


@dataclass(frozen=True)
class Claim:
    outcome: ClaimOutcome
    job: dict[str, Any] | None = None
    lease_left: float = 0.0  # seconds, for BUSY


class LeaseLost(RuntimeError):
    """The job is no longer this worker's: canceled, settled, or taken over."""


class JobLifecycle:
    def __init__(
        self, store: JobStore, owner: str, lease_seconds: float = 120.0, *, model: str
    ) -> None:
        self.store = store
        self.owner = owner
        self.lease_seconds = lease_seconds
        self.model = model  # the only model this worker renders

    def _lease(self, now: datetime) -> dict[str, Any]:
        return {"owner": self.owner, "expires_at": now + timedelta(seconds=self.lease_seconds)}

    def _owns(self, job: dict[str, Any]) -> bool:
        lease = job.get("lease") or {}
        return job["state"] == State.RUNNING and lease.get("owner") == self.owner

    def claim(self, job_id: str) -> Claim:
        seen: dict[str, Any] = {}

        def decide(job: dict[str, Any], now: datetime) -> dict[str, Any] | None:
            seen.clear()
            state = State(job["state"])
            lease = job.get("lease") or {}
            if state.terminal:
                seen["outcome"] = ClaimOutcome.SETTLED
                return None
            if state == State.RUNNING and lease.get("expires_at") and lease["expires_at"] > now:
                # Live lease, even our own: a duplicate message must not start a second
                # render of a job this process is still rendering or finishing.
                seen["outcome"] = ClaimOutcome.BUSY
                seen["lease_left"] = (lease["expires_at"] - now).total_seconds()
                return None
            if job["model"] != self.model:
                # Never rendered with another model than the one recorded. Only a message
                # routed to the wrong pool gets here; the error explains the dead letter
                # that ends the job if no pool of its model ever takes it.
                seen["outcome"] = ClaimOutcome.FOREIGN
                return {
                    "error": {
                        "code": "no_worker_for_model",
                        "message": f"delivered to a worker for model {self.model}, "
                        f"not {job['model']}",
                        "retryable": True,
                    }
                }
            if job.get("cancel_requested"):
                # Canceled while its worker was gone: settle it rather than render it.
                seen["outcome"] = ClaimOutcome.SETTLED
                return {
                    "state": State.CANCELED.value,
                    f"state_times.{State.CANCELED.value}": now,
                    "lease": None,
                }
            seen["outcome"] = ClaimOutcome.CLAIMED
            queued_at = (job.get("state_times") or {}).get(State.QUEUED.value, job["created_at"])
            return {
                "state": State.RUNNING.value,
                f"state_times.{State.RUNNING.value}": now,
                "attempts": job.get("attempts", 0) + 1,
                "lease": self._lease(now),
                "progress": {"step": 0, "total": job["request"]["num_inference_steps"]},
                "error": None,
                "timings": {"queue_seconds": round((now - queued_at).total_seconds(), 3)},
            }

        job = self.store.transact(job_id, decide)
        if job is None:
            return Claim(ClaimOutcome.MISSING)
        return Claim(seen["outcome"], job, seen.get("lease_left", 0.0))

    def renew(self, job_id: str, progress: tuple[int, int] | None = None) -> dict[str, Any]:
        """Extend the lease (and record progress); raise LeaseLost if it is not ours."""

        def decide(job: dict[str, Any], now: datetime) -> dict[str, Any]:
            if not self._owns(job):
                raise LeaseLost(job_id)
            changes: dict[str, Any] = {"lease": self._lease(now)}
            if progress is not None:
                changes["progress"] = {"step": progress[0], "total": progress[1]}
            return changes

        job = self.store.transact(job_id, decide)
        if job is None:
            raise LeaseLost(job_id)
        return job

    def _settle(self, job_id: str, state: State, fields: dict[str, Any]) -> dict[str, Any]:
        def decide(job: dict[str, Any], now: datetime) -> dict[str, Any]:
            if not self._owns(job):
                raise LeaseLost(job_id)
            check_transition(job["state"], state)
            return {
                "state": state.value,
                f"state_times.{state.value}": now,
                "lease": None,
                **fields,
            }

        job = self.store.transact(job_id, decide)
        if job is None:
            raise LeaseLost(job_id)
        return job

    def succeed(
        self, job_id: str, outputs: dict[str, str], timings: dict[str, float], total_steps: int
    ) -> dict[str, Any]:
        fields = {"outputs": outputs, "progress": {"step": total_steps, "total": total_steps}}
        fields.update({f"timings.{name}": value for name, value in timings.items()})
        return self._settle(job_id, State.SUCCEEDED, fields)

    def fail(self, job_id: str, code: str, message: str) -> dict[str, Any]:
        error = {"code": code, "message": message, "retryable": False}
        return self._settle(job_id, State.FAILED, {"error": error})

    def cancel(self, job_id: str) -> dict[str, Any]:
        return self._settle(job_id, State.CANCELED, {})

    def requeue(self, job_id: str, code: str, message: str) -> dict[str, Any]:
        """Give a running job back to the queue (transient error or shutdown)."""
        error = {"code": code, "message": message, "retryable": True}
        return self._settle(job_id, State.QUEUED, {"error": error, "progress": None})
