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
from .jobs import State, check_transition
from .notify import RetryLater
from .results import build_result, write_result_once
from .store import JobStore

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
        seen: dict[str, str] = {}

        def decide(job: dict[str, Any], now: datetime) -> dict[str, Any] | None:
            state = State(job["state"])
            if state.terminal:
                seen["outcome"] = "already_" + state.value
                return None
            lease = job.get("lease") or {}
            if state == State.RUNNING and lease.get("expires_at") and lease["expires_at"] > now:
                # A worker is still on it (its last delivery outlived the message): let it
                # finish; the job is decided when its lease ends, one way or the other.
                raise RetryLater(job_id, lease["expires_at"], "a worker holds a live lease")
            check_transition(state, State.FAILED)
            seen["outcome"] = "failed"
            return {
                "state": State.FAILED.value,
                f"state_times.{State.FAILED.value}": now,
                "lease": None,
                "error": self._error(job, delivery_attempts),
            }

        job = self.store.transact(job_id, decide)
        if job is None:
            log.error("dead letter for a job that does not exist", extra={"job_id": job_id})
            return "missing"
        wrote = write_result_once(self.storage, self.outputs_bucket, build_result(job))
        log.warning(
            "dead letter",
            extra={"job_id": job_id, "outcome": seen["outcome"], "result_written": wrote},
        )
        return seen["outcome"]

    def _error(self, job: dict[str, Any], delivery_attempts: int | None) -> dict[str, Any]:
        tries = delivery_attempts or job.get("attempts") or 0
        message = f"gave up after {tries} deliveries of the job without it finishing"
        last = job.get("error") or {}
        if last.get("message"):
            message += f"; last error: {last['message']}"
        return {"code": self.CODE, "message": message, "retryable": False}
