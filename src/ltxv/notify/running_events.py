"""job.running: a signed event when a GPU worker claims a job whose request asked for it
(`webhook_events` holds "running").

The worker holds no webhook secret: it writes `jobs/{id}/running-{attempt}.webhook.json`
(the event's `data`) once it has claimed the job, and this handler, behind the same
storage trigger as result.json, signs and sends it. One event per attempt: a job that
is requeued and claimed again announces itself again, under a new webhook-id
(`evt_<job>_running_<attempt>`). The record is `webhook.running` on the job (the latest
attempt's), apart from the settled event's own state.

Order: an attempt is claimed only while the job is still running that attempt, in one
conditional write (`JobStore.decide`); the settled event's claim, which comes after the
job settled, waits while that attempt is on the wire. So a running event is never sent
after the job settled, nor after its settled event: one that arrives late, or whose
retry comes after the job moved on, is recorded `skipped` and never sent. Failed
attempts are retried on the trigger's schedule like the settled event's, only while the
job still runs that attempt; the settled event never waits for such a retry.
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import google.cloud.storage as storage
from google.api_core import exceptions as gexc

from ltxv.core.errors import BACKEND_ERRORS
from ltxv.core.jobs import DeliveryAttempt, Job, RunningRecord, State, utcnow
from ltxv.core.settings import Settings
from ltxv.core.store import Decision, JobStore
from ltxv.core.webhook_secrets import WebhookSecrets
from ltxv.core.webhook_triggers import RUNNING_OBJECT, wanted_events
from ltxv.core.webhooks import build_running_event, encode_event, running_event_id
from ltxv.notify.attempt import (
    FINAL,
    SKIPPED,
    AttemptSender,
    Claim,
    filled,
    interrupted,
    log_attempt,
    outcome_of,
)
from ltxv.notify.schedule import RetryLater, RetrySchedule, backend_retry
from ltxv.notify.webhook_sender import SendResult

log = logging.getLogger(__name__)


class RunningNotifier:
    def __init__(
        self,
        store: JobStore,
        storage_client: storage.Client,
        settings: Settings,
        *,
        secrets: WebhookSecrets,
        sender: AttemptSender,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self.store = store
        self.storage = storage_client
        self.secrets = secrets
        self.sender = sender
        self.schedule = RetrySchedule.from_settings(settings)
        self.rng = rng

    def on_object(self, bucket: str, name: str, generation: str | None) -> str:
        """A worker's running-N.webhook.json: send its job.running event if still due."""
        match = RUNNING_OBJECT.match(name)
        if not match:
            return "ignored"
        job_id, attempt = match.group(1), int(match.group(2))
        blob = self.storage.bucket(bucket).blob(name, generation=int(generation or 0) or None)
        try:
            data = json.loads(blob.download_as_bytes(timeout=30))
            if data["job_id"] != job_id or data["attempt"] != attempt:
                raise ValueError("the object names another job or attempt than its data")
            body = encode_event(build_running_event(data))
        except gexc.NotFound:
            return "gone"
        except (KeyError, TypeError, ValueError) as exc:
            log.error("unreadable job.running trigger", extra={"object": name, "error": str(exc)})
            return "unreadable"
        try:
            secrets = self.secrets.all()
        except BACKEND_ERRORS as exc:
            raise backend_retry(job_id, "webhook secrets unreadable") from exc
        claim = self._begin(job_id, attempt, secrets)
        if isinstance(claim, str):
            return claim
        sent, final = self.sender.attempt(claim, body)
        state, next_at = self._record(claim, attempt, sent, final)
        log_attempt(job_id, claim.event_id, sent, state)
        if state == "retrying" and next_at is not None:
            raise RetryLater(job_id, next_at, "the receiver did not take job.running")
        return state

    def _begin(self, job_id: str, attempt: int, secrets: dict[str, Any]) -> Claim | str:
        msg_id = running_event_id(job_id, attempt)
        started = self.sender.clock()

        def decide(job: Job, now: datetime) -> Decision[Claim | str]:
            if "running" not in wanted_events(job):
                return Decision("not_requested")
            webhook = job["webhook"]
            assert webhook is not None  # wanted_events: no events without one
            record = webhook.get("running")
            if record and record["attempt"] > attempt:
                return Decision(SKIPPED)  # a later attempt's event replaced this one
            if record and record["attempt"] < attempt:
                busy = record.get("sending_until")
                if busy and busy > now:  # the previous attempt's event is on the wire
                    raise RetryLater(job_id, busy, "the previous job.running is in flight")
                record = None
            if record and record["state"] in FINAL:
                return Decision(record["state"])
            attempts = list(record["attempts"]) if record else []
            if attempts and attempts[-1].get("in_flight"):
                busy = record.get("sending_until") if record else None
                if busy and busy > now:
                    raise RetryLater(job_id, busy, "another attempt is in flight")
                attempts[-1] = interrupted(attempts[-1])
            due = record.get("next_attempt_at") if record else None
            if due and due > now and _still_running(job, attempt):
                raise RetryLater(job_id, due, "the next attempt is not due yet")
            base: RunningRecord = {
                "attempt": attempt,
                "event_id": msg_id,
                "state": record["state"] if record else "pending",
                "attempts": attempts,
                "next_attempt_at": None,
                "sending_until": None,
                "reason": None,
            }
            if not _still_running(job, attempt):
                # Late: the job settled, or was requeued or taken over. Never sent now,
                # least of all after the settled event.
                reason = f"not sent: the job was {job['state']} (attempt {job['attempts']})"
                skipped = {**base, "state": SKIPPED, "reason": reason}
                return Decision(SKIPPED, {"webhook.running": skipped})
            keys = tuple(secrets.get(job.get("api_key_id") or "", ()))
            if not keys:
                reason = "no webhook signing secret for the job's API key; nothing was sent"
                failed = {**base, "state": "failed", "reason": reason}
                return Decision("failed", {"webhook.running": failed})
            send_by = started + self.sender.budget
            claim = Claim(job_id, msg_id, len(attempts), webhook["url"], keys, send_by)
            claimed: DeliveryAttempt = {"at": now, "status_code": None, "error": None}
            claimed["in_flight"] = True
            record_now = {
                **base,
                "attempts": [*attempts, claimed],
                "sending_until": now + self.sender.hold,
            }
            return Decision(claim, {"webhook.running": record_now})

        try:
            decided = self.store.decide(job_id, decide)
        except BACKEND_ERRORS as exc:
            raise backend_retry(job_id, "the job store is busy") from exc
        return "missing" if decided is None else decided[1]

    def _record(
        self, claim: Claim, attempt: int, sent: SendResult, final: str | None
    ) -> tuple[str, datetime | None]:
        rng = self.rng()
        outcome = outcome_of(sent)

        def decide(job: Job, now: datetime) -> Decision[tuple[str, datetime | None]]:
            webhook = job.get("webhook")
            record = webhook.get("running") if webhook else None
            if not record or record["attempt"] != attempt:
                return Decision((SKIPPED, None))  # replaced by a later attempt's event
            attempts = list(record["attempts"])
            if claim.index < len(attempts):
                attempts[claim.index] = filled(attempts[claim.index], outcome)
            if claim.index < len(attempts) - 1 or record["state"] in FINAL:
                standing = (record["state"], record.get("next_attempt_at"))
                return Decision(standing, {"webhook.running.attempts": attempts})
            state, reason, next_at = "failed", final, None
            if final is None and sent.delivered:
                state = "delivered"
            elif final is None and not sent.retryable:
                reason = f"the receiver answered {sent.status_code}; not retried"
            elif final is None and not _still_running(job, attempt):
                state, reason = SKIPPED, f"not retried: the job is {job['state']} now"
            elif final is None:
                delay = self.schedule.delay(len(attempts), sent.retry_after_seconds, rng)
                state, next_at = "retrying", now + timedelta(seconds=delay)
            changes = {
                "webhook.running.attempts": attempts,
                "webhook.running.state": state,
                "webhook.running.reason": reason,
                "webhook.running.next_attempt_at": next_at,
                "webhook.running.sending_until": None,
            }
            return Decision((state, next_at), changes)

        try:
            decided = self.store.decide(claim.job_id, decide)
        except BACKEND_ERRORS as exc:
            # Left in flight: the settled event waits out its mark, and a later trigger
            # takes the attempt as interrupted.
            log.error(
                "job.running attempt not recorded",
                extra={"job_id": claim.job_id, "error": str(exc), **outcome},
            )
            raise RetryLater(claim.job_id, utcnow() + self.sender.hold, "not recorded") from exc
        return ("missing", None) if decided is None else decided[1]


def _still_running(job: Job, attempt: int) -> bool:
    return job["state"] == State.RUNNING and job.get("attempts") == attempt
