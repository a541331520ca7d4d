"""Outcomes to clients: result.json → signed webhook, dead letter → failed job.

Both run as event-driven functions (functions/notify) and lean on their trigger for
retries: raising :class:`RetryLater` makes the function answer non-2xx, Eventarc delivers
the event again after its backoff (10 s to 10 min, for 24 h), and the handler decides
afresh from the job document. So no timer, queue or process of our own has to survive.

Webhook delivery, per job (the record is `jobs/{id}.webhook`):

1. In a transaction: nothing to do if the job has no webhook or its delivery is settled
   (`delivered`/`failed`); retry later if another invocation is sending right now
   (`sending_until`) or the next attempt is not due (`next_attempt_at`); else mark
   `sending_until` and go on. A repeated trigger therefore never sends a delivered event
   again, and two concurrent triggers never send it twice.
2. Check the URL again (DNS may have changed since intake) and POST to the checked address.
3. In a transaction: append the attempt and settle the record: `delivered` on 2xx,
   `failed` on 410/other 4xx/3xx/an unsafe URL/the retry window passed, else `retrying`
   with `next_attempt_at` from exponential backoff with jitter (or `Retry-After`, if later),
   and ask the trigger to come back.
"""

from __future__ import annotations

import base64
import json
import logging
import random
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from google.api_core import exceptions as gexc
from google.cloud import storage

from .dispatch import parse_job_id
from .jobs import State, check_transition, utcnow
from .results import RESULT_NAME, build_result, write_result_once
from .settings import Settings
from .store import JobStore
from .urlsafety import Resolver, UnsafeURL, check_webhook_url, system_resolver
from .webhook_sender import SendResult, post_pinned
from .webhooks import build_event, encode_event, event_id, sign_headers

log = logging.getLogger(__name__)

RESULT_OBJECT = re.compile(rf"^jobs/([a-z0-9]{{1,64}})/{re.escape(RESULT_NAME)}$")
# Pub/Sub adds this attribute to a dead-lettered message: how often it was delivered.
DELIVERY_COUNT_ATTRIBUTE = "CloudPubSubDeadLetterSourceDeliveryCount"
# How long past a send's own timeout its `sending_until` mark still holds off others.
SENDING_MARGIN_SECONDS = 30.0


class RetryLater(Exception):
    """The trigger must deliver this event again, not before `at`."""

    def __init__(self, job_id: str, at: datetime, reason: str) -> None:
        super().__init__(f"job {job_id}: {reason}; retry at {at.isoformat()}")
        self.job_id = job_id
        self.at = at
        self.reason = reason


@dataclass(frozen=True)
class RetrySchedule:
    """Exponential backoff with jitter, bounded per step and in total."""

    base_seconds: float
    max_seconds: float
    window_seconds: float

    @classmethod
    def from_settings(cls, settings: Settings) -> RetrySchedule:
        return cls(
            settings.webhook_retry_base_seconds,
            settings.webhook_retry_max_seconds,
            settings.webhook_retry_window_seconds,
        )

    def delay(self, failed_attempts: int, retry_after: float | None, rng: float) -> float:
        """Seconds before the next attempt; `rng` in [0, 1) spreads retries of many jobs."""
        backoff = min(self.max_seconds, self.base_seconds * 2 ** (failed_attempts - 1))
        delay = backoff * (0.5 + rng / 2)
        return max(delay, retry_after) if retry_after is not None else delay


Send = Callable[..., SendResult]


class WebhookNotifier:
    def __init__(
        self,
        store: JobStore,
        storage_client: storage.Client,
        settings: Settings,
        *,
        secret: str | None = None,
        resolver: Resolver = system_resolver,
        send: Send = post_pinned,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self.secret = secret or settings.webhook_secret
        if not self.secret:
            raise RuntimeError(
                "set LTXV_WEBHOOK_SECRET (whsec_...) or LTXV_WEBHOOK_SECRET_NAME to sign webhooks"
            )
        self.store = store
        self.storage = storage_client
        self.settings = settings
        self.schedule = RetrySchedule.from_settings(settings)
        self.resolver = resolver
        self.send = send
        self.rng = rng

    def on_object(self, bucket: str, name: str, generation: str | None) -> str:
        """A finalized object in some bucket; only the outputs' result.json files matter."""
        if bucket != self.settings.outputs or not RESULT_OBJECT.match(name):
            return "ignored"
        blob = self.storage.bucket(bucket).blob(name, generation=int(generation or 0) or None)
        try:
            result = json.loads(blob.download_as_bytes(timeout=30))
        except gexc.NotFound:
            log.warning("result.json gone before it was read", extra={"object": name})
            return "gone"
        except ValueError:
            log.error("result.json is not JSON; no webhook", extra={"object": name})
            return "unreadable"
        return self.deliver(result)

    def deliver(self, result: dict[str, Any]) -> str:
        """Send the event for `result` unless done or not due; the delivery state after."""
        job_id = result["job_id"]
        msg_id = event_id(job_id)
        stop, url = self._begin(job_id, msg_id)
        if stop is not None:
            return stop
        fields = {"job_id": job_id, "event_id": msg_id}
        try:
            checked = check_webhook_url(
                url,
                allow_http_loopback=self.settings.allow_http_loopback_webhooks,
                resolver=self.resolver,
            )
        except UnsafeURL as exc:
            sent = SendResult(None, str(exc), 0.0)
            state = self._record(job_id, utcnow(), sent, final=str(exc))
            log.warning("webhook refused", extra={**fields, "reason": str(exc)})
            return state
        body = encode_event(build_event(result))
        at = utcnow()
        sent = self.send(
            checked,
            body,
            sign_headers(self.secret, msg_id, body, at),
            timeout=self.settings.webhook_timeout_seconds,
        )
        state = self._record(job_id, at, sent)
        log.info(
            "webhook attempt",
            extra={
                **fields,
                "status_code": sent.status_code,
                "error": sent.error,
                "duration_seconds": sent.duration_seconds,
                "delivery_state": state,
            },
        )
        return state

    def _begin(self, job_id: str, msg_id: str) -> tuple[str | None, str]:
        """Claim the next attempt: (None, url); (why not, "") to stop; or raise RetryLater."""
        seen: dict[str, str] = {}

        def decide(job: dict[str, Any], now: datetime) -> dict[str, Any] | None:
            webhook = job.get("webhook")
            if not webhook:
                seen["outcome"] = "no_webhook"
                return None
            if webhook["state"] in ("delivered", "failed"):
                seen["outcome"] = webhook["state"]
                return None
            sending_until = webhook.get("sending_until")
            if sending_until and sending_until > now:
                raise RetryLater(job_id, sending_until, "another attempt is in flight")
            due = webhook.get("next_attempt_at")
            if due and due > now:
                raise RetryLater(job_id, due, "the next attempt is not due yet")
            seen["url"] = webhook["url"]
            hold = self.settings.webhook_timeout_seconds + SENDING_MARGIN_SECONDS
            return {
                "webhook.sending_until": now + timedelta(seconds=hold),
                "webhook.event_id": msg_id,
            }

        job = self.store.transact(job_id, decide)
        if job is None:
            log.warning("result.json for a job that does not exist", extra={"job_id": job_id})
            return "missing", ""
        return seen.get("outcome"), seen.get("url", "")

    def _record(self, job_id: str, at: datetime, sent: SendResult, final: str | None = None) -> str:
        """Append the attempt and settle the record; raise RetryLater when it must go on."""
        attempt = {
            "at": at,
            "status_code": sent.status_code,
            "error": sent.error,
            "duration_seconds": sent.duration_seconds,
        }
        rng = self.rng()
        decided: dict[str, Any] = {}

        def decide(job: dict[str, Any], now: datetime) -> dict[str, Any]:
            webhook = job["webhook"]
            attempts = [*webhook.get("attempts", []), attempt]
            state, reason, next_at = self._next_step(attempts, sent, final, now, rng)
            decided.update(state=state, next_at=next_at)
            return {
                "webhook.attempts": attempts,
                "webhook.state": state,
                "webhook.reason": reason,
                "webhook.next_attempt_at": next_at,
                "webhook.sending_until": None,
            }

        self.store.transact(job_id, decide)
        if decided["state"] == "retrying":
            raise RetryLater(job_id, decided["next_at"], "the receiver did not take the event")
        return decided["state"]

    def _next_step(
        self,
        attempts: list[dict[str, Any]],
        sent: SendResult,
        final: str | None,
        now: datetime,
        rng: float,
    ) -> tuple[str, str | None, datetime | None]:
        if final is not None:
            return "failed", final, None
        if sent.delivered:
            return "delivered", None, None
        if not sent.retryable:
            code = sent.status_code
            why = "redirects are not followed" if code and code < 400 else "not retried"
            return "failed", f"the receiver answered {code}; {why}", None
        delay = self.schedule.delay(len(attempts), sent.retry_after_seconds, rng)
        next_at = now + timedelta(seconds=delay)
        first = attempts[0]["at"]
        if (next_at - first).total_seconds() > self.schedule.window_seconds:
            hours = self.schedule.window_seconds / 3600
            reason = f"gave up after {len(attempts)} attempts over {hours:g} h"
            return "failed", f"{reason}; last: {sent.error or sent.status_code}", None
        return "retrying", None, next_at


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
        return self.handle(job_id, int(count) if count.isdigit() else None)

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
