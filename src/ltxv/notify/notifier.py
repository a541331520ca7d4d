"""Outcomes to clients: result.json → a signed webhook, each attempt recorded on the job.
Runs as the `result_ready` event function (functions/notify) and leans on its trigger for
retries: raising :class:`RetryLater` makes the function answer non-2xx, Eventarc delivers
the event again after its backoff (10 s to 10 min, for 24 h), and the handler decides
afresh from the job document. So no timer, queue or process of our own has to survive.
(Dead letters, the other entry point: `dead_letters`; batches of prompt files: `batches`.)

Webhook delivery, per job (the record is `jobs/{id}.webhook`):

1. Claim, in one `JobStore.decide` (read, decide, conditional write): nothing to do if the job
   has no webhook or its delivery is settled (`delivered`/`failed`); retry later if an
   attempt is in flight (`sending_until`) or the next one is not due (`next_attempt_at`).
   Else append the attempt, marked `in_flight`, and hold `sending_until` for longer than
   the attempt can possibly take (DNS and the send each have a deadline; a margin on top),
   so two triggers never send at once. The attempt counts from here on: an invocation
   killed mid-send (the function's own timeout) leaves it in flight, and the first claim
   after `sending_until` records it as `interrupted`, counts it toward the retry window and
   goes on. A job whose owner (its API key) has no signing secret fails here, unsent.
2. Check the URL again (DNS may have changed since intake) and POST to the checked
   address, signed with each of the owner's secrets (several during a rotation). Nothing
   here raises: whatever happens is the attempt's outcome.
3. Record, in another `decide`: fill in the attempt and settle the record: `delivered` on
   2xx, `failed` on 410/other 4xx/3xx/an unsafe URL/the retry window passed, else
   `retrying` with `next_attempt_at` from exponential backoff with jitter (or
   `Retry-After`, if later), and ask the trigger to come back. A contended or failing
   Firestore is tried again; if the outcome still cannot be written it is logged as an
   error, and the attempt, left in flight, is taken as interrupted by a later trigger.
"""

from __future__ import annotations

import json
import logging
import random
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, TypedDict, cast

import google.cloud.storage as storage
from google.api_core import exceptions as gexc

from ltxv.core.errors import BACKEND_ERRORS
from ltxv.core.jobs import Changes, DeliveryAttempt, Job, WebhookRecord, utcnow
from ltxv.core.results import RESULT_NAME
from ltxv.core.settings import Settings
from ltxv.core.store import Decision, JobStore
from ltxv.core.urlsafety import (
    RESOLVE_TIMEOUT_SECONDS,
    Resolver,
    Unresolvable,
    UnsafeURL,
    check_webhook_url,
    system_resolver,
)
from ltxv.core.webhook_secrets import Secrets, WebhookSecrets
from ltxv.core.webhooks import build_event, encode_event, event_id, sign_headers
from ltxv.notify.webhook_sender import (
    INTERNAL_ERROR,
    TIMED_OUT,
    SendResult,
    describe_error,
    post_pinned,
)

log = logging.getLogger(__name__)

RESULT_OBJECT = re.compile(rf"^jobs/([a-z0-9]{{1,64}})/{re.escape(RESULT_NAME)}$")
# How long past an attempt's own deadlines (DNS, then the POST) its `sending_until` mark
# still holds off other triggers: room for the claim's commit and the clocks of two
# function instances.
SENDING_MARGIN_SECONDS = 30.0
INTERRUPTED = "interrupted"
SETTLED = ("delivered", "failed")
# Recording an outcome: tries, and the pause before the next (doubled each time).
RECORD_TRIES = 3
RECORD_PAUSE_SECONDS = 0.5
BACKEND_RETRY = timedelta(seconds=10)


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

    def window_passed(self, first_attempt: datetime, when: datetime) -> bool:
        return (when - first_attempt).total_seconds() > self.window_seconds

    def gave_up(self, attempts: list[DeliveryAttempt], last: str) -> str:
        hours = self.window_seconds / 3600
        return f"gave up after {len(attempts)} attempts over {hours:g} h; last: {last}"


Send = Callable[..., SendResult]


@dataclass(frozen=True)
class Claim:
    """One attempt, claimed: where it goes, signed with what, and when it must be over."""

    job_id: str
    event_id: str
    index: int  # its place in webhook.attempts
    url: str
    secrets: tuple[str, ...]
    send_by: float  # the notifier's clock: the POST must have ended by then


class _Outcome(TypedDict):
    """What a sent attempt adds to its DeliveryAttempt (beside `at`)."""

    status_code: int | None
    error: str | None
    duration_seconds: float


class WebhookNotifier:
    def __init__(
        self,
        store: JobStore,
        storage_client: storage.Client,
        settings: Settings,
        *,
        secrets: WebhookSecrets,
        resolver: Resolver = system_resolver,
        send: Send = post_pinned,
        rng: Callable[[], float] = random.random,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.secrets = secrets
        self.store = store
        self.storage = storage_client
        self.settings = settings
        self.schedule = RetrySchedule.from_settings(settings)
        self.resolver = resolver
        self.send = send
        self.rng = rng
        self.clock = clock
        # The most an attempt takes once claimed (a lookup, then the POST), and how long
        # its claim keeps other triggers off: longer by a margin.
        self.budget = RESOLVE_TIMEOUT_SECONDS + settings.webhook_timeout_seconds
        self.hold = timedelta(seconds=self.budget + SENDING_MARGIN_SECONDS)

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
        try:
            job_id = result["job_id"]
            body = encode_event(build_event(result))  # before claiming: it cannot change
        except (KeyError, TypeError, ValueError) as exc:
            log.error(
                "result.json is no settled job's result; no webhook", extra={"error": str(exc)}
            )
            return "unreadable"
        return self.send_event(job_id, event_id(job_id), body)

    def send_event(self, job_id: str, msg_id: str, body: bytes) -> str:
        """Deliver `body` per document `job_id`'s webhook record (a job's, or a batch's)."""
        try:
            secrets = self.secrets.all()  # before claiming: an outage leaves nothing half-done
        except BACKEND_ERRORS as exc:
            raise RetryLater(
                job_id, utcnow() + BACKEND_RETRY, "webhook secrets unreadable"
            ) from exc
        claim = self._begin(job_id, msg_id, secrets)
        if isinstance(claim, str):
            return claim
        sent, final = self._attempt(claim, body)
        state, next_at = self._record(claim, sent, final)
        log.info(
            "webhook attempt",
            extra={
                "job_id": job_id,
                "event_id": msg_id,
                "status_code": sent.status_code,
                "error": sent.error,
                "detail": sent.detail,
                "duration_seconds": sent.duration_seconds,
                "delivery_state": state,
            },
        )
        if state == "retrying" and next_at is not None:
            raise RetryLater(job_id, next_at, "the receiver did not take the event")
        return state

    # --- 1. claim ---------------------------------------------------------------------------

    def _begin(self, job_id: str, msg_id: str, secrets: Secrets) -> Claim | str:
        """Claim the next attempt, or say why there is none (or raise RetryLater)."""
        started = self.clock()

        def decide(job: Job, now: datetime) -> Decision[tuple[Claim | str, bool]]:
            """The claim or why there is none, and whether an attempt was interrupted."""
            webhook = job.get("webhook")
            if not webhook:
                return Decision(("no_webhook", False))
            if webhook["state"] in SETTLED:
                return Decision((webhook["state"], False))
            sending_until = webhook.get("sending_until")
            if sending_until and sending_until > now:
                raise RetryLater(job_id, sending_until, "another attempt is in flight")
            due = webhook.get("next_attempt_at")
            if due and due > now:
                raise RetryLater(job_id, due, "the next attempt is not due yet")
            attempts = list(webhook.get("attempts") or [])
            interrupted = bool(attempts and attempts[-1].get("in_flight"))
            if interrupted:
                # Its invocation ended before recording it (killed at the function's
                # timeout, or Firestore failed it): a failed attempt, and it counts.
                attempts[-1] = {"at": attempts[-1]["at"], "status_code": None, "error": INTERRUPTED}
                if self.schedule.window_passed(attempts[0]["at"], now):
                    reason = self.schedule.gave_up(attempts, INTERRUPTED)
                    failed = {"webhook.attempts": attempts, **_settle("failed", reason)}
                    return Decision(("failed", interrupted), failed)
            owner = job.get("api_key_id")
            keys = secrets.get(owner or "", ())
            if not keys:
                reason = f"no webhook signing secret for API key {owner!r}; nothing was sent"
                failed = {"webhook.attempts": attempts, **_settle("failed", reason)}
                return Decision(("failed", interrupted), failed)
            send_by = started + self.budget
            claim = Claim(job_id, msg_id, len(attempts), webhook["url"], keys, send_by)
            attempt = {"at": now, "status_code": None, "error": None, "in_flight": True}
            claimed = {
                "webhook.attempts": [*attempts, attempt],
                "webhook.sending_until": now + self.hold,
                "webhook.event_id": msg_id,
            }
            return Decision((claim, interrupted), claimed)

        try:
            decided = self.store.decide(job_id, decide)
        except BACKEND_ERRORS as exc:  # TransactionContended among them: nothing was claimed
            raise RetryLater(job_id, utcnow() + BACKEND_RETRY, "the job store is busy") from exc
        if decided is None:
            log.warning("result.json for a job that does not exist", extra={"job_id": job_id})
            return "missing"
        _, (begun, interrupted) = decided
        if interrupted:
            log.warning("a webhook attempt was interrupted unrecorded", extra={"job_id": job_id})
        if begun == "failed":
            log.warning("webhook delivery failed", extra={"job_id": job_id})
        return begun

    # --- 2. send ----------------------------------------------------------------------------

    def _attempt(self, claim: Claim, body: bytes) -> tuple[SendResult, str | None]:
        """Check the URL and POST; the outcome, and why it is final if it is a refusal.
        Never raises: whatever happens must be recorded."""
        started = self.clock()
        try:
            checked = check_webhook_url(
                claim.url,
                allow_http_loopback=self.settings.allow_http_loopback_webhooks,
                resolver=self.resolver,
            )
            timeout = min(self.settings.webhook_timeout_seconds, claim.send_by - self.clock())
            if timeout <= 0:
                return SendResult(None, TIMED_OUT, self._since(started)), None
            headers = sign_headers(claim.secrets, claim.event_id, body)
            return self.send(checked, body, headers, timeout=timeout), None
        except Unresolvable as exc:  # DNS may answer next time
            return SendResult(None, str(exc), self._since(started)), None
        except UnsafeURL as exc:
            return SendResult(None, str(exc), self._since(started)), str(exc)
        except Exception as exc:
            log.exception("webhook attempt failed unexpectedly", extra={"job_id": claim.job_id})
            detail = describe_error(exc)
            return SendResult(None, INTERNAL_ERROR, self._since(started), detail=detail), None

    def _since(self, started: float) -> float:
        return round(max(0.0, self.clock() - started), 3)

    # --- 3. record --------------------------------------------------------------------------

    def _record(
        self, claim: Claim, sent: SendResult, final: str | None
    ) -> tuple[str, datetime | None]:
        """Fill in the claimed attempt and settle the record: (state, next attempt at)."""
        rng = self.rng()
        outcome: _Outcome = {
            "status_code": sent.status_code,
            "error": sent.error,
            "duration_seconds": sent.duration_seconds,
        }

        def decide(job: Job, now: datetime) -> Decision[tuple[str, datetime | None]]:
            """The delivery's state and next attempt after this outcome is recorded."""
            webhook = cast(WebhookRecord, job["webhook"])  # claimed: the job has one
            attempts = list(webhook.get("attempts") or [])
            if claim.index < len(attempts):
                attempts[claim.index] = {"at": attempts[claim.index]["at"], **outcome}
            else:  # the record was rewritten meanwhile; what happened is kept all the same
                attempts.append({"at": now, **outcome})
            if claim.index < len(attempts) - 1 or webhook["state"] in SETTLED:
                # A later trigger took over (this one outlived its claim): the record is
                # its to settle; this attempt's outcome is only filled in.
                standing = (webhook["state"], webhook.get("next_attempt_at"))
                return Decision(standing, {"webhook.attempts": attempts})
            state, reason, next_at = self._next_step(attempts, sent, final, now, rng)
            changes = {"webhook.attempts": attempts, **_settle(state, reason, next_at)}
            return Decision((state, next_at), changes)

        for attempt in range(RECORD_TRIES):
            try:
                decided = self.store.decide(claim.job_id, decide)
                break
            except BACKEND_ERRORS as exc:
                if attempt + 1 == RECORD_TRIES:
                    log.error(
                        "webhook attempt not recorded; a later trigger takes it as interrupted",
                        extra={"job_id": claim.job_id, "error": str(exc), **outcome},
                    )
                    raise RetryLater(
                        claim.job_id, utcnow() + self.hold, "the attempt could not be recorded"
                    ) from exc
                time.sleep(RECORD_PAUSE_SECONDS * 2**attempt)
        if decided is None:
            log.warning("job gone before its webhook attempt was recorded", extra=outcome)
            return "missing", None
        _, standing = decided
        return standing

    def _next_step(
        self,
        attempts: list[DeliveryAttempt],
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
        if self.schedule.window_passed(attempts[0]["at"], next_at):
            return (
                "failed",
                self.schedule.gave_up(attempts, sent.error or str(sent.status_code)),
                None,
            )
        return "retrying", None, next_at


def _settle(state: str, reason: str | None, next_at: datetime | None = None) -> Changes:
    return {
        "webhook.state": state,
        "webhook.reason": reason,
        "webhook.next_attempt_at": next_at,
        "webhook.sending_until": None,
    }
