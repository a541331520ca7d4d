"""Dead letters: a job message the worker subscription gave up on fails its job.

Runs as the `dead_letter` event function (functions/notify); the job's result.json then
reaches the client through the webhook path (`notify.WebhookNotifier`) like any outcome.
"""

from __future__ import annotations

import base64
import logging
import re
from datetime import datetime
from typing import Any

from google.cloud import storage

from .dispatch import parse_job_id
from .jobs import Job, JobError, State, lease_end, transition
from .notify import RetryLater
from .results import build_result, write_result_once
from .store import Decision, JobStore

log = logging.getLogger(__name__)

# Pub/Sub adds this attribute to a dead-lettered message: how often it was delivered.
DELIVERY_COUNT_ATTRIBUTE = "CloudPubSubDeadLetterSourceDeliveryCount"
DELIVERY_COUNT = re.compile(r"[0-9]{1,9}")  # ASCII only: str.isdigit() also takes "²"


class DeadLetters:
    """A job message the subscription gave up on: fail the job and write its result.json.

    The result.json then reaches the client through the webhook path like any outcome.
    Dead-lettering is best effort (a message may come twice), so this is idempotent: a
    settled job only gets a missing result.json written.
    """

    CODE = "attempts_exhausted"

    def __init__(self, store: JobStore, storage_client: storage.Client, outputs_bucket: str):
        self.store = store
        self.storage = storage_client
        self.outputs_bucket = outputs_bucket

    def on_message(self, message: dict[str, Any]) -> str:
        """A dead-lettered job message as a `messagePublished` event carries it."""
        attributes = message.get("attributes") or {}
        try:
            payload = base64.b64decode(message.get("data") or "")
        except ValueError:
            payload = b""
        job_id = parse_job_id(payload, attributes)
        if job_id is None:
            # Nothing names a job: retrying cannot help, so take it off the topic.
            log.error(
                "dead letter names no job; dropped", extra={"message_id": message.get("messageId")}
            )
            return "no_job"
        count = attributes.get(DELIVERY_COUNT_ATTRIBUTE, "")
        return self.handle(job_id, int(count) if DELIVERY_COUNT.fullmatch(count) else None)

    def handle(self, job_id: str, delivery_attempts: int | None = None) -> str:
        def decide(job: Job, now: datetime) -> Decision[str]:
            state = State(job["state"])
            if state.terminal:
                return Decision("already_" + state.value)
            busy_until = lease_end(job, now)
            if busy_until is not None:
                # A worker is still on it (its last delivery outlived the message): let it
                # finish; the job is decided when its lease ends, one way or the other.
                raise RetryLater(job_id, busy_until, "a worker holds a live lease")
            error = self._error(job, delivery_attempts)
            return Decision("failed", transition(job, State.FAILED, now, error=error))

        decided = self.store.decide(job_id, decide)
        if decided is None:
            log.error("dead letter for a job that does not exist", extra={"job_id": job_id})
            return "missing"
        job, outcome = decided
        wrote = write_result_once(self.storage, self.outputs_bucket, build_result(job))
        log.warning(
            "dead letter",
            extra={"job_id": job_id, "outcome": outcome, "result_written": wrote},
        )
        return outcome

    def _error(self, job: Job, delivery_attempts: int | None) -> JobError:
        tries = delivery_attempts or job.get("attempts") or 0
        message = f"gave up after {tries} deliveries of the job without it finishing"
        last = job.get("error")
        if last and last.get("message"):
            message += f"; last error: {last['message']}"
        return {"code": self.CODE, "message": message, "retryable": False}
