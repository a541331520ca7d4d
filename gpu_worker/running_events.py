"""Announcing a claimed job for its job.running webhook (when its request asked for one).

The worker holds no webhook secret: it writes the event's data as
`jobs/{id}/running-{attempt}.webhook.json` in the outputs bucket, create-only, and the
notify function (which holds the secrets) signs and sends it from its storage trigger
(`ltxv.notify.running_events`). Best effort and bounded: the render never waits long
for it nor fails for it; a job.running that cannot be written is logged and not sent
(the settled event is unaffected).
"""

from __future__ import annotations

import logging

import google.cloud.storage as storage
from google.api_core import exceptions as gexc

from ltxv.core.jobs import Job
from ltxv.core.webhook_triggers import (
    running_data,
    running_object,
    wanted_events,
    write_trigger_once,
)

log = logging.getLogger(__name__)

WRITE_TIMEOUT_SECONDS = 10.0


class RunningAnnouncer:
    def __init__(self, storage_client: storage.Client, outputs_bucket: str) -> None:
        self.storage = storage_client
        self.bucket = outputs_bucket

    def __call__(self, job: Job) -> None:
        """Called with the job as this worker's claim left it (running, its attempt)."""
        if "running" not in wanted_events(job):
            return
        name = running_object(job["job_id"], job["attempts"])
        try:
            write_trigger_once(
                self.storage, self.bucket, name, running_data(job), WRITE_TIMEOUT_SECONDS
            )
        except (gexc.GoogleAPICallError, gexc.RetryError, OSError, ValueError) as exc:
            log.warning(
                "job.running not announced", extra={"job_id": job["job_id"], "error": str(exc)}
            )
