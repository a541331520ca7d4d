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

The same trigger brings two more kinds of object (`ltxv.core.webhook_triggers`): a
redelivery the API recorded (`POST /v1/jobs/{id}/webhook/redeliver`: the settled event
again, same webhook-id, exactly one more attempt, marked with its `redelivery` number),
and a job.running event a worker announced (`running_events`). The settled event waits
for a job.running attempt still on the wire, so a receiver never gets them out of order.
"""

from __future__ import annotations

import json
import logging
import random
import re
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any, cast

import google.cloud.storage as storage
from google.api_core import exceptions as gexc

from ltxv.core.errors import BACKEND_ERRORS
from ltxv.core.jobs import Changes, DeliveryAttempt, Job, WebhookRecord, utcnow
from ltxv.core.results import RESULT_NAME, output_prefix
from ltxv.core.settings import Settings
from ltxv.core.store import Decision, JobStore
from ltxv.core.urlsafety import Resolver, system_resolver
from ltxv.core.webhook_secrets import Secrets, WebhookSecrets
from ltxv.core.webhook_triggers import REDELIVERY_OBJECT, RUNNING_OBJECT, wanted_events
from ltxv.core.webhooks import build_event, encode_event, event_id
from ltxv.notify.attempt import (
    FINAL,
    INTERRUPTED,
    SKIPPED,
    AttemptSender,
    Claim,
    Send,
    filled,
    interrupted,
    log_attempt,
    outcome_of,
)
from ltxv.notify.running_events import RunningNotifier
from ltxv.notify.schedule import RetryLater, RetrySchedule, backend_retry
from ltxv.notify.webhook_sender import SendResult, post_pinned

__all__ = ["RetryLater", "RetrySchedule", "WebhookNotifier"]

log = logging.getLogger(__name__)

RESULT_OBJECT = re.compile(rf"^jobs/([a-z0-9]{{1,64}})/{re.escape(RESULT_NAME)}$")
# Recording an outcome: tries, and the pause before the next (doubled each time).
RECORD_TRIES = 3
RECORD_PAUSE_SECONDS = 0.5
# How often a settled event waiting for a job.running send in flight looks again.
RUNNING_POLL_SECONDS = 0.2


class RunningInFlight(Exception):
    """A job.running attempt of this job is on the wire until `until` at the latest."""

    def __init__(self, until: datetime) -> None:
        super().__init__(f"a job.running attempt is in flight until {until.isoformat()}")
        self.until = until


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
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.secrets = secrets
        self.store = store
        self.storage = storage_client
        self.settings = settings
        self.schedule = RetrySchedule.from_settings(settings)
        self.sender = AttemptSender(settings, resolver, send, clock)
        self.rng = rng
        self.clock = clock
        self.sleep = sleep
        self.running = RunningNotifier(
            store, storage_client, settings, secrets=secrets, sender=self.sender, rng=rng
        )

    def on_object(self, bucket: str, name: str, generation: str | None) -> str:
        """A finalized object in some bucket: a result.json, a redelivery's or a job.running
        trigger (`ltxv.core.webhook_triggers`) of the outputs bucket; all else is ignored."""
        if bucket != self.settings.outputs:
            return "ignored"
        if RUNNING_OBJECT.match(name):
            return self.running.on_object(bucket, name, generation)
        redelivery = REDELIVERY_OBJECT.match(name)
        if redelivery:  # the settled event again: its body is the job's result.json
            name, generation = output_prefix(redelivery.group(1)) + RESULT_NAME, None
        elif not RESULT_OBJECT.match(name):
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
            raise backend_retry(job_id, "webhook secrets unreadable") from exc
        claim = self._begin_after_running(job_id, msg_id, secrets)
        if isinstance(claim, str):
            return claim
        sent, final = self.sender.attempt(claim, body)
        state, next_at = self._record(claim, sent, final)
        log_attempt(job_id, msg_id, sent, state, redelivery=claim.redelivery)
        if state == "retrying" and next_at is not None:
            raise RetryLater(job_id, next_at, "the receiver did not take the event")
        return state

    # --- 1. claim ---------------------------------------------------------------------------

    def _begin_after_running(self, job_id: str, msg_id: str, secrets: Secrets) -> Claim | str:
        """Claim, once a job.running attempt still on the wire has ended: the settled event
        never goes out before it. That attempt ends within its budget, so this waits here
        rather than for the trigger's backoff (10 s at least); past the budget (its sender
        died), the trigger comes back once the attempt's mark runs out."""
        give_up_at = self.clock() + self.sender.budget
        while True:
            try:
                return self._begin(job_id, msg_id, secrets)
            except RunningInFlight as busy:
                if self.clock() >= give_up_at:
                    raise RetryLater(job_id, busy.until, "a job.running is in flight") from None
                self.sleep(RUNNING_POLL_SECONDS)

    def _begin(self, job_id: str, msg_id: str, secrets: Secrets) -> Claim | str:
        """Claim the next attempt, or say why there is none (or raise RetryLater)."""
        started = self.clock()

        def decide(job: Job, now: datetime) -> Decision[tuple[Claim | str, bool]]:
            """The claim or why there is none, and whether an attempt was interrupted."""
            webhook = job.get("webhook")
            if not webhook:
                return Decision(("no_webhook", False))
            if webhook["state"] in FINAL:
                return Decision((webhook["state"], False))
            if "settled" not in wanted_events(job):
                reason = "the request's webhook_events leave out settled: not sent"
                return Decision((SKIPPED, False), _settle(SKIPPED, reason))
            running = webhook.get("running")
            running_until = running.get("sending_until") if running else None
            if running_until and running_until > now:
                raise RunningInFlight(running_until)
            sending_until = webhook.get("sending_until")
            if sending_until and sending_until > now:
                raise RetryLater(job_id, sending_until, "another attempt is in flight")
            due = webhook.get("next_attempt_at")
            if due and due > now:
                raise RetryLater(job_id, due, "the next attempt is not due yet")
            # The record is only unsettled again after it settled once if the API asked
            # for a redelivery (`redelivery.py`): that one gets exactly one attempt.
            redelivery = len(webhook.get("redeliveries") or []) or None
            attempts = list(webhook.get("attempts") or [])
            was_interrupted = bool(attempts and attempts[-1].get("in_flight"))
            if was_interrupted:
                # Its invocation ended before recording it (killed at the function's
                # timeout, or Firestore failed it): a failed attempt, and it counts.
                ours = redelivery and attempts[-1].get("redelivery") == redelivery
                attempts[-1] = interrupted(attempts[-1])
                if ours:  # never sent twice for one redelivery request
                    reason = "the redelivery's attempt was interrupted; redeliver again"
                    failed = {"webhook.attempts": attempts, **_settle("failed", reason)}
                    return Decision(("failed", was_interrupted), failed)
                if not redelivery and self.schedule.window_passed(attempts[0]["at"], now):
                    reason = self.schedule.gave_up(attempts, INTERRUPTED)
                    failed = {"webhook.attempts": attempts, **_settle("failed", reason)}
                    return Decision(("failed", was_interrupted), failed)
            owner = job.get("api_key_id")
            keys = secrets.get(owner or "", ())
            if not keys:
                reason = f"no webhook signing secret for API key {owner!r}; nothing was sent"
                failed = {"webhook.attempts": attempts, **_settle("failed", reason)}
                return Decision(("failed", was_interrupted), failed)
            send_by = started + self.sender.budget
            url = webhook["url"]
            claim = Claim(job_id, msg_id, len(attempts), url, keys, send_by, redelivery)
            attempt: DeliveryAttempt = {"at": now, "status_code": None, "error": None}
            attempt["in_flight"] = True
            if redelivery:
                attempt["redelivery"] = redelivery
            claimed = {
                "webhook.attempts": [*attempts, attempt],
                "webhook.sending_until": now + self.sender.hold,
                "webhook.event_id": msg_id,
            }
            return Decision((claim, was_interrupted), claimed)

        try:
            decided = self.store.decide(job_id, decide)
        except BACKEND_ERRORS as exc:  # TransactionContended among them: nothing was claimed
            raise backend_retry(job_id, "the job store is busy") from exc
        if decided is None:
            log.warning("result.json for a job that does not exist", extra={"job_id": job_id})
            return "missing"
        _, (begun, was_interrupted) = decided
        if was_interrupted:
            log.warning("a webhook attempt was interrupted unrecorded", extra={"job_id": job_id})
        if begun == "failed":
            log.warning("webhook delivery failed", extra={"job_id": job_id})
        return begun

    # --- 3. record (2, the send, is `AttemptSender.attempt`) --------------------------------

    def _record(
        self, claim: Claim, sent: SendResult, final: str | None
    ) -> tuple[str, datetime | None]:
        """Fill in the claimed attempt and settle the record: (state, next attempt at)."""
        rng = self.rng()
        outcome = outcome_of(sent)

        def decide(job: Job, now: datetime) -> Decision[tuple[str, datetime | None]]:
            """The delivery's state and next attempt after this outcome is recorded."""
            webhook = cast(WebhookRecord, job["webhook"])  # claimed: the job has one
            attempts = list(webhook.get("attempts") or [])
            if claim.index < len(attempts):
                attempts[claim.index] = filled(attempts[claim.index], outcome)
            else:  # the record was rewritten meanwhile; what happened is kept all the same
                attempts.append({"at": now, **outcome})
            if claim.index < len(attempts) - 1 or webhook["state"] in FINAL:
                # A later trigger took over (this one outlived its claim): the record is
                # its to settle; this attempt's outcome is only filled in.
                standing = (webhook["state"], webhook.get("next_attempt_at"))
                return Decision(standing, {"webhook.attempts": attempts})
            state, reason, next_at = self._next_step(claim, attempts, sent, final, now, rng)
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
                        claim.job_id,
                        utcnow() + self.sender.hold,
                        "the attempt could not be recorded",
                    ) from exc
                time.sleep(RECORD_PAUSE_SECONDS * 2**attempt)
        if decided is None:
            log.warning("job gone before its webhook attempt was recorded", extra=outcome)
            return "missing", None
        _, standing = decided
        return standing

    def _next_step(
        self,
        claim: Claim,
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
        if claim.redelivery:  # one attempt per request: the caller decides on another
            what = sent.error or f"the receiver answered {sent.status_code}"
            return "failed", f"redelivery {claim.redelivery}: {what}", None
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
