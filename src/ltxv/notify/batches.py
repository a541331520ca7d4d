"""Batches of prompt files: each settled job counted, the manifest and batch.completed once.

`result_ready` sees every job's result.json (succeeded, failed, canceled by the API or the
dead-letter handler alike), so it is where a batch learns that its jobs settled:

1. The job's own webhook, as before (`WebhookNotifier`).
2. If the job is a line of a prompt file (`batch_id`), add it to the batch's `settled` set
   (ArrayUnion: idempotent, and concurrent settles never overwrite each other). A batch
   not yet recorded (its file still being read) is asked about again later.
3. Whoever finds every job settled completes the batch: the first conditional write fixes
   `completed_at` and the summary, the manifest is written create-only from those fixed
   values (concurrent completers: one write wins, the others find it there), then the
   batch.completed event goes through a `WebhookNotifier` over the batches collection: the
   same claim, so one send at a time, and the same retry schedule, riding on this trigger.

A crash anywhere is the trigger's retry: the job is already in `settled`, the batch is
complete, a manifest written is not written again, and the event is sent unless its
record says it was.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

from ltxv.core.batches import (
    BatchStore,
    batch_event_id,
    is_complete,
    jobs_by_id,
    manifest_header,
    manifest_lines,
    summarize,
    write_manifest,
)
from ltxv.core.errors import BACKEND_ERRORS
from ltxv.core.jobs import State, utcnow
from ltxv.core.store import JobStore
from ltxv.core.webhook_triggers import BATCH_COMPLETED_OBJECT
from ltxv.core.webhooks import encode_event
from ltxv.notify.notifier import RESULT_OBJECT, RetryLater, WebhookNotifier
from ltxv.notify.schedule import backend_retry

log = logging.getLogger(__name__)

BATCH_EVENT = "batch.completed"
NOT_RECORDED_RETRY = timedelta(seconds=10)


def batch_event(header: dict[str, Any]) -> dict[str, Any]:
    return {"type": BATCH_EVENT, "timestamp": header["completed_at"], "data": header}


class Batches:
    def __init__(self, jobs: JobStore, batches: BatchStore, storage: Any, sender: WebhookNotifier):
        self.jobs = jobs
        self.batches = batches
        self.storage = storage
        self.sender = sender  # a WebhookNotifier whose store is the batches collection

    def job_settled(self, job_id: str) -> str:
        """Count a settled job in its batch and complete the batch if it was the last; what
        happened: no_batch, open, completed (this call wrote the manifest), or done."""
        try:
            job = self.jobs.get(job_id)
            if job is None or not job.get("batch_id") or not State(job["state"]).terminal:
                return "no_batch"
            batch_id = str(job["batch_id"])
            batch = self.batches.add_settled(batch_id, job_id)
        except BACKEND_ERRORS as exc:
            raise backend_retry(job_id, "the batch store failed") from exc
        if batch is None:
            raise RetryLater(job_id, utcnow() + NOT_RECORDED_RETRY, "its batch is not recorded yet")
        if not is_complete(batch):
            return "open"
        return self._complete(batch)

    def completed_without_jobs(self, batch_id: str) -> str:
        """The trigger the prompt-file function writes for a batch none of whose lines
        became a job (it completed the batch and wrote the manifest): send its event."""
        try:
            batch = self.batches.get(batch_id)
        except BACKEND_ERRORS as exc:
            raise backend_retry(batch_id, "the batch store failed") from exc
        if batch is None or not is_complete(batch):
            log.warning("no completed batch for its trigger", extra={"batch_id": batch_id})
            return "no_batch"
        return self._complete(batch)

    def _complete(self, batch: dict[str, Any]) -> str:
        batch_id = batch["batch_id"]
        try:
            jobs = jobs_by_id(self.jobs, (entry["job_id"] for entry in batch["accepted"]))
            lines = manifest_lines(batch, jobs)
            batch = self.batches.complete(batch_id, summarize(lines))
            wrote = write_manifest(self.storage, batch, lines)
        except BACKEND_ERRORS as exc:
            raise backend_retry(batch_id, "completing the batch") from exc
        header = manifest_header(batch)
        if wrote:
            log.info("batch completed", extra={"batch_id": batch_id, **header["summary"]})
        if batch.get("webhook"):
            body = encode_event(batch_event(header))  # from stored values: the same each time
            state = self.sender.send_event(batch_id, batch_event_id(batch_id), body)
            log.info("batch webhook", extra={"batch_id": batch_id, "delivery_state": state})
        return "completed" if wrote else "done"


class ResultReady:
    """The `result_ready` function: a job's webhook, then its batch's bookkeeping. Each runs
    whatever the other did; the earliest retry either asks for is the trigger's."""

    def __init__(self, notifier: WebhookNotifier, batches: Batches) -> None:
        self.notifier = notifier
        self.batches = batches

    def on_object(self, bucket: str, name: str, generation: str | None) -> str:
        without_jobs = BATCH_COMPLETED_OBJECT.match(name)
        if without_jobs and bucket == self.notifier.settings.outputs:
            return self.batches.completed_without_jobs(without_jobs.group(1))
        later: list[RetryLater] = []
        try:
            state = self.notifier.on_object(bucket, name, generation)
        except RetryLater as exc:
            later.append(exc)
            state = "retrying"
        match = RESULT_OBJECT.match(name)
        if state not in ("ignored", "gone", "unreadable") and match:
            try:
                self.batches.job_settled(match.group(1))
            except RetryLater as exc:
                later.append(exc)
        if later:
            raise min(later, key=lambda exc: exc.at)
        return state
