"""Cloud Function entry points for outcomes.

- `result_ready` (CloudEvent, storage object finalized in the outputs bucket): a job's
  result.json → its signed webhook, the attempt recorded on the job. Eventarc filters
  storage triggers by bucket only, so every video and poster arrives here too and is
  ignored by name before anything else happens. A job from a prompt file is then counted
  in its batch, and the batch's last job writes `results/<name>.jsonl` and sends
  batch.completed (`ltxv.notify.batches`).
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
from flask import Response, jsonify

from ltxv.core.compose import settings_for
from ltxv.notify import compose as compose_notify
from ltxv.notify.notifier import RetryLater

log = logging.getLogger("ltxv.notify.notifier")

# Each entry point is deployed as a function of its own: its process builds its parts
# (`compose_notify`, one root per entry point) at its first event, not at import.
_notifier = cache(lambda: compose_notify.result_ready(settings_for("notify")))
_dead_letters = cache(lambda: compose_notify.dead_letter(settings_for("notify")))


@functions_framework.errorhandler(RetryLater)
def _retry_later(exc: RetryLater) -> tuple[Response, int]:
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
