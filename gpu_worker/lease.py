"""A render's hold on its job: the Firestore lease, renewed in the background with the
job's progress, and what the render loop checks between denoising steps (a cancel, a lost
lease, the run deadline)."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field

from gpu_worker.lifecycle import JobLifecycle, LeaseLost
from ltxv.core.errors import BACKEND_ERRORS
from ltxv.core.jobs import Job

from .keeper import Keeper

log = logging.getLogger(__name__)


@dataclass
class JobControl:
    """What the background lease keeper and the render loop share for one job."""

    job_id: str
    total_steps: int
    step: int = 0
    cancel: threading.Event = field(default_factory=threading.Event)
    lost: threading.Event = field(default_factory=threading.Event)
    # The request's max_run_seconds, counted from this attempt's claim (ltxv.core.deadlines).
    max_run_seconds: int | None = None
    started: float = field(default_factory=time.monotonic)

    @classmethod
    def for_job(cls, job: Job) -> JobControl:
        """Made as the job is claimed: its run clock starts now."""
        request = job["request"]
        return cls(
            job["job_id"],
            request["num_inference_steps"],
            max_run_seconds=request.get("max_run_seconds"),
        )

    def overdue(self) -> bool:
        limit = self.max_run_seconds
        return limit is not None and time.monotonic() - self.started > limit

    def should_stop(self) -> bool:
        """Checked between denoising steps: canceled, taken away, or out of time."""
        return self.cancel.is_set() or self.lost.is_set() or self.overdue()


class LeaseKeeper(Keeper):
    """Renews the job's Firestore lease and writes progress, at a throttled rate.

    It also learns of a cancel request from the renewed document, which is how a cancel
    reaches the render between steps without an extra read per step.
    """

    thread_name = "lease-keeper"
    join_seconds = 10.0

    def __init__(self, lifecycle: JobLifecycle, control: JobControl, interval: float) -> None:
        super().__init__()
        self.lifecycle = lifecycle
        self.control = control
        self.interval = interval

    def _run(self) -> None:
        renew_every = max(self.interval, self.lifecycle.lease_seconds / 3)
        last_renewal = time.monotonic()
        written_step = 0
        while not self._stop.wait(self.interval):
            step = self.control.step
            if step == written_step and time.monotonic() - last_renewal < renew_every:
                continue
            try:
                job = self.lifecycle.renew(self.control.job_id, (step, self.control.total_steps))
            except LeaseLost:
                self.control.lost.set()
                return
            except Exception as exc:
                # Whatever went wrong (an outage, a contended write, a bug), the thread
                # must live: a lease nobody renews lets another worker take the job over.
                log.warning(
                    "lease not renewed",
                    extra={"job_id": self.control.job_id, "error": repr(exc)},
                    exc_info=not isinstance(exc, BACKEND_ERRORS),
                )
                if time.monotonic() - last_renewal > self.lifecycle.lease_seconds * 0.9:
                    # The lease is about to run out unrenewed: another worker may take the
                    # job now, so stop rendering it rather than spend the GPU twice.
                    self.control.lost.set()
                    return
                continue
            written_step, last_renewal = step, time.monotonic()
            if job.get("cancel_requested"):
                self.control.cancel.set()
