"""Webhook events and their Standard Webhooks signatures, checked with the library itself."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta

import pytest
from standardwebhooks.webhooks import Webhook

from ltxv.core import schemas
from ltxv.core.jobs import new_job, to_json
from ltxv.core.results import build_result
from ltxv.core.webhooks import (
    WebhookVerificationError,
    build_event,
    encode_event,
    event_id,
    new_secret,
    sign_headers,
    verify_webhook,
)
from ltxv.intake.validation import request_hash
from ltxv.notify.notifier import RetrySchedule
from ltxv.notify.webhook_sender import SendResult, _retry_after

from .test_jobs import REQUEST

SECRET = new_secret()
NOW = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)
OUTPUT_NAMES = {"video": "video.mp4", "poster": "poster.jpg", "result": "result.json"}


def settled_result(state: str = "succeeded") -> dict:
    job = new_job(
        job_id="a" * 26,
        request=REQUEST,
        request_hash=request_hash(REQUEST),
        api_key_id="default",
        now=NOW,
    )
    job["state"] = state
    job["state_times"][state] = NOW + timedelta(seconds=30)
    if state == "succeeded":
        prefix = f"gs://ltxv-outputs/jobs/{job['job_id']}/"
        job["outputs"] = {k: prefix + v for k, v in OUTPUT_NAMES.items()}
    if state == "failed":
        job["error"] = {"code": "attempts_exhausted", "message": "gave up", "retryable": False}
    return build_result(job)


@pytest.mark.parametrize(
    ("state", "kind"),
    [("succeeded", "job.succeeded"), ("failed", "job.failed"), ("canceled", "job.canceled")],
)
def test_the_event_wraps_result_json_unchanged_and_matches_its_schema(state, kind):
    result = settled_result(state)
    event = build_event(result)
    schemas.validator("webhook-event").validate(to_json(event))
    assert event["type"] == kind
    assert event["data"] == result
    assert event["timestamp"] == result["finished_at"]
    assert json.loads(encode_event(event)) == event


def test_the_event_id_is_stable_per_job():
    assert event_id("abc") == event_id("abc") == "evt_abc"
    assert event_id("abc") != event_id("abd")


def test_signed_headers_verify_with_the_standardwebhooks_library():
    body = encode_event(build_event(settled_result()))
    headers = sign_headers(SECRET, "evt_x", body)
    assert headers["webhook-id"] == "evt_x"
    assert headers["webhook-signature"].startswith("v1,")
    # The library, as a receiver would use it, on the exact bytes.
    assert Webhook(SECRET).verify(body, headers) == json.loads(body)
    assert verify_webhook(SECRET, headers, body)["type"] == "job.succeeded"


def test_header_names_are_case_insensitive_for_verification():
    body = b'{"type":"job.succeeded"}'
    headers = {k.title(): v for k, v in sign_headers(SECRET, "evt_x", body).items()}
    assert verify_webhook(SECRET, headers, body) == {"type": "job.succeeded"}


@pytest.mark.parametrize(
    "tamper",
    [
        lambda h, b: (h, b.replace(b"succeeded", b"failed")),
        lambda h, b: ({**h, "webhook-id": "evt_other"}, b),
        lambda h, b: ({**h, "webhook-timestamp": str(int(h["webhook-timestamp"]) + 1)}, b),
        lambda h, b: ({**h, "webhook-signature": "v1," + base64.b64encode(b"x" * 32).decode()}, b),
        lambda h, b: ({k: v for k, v in h.items() if k != "webhook-signature"}, b),
        lambda h, b: ({**h, "webhook-signature": "garbage"}, b),
        lambda h, b: ({**h, "webhook-signature": "v1,###"}, b),
    ],
    ids=["body", "id", "timestamp", "signature", "missing", "no-version", "not-base64"],
)
def test_anything_changed_fails_verification(tamper):
    body = b'{"type":"job.succeeded"}'
    headers, body = tamper(sign_headers(SECRET, "evt_x", body), body)
    with pytest.raises(WebhookVerificationError):
        verify_webhook(SECRET, headers, body)


def test_another_secret_fails_and_a_bad_secret_is_a_clear_error():
    body = b"{}"
    headers = sign_headers(SECRET, "evt_x", body)
    other = new_secret()
    with pytest.raises(WebhookVerificationError, match="No matching signature"):
        verify_webhook(other, headers, body)
    with pytest.raises(WebhookVerificationError, match="not a valid whsec_ secret"):
        verify_webhook("whsec_", headers, body)


def test_a_stale_delivery_fails_unless_only_the_signature_is_checked():
    body = b'{"type":"job.failed"}'
    headers = sign_headers(SECRET, "evt_x", body, at=datetime.now(UTC) - timedelta(hours=2))
    with pytest.raises(WebhookVerificationError, match="too old"):
        verify_webhook(SECRET, headers, body)
    assert verify_webhook(SECRET, headers, body, check_timestamp=False)["type"] == "job.failed"
    with pytest.raises(WebhookVerificationError):
        verify_webhook(SECRET, headers, body + b" ", check_timestamp=False)


def test_backoff_doubles_with_jitter_and_is_capped():
    schedule = RetrySchedule(base_seconds=30, max_seconds=3600, window_seconds=82800)
    assert schedule.delay(1, None, 0.0) == 15
    assert schedule.delay(1, None, 0.999999) == pytest.approx(30, abs=1e-3)
    assert schedule.delay(3, None, 1.0) == 120
    assert schedule.delay(20, None, 1.0) == 3600
    assert schedule.delay(20, None, 0.0) == 1800


def test_retry_after_wins_when_it_is_later_than_the_backoff():
    schedule = RetrySchedule(base_seconds=30, max_seconds=3600, window_seconds=82800)
    assert schedule.delay(1, 600, 0.5) == 600
    assert schedule.delay(5, 1, 1.0) == 480


def test_retry_after_is_read_as_seconds_or_an_http_date():
    now = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)
    assert _retry_after("120", now) == 120
    assert _retry_after(" 7 ", now) == 7
    assert _retry_after("Mon, 23 Nov 2026 10:05:00 GMT", now) == 300
    assert _retry_after("Mon, 23 Nov 2026 09:00:00 GMT", now) == 0
    assert _retry_after("soon", now) is None
    assert _retry_after("-5", now) is None
    assert _retry_after(None, now) is None


@pytest.mark.parametrize(
    "raw", ["\u00b2", "\u0663", "\uff17", "1\u00b2", "1e3", "3.5", "+7", "", "   ", "Mon, 99 Foo"]
)
def test_retry_after_takes_ascii_digits_only_and_never_raises(raw):
    # "²", Arabic-Indic and fullwidth digits pass str.isdigit() but not float().
    assert _retry_after(raw) is None


@pytest.mark.parametrize(
    ("status", "retryable"),
    [
        (429, True),
        (500, True),
        (503, True),
        (410, False),
        (400, False),
        (404, False),
        (301, False),
        (None, True),
    ],
)
def test_which_outcomes_are_retried(status, retryable):
    result = SendResult(status, None if status else "timed out", 0.1)
    assert result.retryable is retryable
    assert not result.delivered


def test_2xx_is_delivered():
    assert SendResult(204, None, 0.1).delivered
