"""Webhook delivery and dead letters against the emulators and a real local receiver.

The notifier runs in-process here so each retry can be stepped through; the same code runs
behind functions-framework and the bridge in tests/e2e. Name resolution is the one seam
replaced (there is no DNS here): a fake resolver stands in for the system's.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import secrets
import threading
import time
from collections.abc import Iterator
from datetime import timedelta

import pytest
from functions_framework import create_app
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from ltxv.client.webhook_receiver import WebhookReceiver
from ltxv.core import schemas
from ltxv.core.jobs import new_job, new_job_id, to_json, utcnow
from ltxv.core.results import build_result, output_prefix, write_result_once
from ltxv.core.store import JobStore, TransactionContended
from ltxv.core.webhook_secrets import WebhookSecrets
from ltxv.core.webhooks import new_secret
from ltxv.intake.validation import request_hash
from ltxv.notify.dead_letters import DeadLetters
from ltxv.notify.notifier import RetryLater, WebhookNotifier
from ltxv.notify.webhook_sender import SendResult, post_pinned

from .conftest import ROOT, WEBHOOK_SECRETS

pytestmark = pytest.mark.emulators

SECRET = WEBHOOK_SECRETS["default"][0]  # the `default` key's, as the environment says
OTHER_SECRET = WEBHOOK_SECRETS["other"][0]
SECRETS = WebhookSecrets.of(WEBHOOK_SECRETS)  # every key's, as the environment says
NOTIFY_SOURCE = str(ROOT / "functions" / "notify" / "main.py")


@pytest.fixture
def notify_settings(settings):
    return dataclasses.replace(
        settings,
        webhook_retry_base_seconds=0.2,
        webhook_retry_max_seconds=1.0,
        webhook_retry_window_seconds=120.0,
        webhook_timeout_seconds=2.0,
    )


@pytest.fixture
def notifier(service, notify_settings) -> WebhookNotifier:
    return WebhookNotifier(service.store, service.storage, notify_settings, secrets=SECRETS)


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    with WebhookReceiver(SECRET) as running:
        yield running


def submit(service, webhook_url: str | None, key_id: str = "default") -> str:
    body = {"prompt": "a lighthouse at dawn"}
    if webhook_url:
        body["webhook_url"] = webhook_url
    return service.intake.submit_http(body, api_key_id=key_id).job["job_id"]


def finish(service, job_id: str, state: str = "succeeded") -> dict:
    """Settle the job as a worker would and write its result.json; the result."""

    def decide(job, now):
        changes = {"state": state, f"state_times.{state}": now}
        if state == "succeeded":
            prefix = f"gs://{service.settings.outputs}/{output_prefix(job_id)}"
            changes["outputs"] = {
                "video": prefix + "video.mp4",
                "poster": prefix + "poster.jpg",
                "result": prefix + "result.json",
            }
        return changes

    job = service.store.transact(job_id, decide)
    result = build_result(job)
    assert write_result_once(service.storage, service.settings.outputs, result)
    return result


def result_object(service, job_id: str) -> tuple[str, str, str]:
    blob = service.storage.bucket(service.settings.outputs).get_blob(
        output_prefix(job_id) + "result.json"
    )
    return blob.bucket.name, blob.name, str(blob.generation)


def deliver_until_settled(notifier, service, job_id, limit: int = 10) -> tuple[str, int]:
    """Call the handler as the trigger would redeliver: again after each RetryLater."""
    for calls in range(1, limit + 1):
        try:
            return notifier.on_object(*result_object(service, job_id)), calls
        except RetryLater as later:
            time.sleep(max(0.0, (later.at - utcnow()).total_seconds()) + 0.05)
    raise AssertionError(f"not settled after {limit} calls")


def webhook_record(service, job_id: str) -> dict:
    return service.store.get(job_id)["webhook"]


# --- delivery -------------------------------------------------------------------------------


def test_a_succeeded_job_is_delivered_once_signed_and_recorded(service, notifier, receiver):
    job_id = submit(service, receiver.url)
    result = finish(service, job_id)

    assert notifier.on_object(*result_object(service, job_id)) == "delivered"
    assert notifier.on_object(*result_object(service, job_id)) == "delivered"  # repeated trigger

    (delivery,) = receiver.deliveries
    assert Webhook(SECRET).verify(delivery.body, delivery.headers) == delivery.event
    schemas.validator("webhook-event").validate(delivery.event)
    assert delivery.event["type"] == "job.succeeded"
    stored = service.storage.bucket(service.settings.outputs).blob(
        output_prefix(job_id) + "result.json"
    )
    assert delivery.event["data"] == json.loads(stored.download_as_bytes()) == result
    assert delivery.webhook_id == f"evt_{job_id}"

    record = webhook_record(service, job_id)
    assert record["state"] == "delivered" and record["event_id"] == f"evt_{job_id}"
    assert [a["status_code"] for a in record["attempts"]] == [200]
    assert record["attempts"][0]["duration_seconds"] >= 0
    assert record["next_attempt_at"] is None and record["sending_until"] is None
    schemas.validator("job").validate(to_json(service.store.get(job_id)))


def test_failing_twice_then_200_is_delivered_on_the_third_attempt(service, notifier, receiver):
    receiver.respond = lambda n, _d: 500 if n <= 2 else 200
    job_id = submit(service, receiver.url)
    finish(service, job_id)

    with pytest.raises(RetryLater) as first:
        notifier.on_object(*result_object(service, job_id))
    record = webhook_record(service, job_id)
    assert record["state"] == "retrying" and record["next_attempt_at"] == first.value.at
    # Redelivered before it is due: nothing is sent.
    if utcnow() < first.value.at:
        with pytest.raises(RetryLater, match="not due"):
            notifier.on_object(*result_object(service, job_id))

    state, _ = deliver_until_settled(notifier, service, job_id)
    assert state == "delivered"
    assert [d.status for d in receiver.deliveries] == [500, 500, 200]
    assert {d.webhook_id for d in receiver.deliveries} == {f"evt_{job_id}"}
    assert len({d.body for d in receiver.deliveries}) == 1  # the same event each time
    record = webhook_record(service, job_id)
    assert [a["status_code"] for a in record["attempts"]] == [500, 500, 200]
    first_at, second_at = record["attempts"][0]["at"], record["attempts"][1]["at"]
    assert (second_at - first_at).total_seconds() >= 0.1  # backoff: 0.1-0.2 s with jitter


def test_410_is_not_retried(service, notifier, receiver):
    receiver.respond = lambda n, _d: 410
    job_id = submit(service, receiver.url)
    finish(service, job_id, "canceled")

    assert notifier.on_object(*result_object(service, job_id)) == "failed"
    assert notifier.on_object(*result_object(service, job_id)) == "failed"
    assert len(receiver.deliveries) == 1
    assert receiver.deliveries[0].event["type"] == "job.canceled"
    record = webhook_record(service, job_id)
    assert record["state"] == "failed" and "410" in record["reason"]
    assert [a["status_code"] for a in record["attempts"]] == [410]


def test_retry_after_sets_the_next_attempt(service, notifier, receiver):
    receiver.respond = lambda n, _d: (429, {"Retry-After": "60"})
    job_id = submit(service, receiver.url)
    finish(service, job_id)
    before = utcnow()
    with pytest.raises(RetryLater) as later:
        notifier.on_object(*result_object(service, job_id))
    assert later.value.at >= before + timedelta(seconds=59)
    assert webhook_record(service, job_id)["next_attempt_at"] == later.value.at


def test_a_receiver_down_for_a_while_gets_the_event_when_it_is_back(service, notifier):
    down = WebhookReceiver(SECRET).start()
    port, url = down.port, down.url
    down.stop()  # nothing listens on the port now
    job_id = submit(service, url)
    finish(service, job_id)

    for _ in range(3):
        with pytest.raises(RetryLater) as later:
            notifier.on_object(*result_object(service, job_id))
        time.sleep(max(0.0, (later.value.at - utcnow()).total_seconds()) + 0.05)
    with WebhookReceiver(SECRET, port=port) as back:
        state, _ = deliver_until_settled(notifier, service, job_id)
        assert state == "delivered" and len(back.deliveries) == 1
    attempts = webhook_record(service, job_id)["attempts"]
    assert [a["status_code"] for a in attempts] == [None, None, None, 200]
    # A coarse category: nothing about which address or port refused, and how.
    assert [a["error"] for a in attempts] == ["could not connect"] * 3 + [None]


def test_delivery_gives_up_after_the_retry_window(service, settings, receiver):
    receiver.respond = lambda n, _d: 503
    short = dataclasses.replace(
        settings,
        webhook_retry_base_seconds=0.2,
        webhook_retry_window_seconds=0.5,
    )
    notifier = WebhookNotifier(service.store, service.storage, short, secrets=SECRETS)
    job_id = submit(service, receiver.url)
    finish(service, job_id, "failed")
    state, _ = deliver_until_settled(notifier, service, job_id)
    record = webhook_record(service, job_id)
    assert state == "failed" and "gave up after" in record["reason"]
    assert len(record["attempts"]) == len(receiver.deliveries) >= 2
    assert receiver.deliveries[0].event["type"] == "job.failed"


def test_two_triggers_at_once_send_one_event(service, notifier, receiver):
    receiver.respond = lambda n, _d: time.sleep(1.0) or 200
    job_id = submit(service, receiver.url)
    finish(service, job_id)
    outcomes: list[str] = []

    def trigger():
        try:
            outcomes.append(notifier.on_object(*result_object(service, job_id)))
        except RetryLater as later:
            outcomes.append(later.reason)

    threads = [threading.Thread(target=trigger) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes) == ["another attempt is in flight", "delivered"]
    assert len(receiver.deliveries) == 1


def test_objects_other_than_result_json_are_ignored(service, notifier, receiver):
    job_id = submit(service, receiver.url)
    outputs = service.settings.outputs
    assert notifier.on_object(outputs, f"jobs/{job_id}/video.mp4", "1") == "ignored"
    assert notifier.on_object(outputs, f"jobs/{job_id}/poster.jpg", "1") == "ignored"
    assert notifier.on_object(service.settings.prompts, f"jobs/{job_id}/result.json", "1") == (
        "ignored"
    )
    assert receiver.deliveries == []


def test_a_job_without_a_webhook_sends_nothing(service, notifier):
    job_id = submit(service, None)
    finish(service, job_id)
    assert notifier.on_object(*result_object(service, job_id)) == "no_webhook"


def test_a_retry_after_that_is_no_number_on_a_200_is_delivered_once(service, notifier, receiver):
    receiver.respond = lambda n, _d: (200, {"Retry-After": "\u00b2"})  # "²"
    job_id = submit(service, receiver.url)
    finish(service, job_id)
    assert notifier.on_object(*result_object(service, job_id)) == "delivered"
    assert notifier.on_object(*result_object(service, job_id)) == "delivered"
    assert len(receiver.deliveries) == 1
    assert [a["status_code"] for a in webhook_record(service, job_id)["attempts"]] == [200]


def test_a_name_that_does_not_resolve_at_delivery_is_retried(service, notify_settings):
    def down(host, port):
        raise OSError("the resolver is down")

    cloud = dataclasses.replace(notify_settings, allow_http_loopback_webhooks=False)
    notifier = WebhookNotifier(
        service.store, service.storage, cloud, secrets=SECRETS, resolver=down
    )
    job_id = _job_with_webhook(service, "https://hooks.example.com/x")
    finish(service, job_id)
    with pytest.raises(RetryLater):
        notifier.on_object(*result_object(service, job_id))
    record = webhook_record(service, job_id)
    assert record["state"] == "retrying"
    assert record["attempts"][0]["error"] == "webhook_url host hooks.example.com does not resolve"


# --- signing: each API key its own secrets ----------------------------------------------------


def test_each_key_signs_with_its_own_secret(service, notifier, receiver):
    receiver.secret = OTHER_SECRET
    job_id = submit(service, receiver.url, key_id="other")
    finish(service, job_id)
    assert notifier.on_object(*result_object(service, job_id)) == "delivered"
    (delivery,) = receiver.deliveries
    assert Webhook(OTHER_SECRET).verify(delivery.body, delivery.headers) == delivery.event
    # `default`'s secret cannot verify (so nor forge) what is sent to `other`'s receiver.
    with pytest.raises(WebhookVerificationError):
        Webhook(SECRET).verify(delivery.body, delivery.headers)


def test_during_a_rotation_every_delivery_verifies_with_either_secret(
    service, notify_settings, receiver
):
    new = new_secret()
    secrets = WebhookSecrets.of({"default": [new, SECRET]})
    notifier = WebhookNotifier(service.store, service.storage, notify_settings, secrets=secrets)
    job_id = submit(service, receiver.url)
    finish(service, job_id)
    assert notifier.on_object(*result_object(service, job_id)) == "delivered"
    (delivery,) = receiver.deliveries
    assert len(delivery.headers["webhook-signature"].split(" ")) == 2
    for secret in (new, SECRET):  # the receiver may switch to the new one at its own pace
        assert Webhook(secret).verify(delivery.body, delivery.headers) == delivery.event


def test_a_job_whose_key_has_no_secret_fails_unsent(service, notify_settings, receiver):
    secrets = WebhookSecrets.of({"other": [OTHER_SECRET]})
    notifier = WebhookNotifier(service.store, service.storage, notify_settings, secrets=secrets)
    job_id = submit(service, receiver.url)
    finish(service, job_id)
    assert notifier.on_object(*result_object(service, job_id)) == "failed"
    assert notifier.on_object(*result_object(service, job_id)) == "failed"
    assert receiver.deliveries == []
    record = webhook_record(service, job_id)
    assert record["state"] == "failed" and record["attempts"] == []
    assert record["reason"] == "no webhook signing secret for API key 'default'; nothing was sent"


# --- an attempt counts from its claim ---------------------------------------------------------


class Killed(BaseException):
    """The invocation dies mid-send, as at the function's timeout: nothing after runs."""


def test_an_invocation_killed_mid_send_leaves_its_attempt_counted(
    service, notifier, notify_settings, receiver
):
    job_id = submit(service, receiver.url)
    finish(service, job_id)

    def killed(*args, **kwargs):
        post_pinned(*args, **kwargs)  # the receiver gets the event; its answer is lost
        raise Killed

    dying = WebhookNotifier(
        service.store, service.storage, notify_settings, secrets=SECRETS, send=killed
    )
    with pytest.raises(Killed):
        dying.on_object(*result_object(service, job_id))

    record = webhook_record(service, job_id)
    (attempt,) = record["attempts"]
    assert attempt["in_flight"] is True and record["state"] == "pending"
    schemas.validator("job").validate(to_json(service.store.get(job_id)))
    # The claim outlasts anything the attempt could have taken (DNS, then the POST).
    held = (record["sending_until"] - attempt["at"]).total_seconds()
    assert held >= 5 + notify_settings.webhook_timeout_seconds + 30
    with pytest.raises(RetryLater, match="in flight"):
        notifier.on_object(*result_object(service, job_id))
    assert len(receiver.deliveries) == 1

    # Time passes: the claim runs out. The next trigger takes the attempt as interrupted.
    service.store.transact(
        job_id, lambda job, now: {"webhook.sending_until": now - timedelta(seconds=1)}
    )
    assert notifier.on_object(*result_object(service, job_id)) == "delivered"
    record = webhook_record(service, job_id)
    assert [(a["status_code"], a["error"]) for a in record["attempts"]] == [
        (None, "interrupted"),
        (200, None),
    ]
    assert not any(a.get("in_flight") for a in record["attempts"])
    assert len(receiver.deliveries) == 2 and record["sending_until"] is None


def test_an_interrupted_attempt_past_the_retry_window_ends_the_delivery(
    service, notify_settings, receiver
):
    job_id = submit(service, receiver.url)
    finish(service, job_id)
    quick = dataclasses.replace(notify_settings, webhook_retry_window_seconds=0.0)

    def killed(*args, **kwargs):
        raise Killed

    with pytest.raises(Killed):
        WebhookNotifier(
            service.store, service.storage, quick, secrets=SECRETS, send=killed
        ).on_object(*result_object(service, job_id))
    service.store.transact(
        job_id, lambda job, now: {"webhook.sending_until": now - timedelta(seconds=1)}
    )
    notifier = WebhookNotifier(service.store, service.storage, quick, secrets=SECRETS)
    assert notifier.on_object(*result_object(service, job_id)) == "failed"
    record = webhook_record(service, job_id)
    assert (
        record["reason"].startswith("gave up after 1 attempts")
        and "interrupted" in record["reason"]
    )
    assert receiver.deliveries == []


def test_an_attempt_recorded_after_a_later_one_took_over_keeps_both_outcomes(
    service, notifier, notify_settings, receiver
):
    # Only possible when an attempt outlives its claim (say, Firestore slow to record it):
    # the late outcome is filled in, and the record stays the later attempt's to settle.
    job_id = submit(service, receiver.url)
    finish(service, job_id)

    def outlived(*args, **kwargs):
        service.store.transact(
            job_id, lambda job, now: {"webhook.sending_until": now - timedelta(seconds=1)}
        )
        assert notifier.on_object(*result_object(service, job_id)) == "delivered"
        return SendResult(503, None, 0.1)

    slow = WebhookNotifier(
        service.store, service.storage, notify_settings, secrets=SECRETS, send=outlived
    )
    assert slow.on_object(*result_object(service, job_id)) == "delivered"
    record = webhook_record(service, job_id)
    assert [a["status_code"] for a in record["attempts"]] == [503, 200]
    assert record["state"] == "delivered" and record["next_attempt_at"] is None


class ContendedStore(JobStore):
    """Firestore giving up on contended transactions, the first `times` times."""

    def __init__(self, store: JobStore, times: int) -> None:
        super().__init__(store.client, store.collection.id, store.timeout)
        self.times = times

    def decide(self, job_id, decide):
        if self.times > 0:
            self.times -= 1
            raise TransactionContended("Failed to commit transaction in 5 attempts")
        return super().decide(job_id, decide)


def test_a_contended_claim_is_retried_by_the_trigger_with_nothing_claimed(
    service, notify_settings, receiver
):
    job_id = submit(service, receiver.url)
    finish(service, job_id)
    store = ContendedStore(service.store, times=1)
    notifier = WebhookNotifier(store, service.storage, notify_settings, secrets=SECRETS)
    with pytest.raises(RetryLater, match="busy"):
        notifier.on_object(*result_object(service, job_id))
    assert webhook_record(service, job_id)["attempts"] == [] and receiver.deliveries == []
    assert notifier.on_object(*result_object(service, job_id)) == "delivered"


def contended_after_sending(service, notify_settings, receiver, times: int):
    """A settled job with a webhook, and a notifier whose store gives up `times` writes
    once the event has been sent (the record's, not the claim's)."""
    job_id = submit(service, receiver.url)
    finish(service, job_id)
    store = ContendedStore(service.store, times=0)
    notifier = WebhookNotifier(store, service.storage, notify_settings, secrets=SECRETS)

    def send_then_contend(*args, **kwargs):
        sent = post_pinned(*args, **kwargs)
        store.times = times
        return sent

    notifier.sender.send = send_then_contend
    return job_id, notifier


def test_a_contended_record_is_tried_again_and_the_outcome_kept(service, notify_settings, receiver):
    # The record's first two writes give up.
    job_id, notifier = contended_after_sending(service, notify_settings, receiver, times=2)
    assert notifier.on_object(*result_object(service, job_id)) == "delivered"
    assert [a["status_code"] for a in webhook_record(service, job_id)["attempts"]] == [200]


def test_an_outcome_that_cannot_be_recorded_is_logged_and_retried(
    service, notify_settings, receiver, caplog
):
    job_id, notifier = contended_after_sending(service, notify_settings, receiver, times=99)
    with pytest.raises(RetryLater, match="could not be recorded"):
        notifier.on_object(*result_object(service, job_id))
    (error,) = [r for r in caplog.records if r.levelname == "ERROR"]
    assert error.status_code == 200 and error.job_id == job_id  # not lost silently
    # Left in flight: after its claim, a trigger takes it as interrupted and sends again.
    assert webhook_record(service, job_id)["attempts"][0]["in_flight"] is True


# --- SSRF at delivery time --------------------------------------------------------------------


def _job_with_webhook(service, url: str) -> str:
    """A job recorded with `url`, as if it had passed the check at submit time."""
    request = {**service.intake.validate({"prompt": "x"}, api_key_id="default"), "webhook_url": url}
    job = new_job(
        job_id=new_job_id(),
        request=request,
        request_hash=request_hash(request),
        api_key_id="default",
    )
    service.store.create(job)
    return job["job_id"]


@pytest.mark.parametrize(
    ("url", "addresses", "why"),
    [
        ("https://hooks.example.com/x", ["10.1.2.3"], "private address"),
        ("https://hooks.example.com/x", ["93.184.216.34", "192.168.0.7"], "private address"),
        ("https://hooks.example.com/x", ["127.0.0.1"], "loopback"),
        ("https://hooks.example.com/x", ["169.254.169.254"], "metadata server"),
        ("https://hooks.example.com/x", ["100.64.0.9"], "CGNAT"),
        ("https://hooks.example.com/x", ["::ffff:10.0.0.1"], "IPv4-mapped"),
        ("https://hooks.example.com/x", ["fd00::1"], "unique local"),
        ("https://hooks.example.com/x", ["224.0.0.1"], "multicast"),
        ("https://hooks.example.com/x", ["0.0.0.0"], "unspecified"),  # noqa: S104
        ("https://metadata.google.internal/x", ["93.184.216.34"], "metadata server"),
        ("https://0x7f.1/x", [], "not a canonical IP address"),
        ("http://hooks.example.com/x", ["93.184.216.34"], "must use https"),
        ("https://hooks.example.com:8080/x", ["93.184.216.34"], "port 8080 is not allowed"),
        ("https://hooks.example.com:22/x", ["93.184.216.34"], "port 22 is not allowed"),
    ],
)
def test_unsafe_targets_are_refused_at_delivery(service, notify_settings, url, addresses, why):
    # Resolved once to a public address at submit time, now to something internal: the
    # check runs again before every attempt (DNS rebinding), here with loopback not allowed.
    cloud = dataclasses.replace(notify_settings, allow_http_loopback_webhooks=False)
    sent = []
    notifier = WebhookNotifier(
        service.store,
        service.storage,
        cloud,
        secrets=SECRETS,
        resolver=lambda host, port: addresses,
        send=lambda *args, **kwargs: sent.append(args),
    )
    job_id = _job_with_webhook(service, url)
    finish(service, job_id)
    assert notifier.on_object(*result_object(service, job_id)) == "failed"
    assert sent == []
    record = webhook_record(service, job_id)
    assert record["state"] == "failed" and why in record["reason"]
    assert record["attempts"][0]["status_code"] is None and why in record["attempts"][0]["error"]


# --- dead letters ---------------------------------------------------------------------------


def read_result(service, job_id):
    blob = service.storage.bucket(service.settings.outputs).blob(
        output_prefix(job_id) + "result.json"
    )
    return json.loads(blob.download_as_bytes())


def test_a_dead_lettered_queued_job_fails_with_a_result(service):
    dead = DeadLetters(service.store, service.storage, service.settings.outputs)
    job_id = submit(service, None)
    service.store.transact(
        job_id,
        lambda job, now: {
            "error": {"code": "render_error", "message": "CUDA OOM", "retryable": True}
        },
    )

    assert dead.handle(job_id, delivery_attempts=5) == "failed"
    job = service.store.get(job_id)
    assert job["state"] == "failed" and job["lease"] is None
    assert job["error"]["code"] == "attempts_exhausted" and not job["error"]["retryable"]
    assert "5 deliveries" in job["error"]["message"] and "CUDA OOM" in job["error"]["message"]
    result = read_result(service, job_id)
    schemas.validator("result").validate(result)
    assert result["state"] == "failed" and result["error"]["code"] == "attempts_exhausted"

    # Dead-lettered twice (best effort): nothing changes.
    assert dead.handle(job_id, delivery_attempts=5) == "already_failed"
    assert read_result(service, job_id) == result


def test_a_dead_letter_waits_for_a_live_lease_and_fails_an_expired_one(service):
    dead = DeadLetters(service.store, service.storage, service.settings.outputs)
    job_id = submit(service, None)

    def running(expires_in: float):
        def decide(job, now):
            lease = {"owner": "w1", "expires_at": now + timedelta(seconds=expires_in)}
            return {"state": "running", "state_times.running": now, "lease": lease}

        return decide

    service.store.transact(job_id, running(60))
    with pytest.raises(RetryLater, match="live lease"):
        dead.handle(job_id)
    assert service.store.get(job_id)["state"] == "running"
    service.store.transact(job_id, running(-1))
    assert dead.handle(job_id) == "failed"
    assert read_result(service, job_id)["state"] == "failed"


def test_a_dead_letter_for_a_settled_job_only_repairs_its_result(service):
    dead = DeadLetters(service.store, service.storage, service.settings.outputs)
    job_id = submit(service, None)
    service.store.transact(
        job_id, lambda job, now: {"state": "succeeded", "state_times.succeeded": now}
    )
    assert dead.handle(job_id) == "already_succeeded"
    assert read_result(service, job_id)["state"] == "succeeded"
    assert dead.handle("nosuchjob") == "missing"


# --- the entry points, through functions-framework ------------------------------------------


@pytest.fixture
def notify_env(monkeypatch, env):
    monkeypatch.setenv("LTXV_WEBHOOK_RETRY_BASE_SECONDS", "30")


def _cloud_event(client, data: dict, ce_type: str, source: str):
    headers = {
        "ce-specversion": "1.0",
        "ce-id": secrets.token_hex(8),
        "ce-source": source,
        "ce-type": ce_type,
        "Content-Type": "application/json",
    }
    return client.post("/", data=json.dumps(data), headers=headers)


def test_result_ready_answers_503_while_a_retry_is_pending(service, notify_env, receiver):
    receiver.respond = lambda n, _d: 500
    job_id = submit(service, receiver.url)
    finish(service, job_id)
    bucket, name, generation = result_object(service, job_id)
    client = create_app(
        target="result_ready", source=NOTIFY_SOURCE, signature_type="cloudevent"
    ).test_client()
    data = {"bucket": bucket, "name": name, "generation": generation}
    source = f"//storage.googleapis.com/projects/_/buckets/{bucket}"
    kind = "google.cloud.storage.object.v1.finalized"

    first = _cloud_event(client, data, kind, source)
    assert first.status_code == 503 and "retry_at" in first.get_json()
    again = _cloud_event(client, data, kind, source)  # not due for ~15-30 s: not sent
    assert (
        again.status_code == 503 and again.get_json()["reason"] == "the next attempt is not due yet"
    )
    assert len(receiver.deliveries) == 1
    video = _cloud_event(client, {**data, "name": f"jobs/{job_id}/video.mp4"}, kind, source)
    assert video.status_code == 200


def test_dead_letter_entry_point_reads_the_pubsub_message(service, notify_env):
    job_id = submit(service, None)
    client = create_app(
        target="dead_letter", source=NOTIFY_SOURCE, signature_type="cloudevent"
    ).test_client()
    kind = "google.cloud.pubsub.topic.v1.messagePublished"
    source = "//pubsub.googleapis.com/projects/p/topics/ltxv-jobs-dead-letter"
    message = {
        "data": base64.b64encode(json.dumps({"job_id": job_id}).encode()).decode(),
        "attributes": {"job_id": job_id, "CloudPubSubDeadLetterSourceDeliveryCount": "7"},
        "messageId": "1",
    }
    assert _cloud_event(client, {"message": message}, kind, source).status_code == 200
    job = service.store.get(job_id)
    assert job["state"] == "failed" and "7 deliveries" in job["error"]["message"]

    garbage = {"message": {"data": base64.b64encode(b"not json").decode(), "messageId": "2"}}
    assert _cloud_event(client, garbage, kind, source).status_code == 200  # dropped, logged

    # A count that is no ASCII number ("²" passes str.isdigit(), not int()) is no count: the
    # job still fails, instead of the event answering 500 and being redelivered for a day.
    other = submit(service, None)
    odd = {**message, "messageId": "3"}
    odd["data"] = base64.b64encode(json.dumps({"job_id": other}).encode()).decode()
    odd["attributes"] = {"job_id": other, "CloudPubSubDeadLetterSourceDeliveryCount": "\u00b2"}
    assert _cloud_event(client, {"message": odd}, kind, source).status_code == 200
    assert service.store.get(other)["state"] == "failed"


# --- cancellation -----------------------------------------------------------------------------


def test_a_job_canceled_in_the_queue_gets_its_result_json(service, client, auth):
    job_id = submit(service, None)
    response = client.post(f"/v1/jobs/{job_id}/cancel", headers=auth)
    assert response.status_code == 200 and response.get_json()["state"] == "canceled"
    result = read_result(service, job_id)
    assert result["state"] == "canceled" and result["outputs"] is None
    # Canceling again is idempotent and leaves the result alone.
    assert client.post(f"/v1/jobs/{job_id}/cancel", headers=auth).status_code == 200
    assert read_result(service, job_id) == result
