"""A request's deadlines: how long its job may wait in the queue (`max_queue_seconds`) and
how long each attempt may render (`max_run_seconds`).

The queue deadline is an instant, `queue_deadline_at` = acceptance + max_queue_seconds,
stored on the job by `jobs.new_job` so that one indexed query finds the jobs past it. It
bounds the first start only: a worker's claim clears it, so a job that started in time
and lost its worker (a preempted VM) is queued again without failing; each attempt is
bounded by the run deadline instead, whose clock restarts with each claim.
"""

from __future__ import annotations

from datetime import datetime

from ltxv.core.jobs import Changes, Job, JobError, State, transition

QUEUE_DEADLINE_EXCEEDED = "queue_deadline_exceeded"
RUN_DEADLINE_EXCEEDED = "run_deadline_exceeded"


def past_queue_deadline(job: Job, now: datetime) -> bool:
    """A job still waiting for its first start when its queue deadline has come."""
    deadline = job.get("queue_deadline_at")
    return job["state"] == State.QUEUED and deadline is not None and deadline <= now


def fail_past_queue_deadline(job: Job, now: datetime) -> Changes:
    """The write that ends a job that waited too long: failed, never started."""
    seconds = job["request"].get("max_queue_seconds")
    error: JobError = {
        "code": QUEUE_DEADLINE_EXCEEDED,
        "message": f"not started within max_queue_seconds ({seconds} s after it was "
        "accepted); it never ran",
        "retryable": False,
    }
    return transition(job, State.FAILED, now, error=error)


def run_deadline_error(seconds: int) -> JobError:
    return {
        "code": RUN_DEADLINE_EXCEEDED,
        "message": f"the render ran past max_run_seconds ({seconds} s) and was stopped "
        "between denoising steps",
        "retryable": False,
    }
