"""`POST /v1/jobs/{id}/webhook/redeliver`: the settled event sent once more, on request.

The API holds no sender (intake never imports notify): it records the redelivery and
asks the notify function for it, which signs and sends as for the first delivery, with
the same webhook-id (receivers dedupe on it) as one more attempt on the job's record.

1. One conditional write (`JobStore.decide`): allowed only when the job settled and its
   settled event's delivery settled too (`delivered` or `failed`), within the limits
   (one per `LTXV_WEBHOOK_REDELIVERY_INTERVAL_SECONDS`, `LTXV_WEBHOOK_REDELIVERIES_MAX`
   per job); it appends `{requested_at}` to `webhook.redeliveries` and sets the record
   `pending` again. Concurrent requests race on that write: one wins, the others find a
   delivery pending (409) or the interval running (429).
2. Create `jobs/{id}/redelivery-{n}.webhook.json` (create-only), which the notify
   function's storage trigger turns into exactly one attempt for redelivery n
   (`ltxv.notify.notifier`), never a second one for the same n, even if it is
   interrupted.

A crash between 1 and 2 leaves a redelivery pending with no trigger; the next request for
the job (the client's retry of one it got no 202 for) finds it pending, writes the
missing trigger (a no-op if it exists) and answers 409 `webhook_delivery_pending`.
"""

from __future__ import annotations

import logging
import math
from datetime import datetime, timedelta

import google.cloud.storage as storage

from ltxv.core.errors import BACKEND_ERRORS
from ltxv.core.jobs import Job, State
from ltxv.core.settings import Settings
from ltxv.core.store import Decision, JobStore
from ltxv.core.webhook_triggers import redelivery_object, wanted_events, write_trigger_once
from ltxv.intake.responses import HttpError, retry_after, unavailable
from ltxv.intake.routes import JOB_ID

log = logging.getLogger(__name__)

SETTLED_DELIVERY = ("delivered", "failed")


class WebhookRedeliveries:
    def __init__(self, store: JobStore, storage_client: storage.Client, settings: Settings) -> None:
        self.store = store
        self.storage = storage_client
        self.outputs = settings.outputs
        self.interval = timedelta(seconds=settings.webhook_redelivery_interval_seconds)
        self.most = settings.webhook_redeliveries_max

    def request(self, job_id: str, key_id: str) -> Job:
        """Record and start a redelivery of the job's settled event; the job as written.
        Raises HttpError for every refusal."""

        def decide(job: Job, now: datetime) -> Decision[int | None]:
            """The new redelivery's number, or None when one is pending already."""
            if job["api_key_id"] != key_id:
                raise HttpError(404, "not_found", f"job {job_id} not found")
            webhook = job.get("webhook")
            if not webhook:
                raise _conflict(job_id, "no_webhook", "the job has no webhook_url")
            if not State(job["state"]).terminal:
                raise _conflict(
                    job_id, "job_not_settled", f"the job is {job['state']}: no event yet"
                )
            if "settled" not in wanted_events(job):
                raise _conflict(
                    job_id,
                    "webhook_not_requested",
                    "the request's webhook_events leave out settled: there is no event to send",
                )
            redeliveries = list(webhook.get("redeliveries") or [])
            if webhook["state"] not in SETTLED_DELIVERY:
                if redeliveries:
                    return Decision(None)  # pending: its trigger is made sure of below
                raise _pending(job_id, webhook["state"])
            if len(redeliveries) >= self.most:
                raise HttpError(
                    429,
                    "redelivery_limit_reached",
                    f"job {job_id} had its {self.most} redeliveries; no more are sent",
                    job_id=job_id,
                )
            if redeliveries:
                wait = (redeliveries[-1]["requested_at"] + self.interval - now).total_seconds()
                if wait > 0:
                    seconds = max(1, math.ceil(wait))
                    raise retry_after(
                        429,
                        "too_many_redeliveries",
                        f"at most one redelivery per {self.interval.total_seconds():g} s; "
                        f"ask again in {seconds} s",
                        seconds,
                        job_id=job_id,
                    )
            changes = {
                "webhook.redeliveries": [*redeliveries, {"requested_at": now}],
                "webhook.state": "pending",
                "webhook.reason": None,
                "webhook.next_attempt_at": None,
                "webhook.sending_until": None,
            }
            return Decision(len(redeliveries) + 1, changes)

        if not JOB_ID.match(job_id):
            raise HttpError(404, "not_found", f"job {job_id} not found")
        decided = self.store.decide(job_id, decide)
        if decided is None:
            raise HttpError(404, "not_found", f"job {job_id} not found")
        job, number = decided
        webhook = job["webhook"]
        assert webhook is not None  # decide refused a job without one
        pending = len(webhook.get("redeliveries") or [])
        self._start(job_id, pending)
        if number is None:
            raise _pending(job_id, webhook["state"], pending)
        log.info("webhook redelivery requested", extra={"job_id": job_id, "redelivery": number})
        return job

    def _start(self, job_id: str, number: int) -> None:
        """The trigger object for redelivery `number`, unless it is there already."""
        content = {"job_id": job_id, "redelivery": number}
        try:
            write_trigger_once(
                self.storage, self.outputs, redelivery_object(job_id, number), content
            )
        except BACKEND_ERRORS as exc:
            raise unavailable(
                "the redelivery is recorded but could not be started; repeat this request "
                "to start it (it is not counted again)"
            ) from exc


def _conflict(job_id: str, code: str, message: str) -> HttpError:
    return HttpError(409, code, f"job {job_id}: {message}", job_id=job_id)


def _pending(job_id: str, state: str, redelivery: int = 0) -> HttpError:
    what = f"redelivery {redelivery}" if redelivery else "the first delivery"
    return _conflict(
        job_id,
        "webhook_delivery_pending",
        f"{what} of this event is under way (webhook state {state}); redeliver once it is "
        "delivered or failed",
    )
