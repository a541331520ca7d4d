"""The sweep's second task: fail the queued jobs whose queue deadline has passed, whether
or not any worker is up, and write their result.json (which sends `job.failed`).

Each job is failed in a conditional write (`JobStore.decide`): a worker claiming the same
job at the same moment and this sweep never both win. Whichever writes first stands; the
other reads the job again and finds it running (its deadline cleared) or failed.
"""

from __future__ import annotations

import logging
from datetime import datetime

import google.cloud.storage as storage

from ltxv.core.deadlines import fail_past_queue_deadline, past_queue_deadline
from ltxv.core.errors import BACKEND_ERRORS
from ltxv.core.jobs import Job, utcnow
from ltxv.core.results import build_result, write_result_once
from ltxv.core.store import Decision, JobStore

log = logging.getLogger(__name__)


class QueueDeadlines:
    def __init__(self, store: JobStore, storage_client: storage.Client, outputs_bucket: str):
        self.store = store
        self.storage = storage_client
        self.outputs_bucket = outputs_bucket

    def expire(self, now: datetime | None = None) -> list[str]:
        """Fail every job the query finds still queued past its deadline; the ids failed
        by this call."""
        failed = []
        for found in self.store.queued_past_deadline(now or utcnow()):
            job = self.fail_if_past(found["job_id"])
            if job is not None:
                failed.append(job["job_id"])
                self._write_result(job)
        if failed:
            log.warning("jobs failed past their queue deadline", extra={"job_ids": failed})
        return failed

    def fail_if_past(self, job_id: str) -> Job | None:
        """The job as failed by this call, or None if it was not (started or settled
        meanwhile, or gone)."""

        def decide(job: Job, now: datetime) -> Decision[bool]:
            if not past_queue_deadline(job, now):
                return Decision(False)
            return Decision(True, fail_past_queue_deadline(job, now))

        decided = self.store.decide(job_id, decide)
        if decided is None or not decided[1]:
            return None
        return decided[0]

    def _write_result(self, job: Job) -> None:
        # If this write fails, the job's own message still comes to a worker, whose claim
        # finds it settled and writes the missing result.json.
        try:
            write_result_once(self.storage, self.outputs_bucket, build_result(job))
        except BACKEND_ERRORS as exc:
            log.warning(
                "result.json of a job past its queue deadline not written yet",
                extra={"job_id": job["job_id"], "error": str(exc)},
            )
