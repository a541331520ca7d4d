"""The worker loop: pull a job id, claim the job, render it, hand the video to the finisher.

    while not stopping:
        message = pull one
        claim the job (conditional Firestore write) -> missing / settled / busy: ack or defer
        render (lease and progress kept in the background; cancel, deadline checked per step)
        finisher: encode mp4 + poster, upload, mark succeeded, write result.json, ack

Rendering happens on the main thread, one job at a time (one process per GPU). What
follows a render (encoding, uploads, bookkeeping) runs on one finisher thread, so when
a backlog exists the GPU is already on the next job while the last one is being saved.

Failures: an error the request caused fails the job (result.json, ack), as does a
conditioning input that is gone or changed (input_unavailable); anything else
(storage, Firestore, a bug) puts it back to `queued` and nacks, so the subscription's
backoff applies and its dead-letter policy ends a job that never works. Out of memory is
retried once, in a fresh process: the worker requeues the job and exits (systemd, or the
local stack, starts it again with the device's memory whole); the same job out of memory in
a process that had rendered nothing before fails with `out_of_memory`.
On SIGTERM the worker stops pulling, lets the current job finish within the grace period,
else interrupts it, requeues and nacks it, and exits 0.
"""

from __future__ import annotations

import logging
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import google.cloud.storage as storage
import numpy as np

from gpu_worker import lifecycle as lifecycles
from gpu_worker.lifecycle import Claim, ClaimOutcome, JobLifecycle, LeaseLost
from ltxv.core.errors import BACKEND_ERRORS
from ltxv.core.jobs import Job
from ltxv.core.results import build_result, write_result_once
from ltxv.core.settings import Settings

from . import conditioning
from .encoding import encode_mp4, write_poster
from .generation import (
    Renderer,
    RenderInterrupted,
    RenderOutOfMemory,
    RenderRefused,
    TransientRenderError,
)
from .health import Health, device_problem
from .joined_video import write_joined
from .lease import JobControl, LeaseKeeper
from .messages import AckKeeper, JobMessages, Received
from .outputs import DestinationTaken, JobOutputs

log = logging.getLogger(__name__)

# What a job says about a failure of ours: no exception text (paths, addresses, library
# internals) reaches a client; the worker's log has the details under the job id.
INTERNAL_ERRORS = {
    "render_error": "the render failed with an internal error; the job will be retried",
    "finish_error": "saving the video failed; the job will be retried",
}

# Its exit status when it exits to get a fresh process (EX_TEMPFAIL): systemd's
# Restart=always and the local stack's supervisor start it again.
RESTART_EXIT_STATUS = 75

# An out-of-memory job that came back this often fails, fresh process or not: other jobs
# taken first by each new process must not keep it cycling until the dead-letter limit.
OUT_OF_MEMORY_LAST_ATTEMPT = 3

# A job recorded for another model comes back this late (each time counting toward the
# dead-letter limit, whose handler then fails it with the claim's explanation).
FOREIGN_RETRY_SECONDS = 60


class Worker:
    def __init__(
        self,
        settings: Settings,
        *,
        lifecycle: JobLifecycle,
        storage_client: storage.Client,
        messages: JobMessages,
        renderer: Renderer,
        health: Health | None = None,
    ) -> None:
        self.settings = settings
        self.lifecycle = lifecycle
        self.storage = storage_client
        self.messages = messages
        self.renderer = renderer
        # What GET /healthz answers from (gpu_worker/health.py); kept up to date either way.
        self.health = health or Health(model=settings.worker_model)
        self.outputs = JobOutputs(storage_client, settings.outputs, settings.storage_retry_seconds)
        self.stopping = threading.Event()  # SIGTERM: take no new job
        self.interrupting = threading.Event()  # grace over: stop the render between steps
        self._finisher = ThreadPoolExecutor(1, thread_name_prefix="finisher")
        self._finishing: Future[None] | None = None
        self._load_seconds = 0.0
        self._workdir = Path(tempfile.mkdtemp(prefix="ltxv-worker-"))
        self._renders = 0  # renders this process has started (1: the first, a fresh process)
        self._exit_status = 0  # RESTART_EXIT_STATUS once it wants a fresh process

    # --- the loop -------------------------------------------------------------------------

    def run(self) -> int:
        self._load_seconds = self.renderer.load()
        log.info("model loaded", extra={"seconds": round(self._load_seconds, 3)})
        # A CUDA profile wants the GPU; the renderer would fall back to the CPU without one.
        wanted = "cuda" if self.renderer.profile.accelerator == "cuda" else "cpu"
        problem = device_problem(wanted)
        if problem:
            log.error("device not usable; health says unready", extra={"error": problem})
        self.health.loaded(self.renderer.device, problem)
        idle = 0.2
        while not self.stopping.is_set():
            try:
                received = self.messages.pull_one()
            except BACKEND_ERRORS as exc:
                self.health.pulled(str(exc))
                log.warning("pull failed", extra={"error": str(exc)})
                self.stopping.wait(2.0)
                continue
            self.health.pulled()
            if received is None:
                self.stopping.wait(idle)
                idle = min(idle * 2, 2.0)
                continue
            idle = 0.2
            self.health.job_started(received.job_id)
            try:
                self.handle(received)
            except Exception:
                # A bug must cost one delivery, not the worker: the message comes back and
                # the dead-letter policy ends a job that fails every time.
                log.exception("handling failed; nacked", extra={"job_id": received.job_id})
                self.messages.nack(received)
            finally:
                self.health.job_done()
        self._wait_for_finisher()
        self._finisher.shutdown(wait=True)
        log.info("worker stopped", extra={"exit_status": self._exit_status})
        return self._exit_status

    def request_stop(self) -> None:
        """SIGTERM: stop pulling now; interrupt the render if the grace period runs out."""
        if self.stopping.is_set():
            return
        self.stopping.set()
        timer = threading.Timer(self.settings.shutdown_grace_seconds, self.interrupting.set)
        timer.daemon = True
        timer.start()

    # --- one message ----------------------------------------------------------------------

    def handle(self, received: Received) -> None:
        if received.job_id is None:
            log.error("message names no job; dropped", extra={"message_id": received.message_id})
            self.messages.ack(received)
            return
        # What the subscription's filter keeps out never gets here (JobMessages.pull_one).
        job_id = received.job_id
        keeper = AckKeeper(self.messages, received).start()
        try:
            claim = self.lifecycle.claim(job_id, received.published_at)
            if claim.outcome is ClaimOutcome.CLAIMED:
                self._render(claim.found, received, keeper)  # the keeper is the render's now
                return
            if claim.outcome is ClaimOutcome.SETTLED:
                self._repair_result(claim.found)
        except BACKEND_ERRORS as exc:
            keeper.stop()
            log.warning("claim failed; nacked", extra={"job_id": job_id, "error": str(exc)})
            self.messages.nack(received)
            return
        except BaseException:
            # Whatever broke, the extender must not outlive this message's handling: it
            # would hold the message away from every other worker while this process lives.
            keeper.stop()
            raise
        keeper.stop()
        self._answer_unclaimed(claim, received)

    def _answer_unclaimed(self, claim: Claim, received: Received) -> None:
        job_id, model = received.job_id, self.lifecycle.model
        if claim.outcome is ClaimOutcome.MISSING and received.young(lifecycles.UNRECORDED_GRACE):
            # Its creation may still be on the way, or have failed: ask again later.
            log.info("no such job yet; deferred", extra={"job_id": job_id})
            self.messages.nack(received, delay_seconds=lifecycles.UNRECORDED_RETRY_SECONDS)
        elif claim.outcome is ClaimOutcome.MISSING:
            log.error("unknown job id; dropped", extra={"job_id": job_id})
            self.messages.ack(received)
        elif claim.outcome is ClaimOutcome.SETTLED:
            self.messages.ack(received)
        elif claim.outcome is ClaimOutcome.FOREIGN:
            log.error(
                "job recorded for another model; not rendered",
                extra={"job_id": job_id, "job_model": claim.found["model"], "worker_model": model},
            )
            self.messages.nack(received, delay_seconds=FOREIGN_RETRY_SECONDS)
        elif claim.outcome is ClaimOutcome.BUSY:
            # Come back when that lease would have run out: if its worker died, take over.
            self.messages.nack(received, delay_seconds=int(claim.lease_left) + 1)
            log.info("job leased elsewhere; deferred", extra={"job_id": job_id})

    def _render(self, job: Job, received: Received, keeper: AckKeeper) -> None:
        job_id = job["job_id"]
        request = job["request"]
        control = JobControl.for_job(job)
        lease = LeaseKeeper(self.lifecycle, control, self.settings.progress_interval_seconds)
        lease.start()
        self._renders += 1
        log.info(
            "rendering", extra={"job_id": job_id, "attempt": job["attempts"], "lane": received.lane}
        )

        def on_step(step: int, total: int) -> None:
            control.step = step
            self.health.progress(step, total)

        def should_stop() -> bool:
            return control.should_stop() or self.interrupting.is_set()

        try:
            if request.get("gcs_destination"):
                self.outputs.check_destination(job)  # before the GPU time, not after it
            load, self._load_seconds = self._load_seconds, 0.0  # the first render pays it
            self.lifecycle.rendering(job_id, load)
            read: dict[str, bytes] = {}  # an extend's video, for the joined output too
            media = conditioning.for_job(self.storage, job, self.renderer, read)
            result = self.renderer.render(request, media, on_step=on_step, should_stop=should_stop)
        except Exception as exc:
            lease.stop()
            try:
                self._settle_unrendered(job_id, received, control, exc)
            finally:
                keeper.stop()
            return
        timings = {
            "model_load_seconds": round(load, 3),
            "generate_seconds": round(result.seconds, 3),
        }
        # One job finishing at a time bounds memory; the next render starts meanwhile.
        self._wait_for_finisher()
        self._finishing = self._finisher.submit(
            self._finish, job, result.frames, read.get("extend"), timings, received, keeper,
            lease, control)  # fmt: skip

    def _wait_for_finisher(self) -> None:
        if self._finishing is not None:
            self._finishing.result()
            self._finishing = None

    # --- after the render -----------------------------------------------------------------

    def _finish(
        self, job: Job, frames: np.ndarray, earlier: bytes | None, timings: dict[str, float],
        received: Received, keeper: AckKeeper, lease: LeaseKeeper, control: JobControl,
    ) -> None:  # fmt: skip
        job_id = job["job_id"]
        try:
            started = time.monotonic()
            folder = self._workdir / job_id
            folder.mkdir(parents=True, exist_ok=True)
            encoder = self.settings.video_encoder
            video = encode_mp4(frames, job["request"]["fps"], folder / "video.mp4", encoder=encoder)
            write_poster(frames[0], folder / "poster.jpg")
            joined = write_joined(job, earlier, frames, folder, encoder)  # None: not an extend
            timings["encode_seconds"] = round(time.monotonic() - started, 3)
            started = time.monotonic()
            outputs = self.outputs.upload(job, folder)
            timings["upload_seconds"] = round(time.monotonic() - started, 3)
            lease.stop()
            settled = self.lifecycle.succeed(job_id, outputs, timings, control.total_steps)
            result = build_result(settled, video.as_dict(), joined.as_dict() if joined else None)
            write_result_once(self.storage, self.settings.outputs, result)
            self.messages.ack(received)
            log.info("job succeeded", extra={"job_id": job_id, "timings": timings})
        except LeaseLost:
            # Taken over (the new owner holds the message now, and this nack is refused),
            # or the lease lapsed while Firestore was out of reach: then the message comes
            # back and its next claim takes the job over. An ack would strand that job.
            log.warning("job taken from this worker before it finished", extra={"job_id": job_id})
            self.messages.nack(received)
        except DestinationTaken as exc:
            lease.stop()
            self._fail_destination_taken(job_id, received, exc)
        except Exception as exc:
            log.exception("finishing failed", extra={"job_id": job_id, "error": repr(exc)})
            lease.stop()
            self._requeue(job_id, received, "finish_error", INTERNAL_ERRORS["finish_error"])
        finally:
            keeper.stop()
            for path in (self._workdir / job_id).glob("*"):
                path.unlink(missing_ok=True)

    def _fail_destination_taken(self, job_id: str, received: Received, exc: Exception) -> None:
        log.warning("destination taken; job failed", extra={"job_id": job_id, "error": str(exc)})
        self._fail(job_id, received, "destination_exists", str(exc))

    # --- settling without a video ---------------------------------------------------------

    def _settle_unrendered(
        self, job_id: str, received: Received, control: JobControl, exc: Exception
    ) -> None:
        """A render that ended without frames: interrupted, refused, or broken."""
        if isinstance(exc, RenderInterrupted):
            self._after_interrupt(job_id, received, control)
        elif isinstance(exc, RenderOutOfMemory):
            self._after_out_of_memory(job_id, received)
        elif isinstance(exc, TransientRenderError):
            self._requeue(job_id, received, "render_transient", str(exc))
        elif isinstance(exc, DestinationTaken):
            self._fail_destination_taken(job_id, received, exc)
        elif isinstance(exc, RenderRefused):  # the same request fails the same way again
            self._fail(job_id, received, exc.code, str(exc))  # invalid_request, input_unavailable
        else:
            # The job shows a code and a sentence; what broke stays in the logs.
            log.exception("render failed", extra={"job_id": job_id}, exc_info=exc)
            self._requeue(job_id, received, "render_error", INTERNAL_ERRORS["render_error"])

    def _after_out_of_memory(self, job_id: str, received: Received) -> None:
        """Once in a fresh process, then failed: a request that does not fit never will."""
        fresh = self._renders == 1
        if fresh or received.delivery_attempt >= OUT_OF_MEMORY_LAST_ATTEMPT:
            where = "in a fresh worker process" if fresh else "again, after a retry"
            reason = (
                f"model {self.renderer.profile.name} ran out of memory on the "
                f"{self.renderer.device} rendering this request {where}: it does not fit; "
                "ask for fewer frames, a smaller size or fewer steps"
            )
            log.warning(
                "out of memory; job failed",
                extra={"job_id": job_id, "fresh": fresh, "attempt": received.delivery_attempt},
            )
            self._fail(job_id, received, "out_of_memory", reason)
            return
        log.warning("out of memory; retrying in a fresh process", extra={"job_id": job_id})
        message = "ran out of memory; retried once in a fresh worker process"
        self._requeue(job_id, received, "out_of_memory", message)
        self._exit_status = RESTART_EXIT_STATUS
        self.request_stop()

    def _after_interrupt(self, job_id: str, received: Received, control: JobControl) -> None:
        if control.lost.is_set():
            log.warning("lease lost mid-render; stopped", extra={"job_id": job_id})
            self.messages.nack(received)  # as in _finish: whoever owns the job decides
        elif control.cancel.is_set():
            self._settle_with_result(received, lambda: self.lifecycle.cancel(job_id))
            log.info("job canceled mid-render", extra={"job_id": job_id})
        elif control.overdue():
            limit = control.max_run_seconds
            self._settle_with_result(received, lambda: self.lifecycle.overran(job_id, limit))
            log.info("job stopped at its run deadline", extra={"job_id": job_id})
        else:
            self._requeue(job_id, received, "worker_shutdown", "the worker stopped mid-render")

    def _fail(self, job_id: str, received: Received, code: str, reason: str) -> None:
        self._settle_with_result(received, lambda: self.lifecycle.fail(job_id, code, reason))

    def _settle_with_result(self, received: Received, settle: Callable[[], Job]) -> None:
        try:
            job = settle()
            write_result_once(self.storage, self.settings.outputs, build_result(job))
        except LeaseLost:
            self.messages.nack(received)  # no longer ours to settle: its redelivery decides
            return
        except BACKEND_ERRORS as exc:
            log.warning("could not settle; nacked", extra={"error": str(exc)})
            self.messages.nack(received)
            return
        self.messages.ack(received)

    def _requeue(self, job_id: str, received: Received, code: str, message: str) -> None:
        try:
            self.lifecycle.requeue(job_id, code, message)
        except LeaseLost:
            pass
        except BACKEND_ERRORS as exc:
            # The lease runs out by itself and the redelivered message takes the job over.
            log.warning("could not requeue", extra={"job_id": job_id, "error": str(exc)})
        self.messages.nack(received)
        log.warning("job requeued", extra={"job_id": job_id, "code": code, "reason": message})

    def _repair_result(self, job: Job) -> None:
        """A settled job whose result.json may be missing (a crash before it was written)."""
        try:
            # Written only if absent (if_generation_match=0): one request either way.
            if write_result_once(self.storage, self.settings.outputs, build_result(job)):
                log.warning("result.json repaired", extra={"job_id": job["job_id"]})
        except BACKEND_ERRORS as exc:
            log.warning(
                "result.json not repaired", extra={"job_id": job["job_id"], "error": str(exc)}
            )
