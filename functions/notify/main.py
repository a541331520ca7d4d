"""Cloud Function entry points for outcomes.

- `result_ready` (CloudEvent, storage object finalized in the outputs bucket): a job's
  result.json → its signed webhook, the attempt recorded on the job. Eventarc filters
  storage triggers by bucket only, so every video and poster arrives here too and is
  ignored by name before anything else happens.
- `dead_letter` (CloudEvent, Pub/Sub message on the dead-letter topic): the job fails with
  `attempts_exhausted` and gets its result.json, which comes back here as `result_ready`.

Both triggers retry: a handler that must run again later raises `RetryLater`, answered
with 503 and one log line, and Eventarc redelivers the event with backoff.
"""

from __future__ import annotations

import logging
from functools import cache

import functions_framework
from cloudevents.http import CloudEvent
from flask import jsonify

from ltxv.dead_letters import DeadLetters
from ltxv.notify import RetryLater, WebhookNotifier
from ltxv.service import Service

log = logging.getLogger("ltxv.notify")


@cache
def _service() -> Service:
    return Service.for_function("notify")


@cache
def _notifier() -> WebhookNotifier:
    service = _service()
    return WebhookNotifier(
        service.store, service.storage, service.settings, secrets=service.webhook_secrets
    )


@cache
def _dead_letters() -> DeadLetters:
    service = _service()
    return DeadLetters(service.store, service.storage, service.settings.outputs)


@functions_framework.errorhandler(RetryLater)
def _retry_later(exc: RetryLater):
    log.info("retry requested", extra={"job_id": exc.job_id, "reason": exc.reason, "at": exc.at})
    return jsonify({"retry_at": exc.at.isoformat(), "reason": exc.reason}), 503


@functions_framework.cloud_event
def result_ready(event: CloudEvent) -> None:
    data = event.get_data() or {}
    _notifier().on_object(
        bucket=data.get("bucket", ""),
        name=data.get("name", ""),
        generation=str(data["generation"]) if data.get("generation") else None,
    )


@functions_framework.cloud_event
def dead_letter(event: CloudEvent) -> None:
    _dead_letters().on_message((event.get_data() or {}).get("message") or {})
