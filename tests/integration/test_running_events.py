"""job.running against the emulators and a real receiver: the worker's claim announces the
job (`gpu_worker.running_events`, a trigger object), and the notify handler, fed that
object as its storage trigger would, signs and sends it, never after the settled event."""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Iterator

import pytest

from gpu_worker.lifecycle import ClaimOutcome, JobLifecycle
from gpu_worker.running_events import RunningAnnouncer
from ltxv.client.webhook_receiver import WebhookReceiver
from ltxv.core import schemas
from ltxv.core.results import build_result, write_result_once
from ltxv.core.webhook_triggers import running_object
from ltxv.core.webhooks import verify_webhook
from ltxv.notify.notifier import WebhookNotifier

from .test_notify import SECRET, SECRETS, result_object

pytestmark = pytest.mark.emulators


@pytest.fixture
def notifier(service, settings) -> WebhookNotifier:
    quick = dataclasses.replace(settings, webhook_retry_base_seconds=0.2, webhook_timeout_seconds=3)
    return WebhookNotifier(service.store, service.storage, quick, secrets=SECRETS)


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    with WebhookReceiver(SECRET) as running:
        yield running


@pytest.fixture
def lifecycle(service) -> JobLifecycle:
    announce = RunningAnnouncer(service.storage, service.settings.outputs)
    return JobLifecycle(service.store, "worker-1", 60, model="tiny-random", on_claimed=announce)


def submit(service, url: str, events: list[str] | None) -> str:
    body = {"prompt": "a lighthouse at dawn", "webhook_url": url}
    if events is not None:
        body["webhook_events"] = events
    return service.intake.submit_http(body, api_key_id="default").job["job_id"]


def claimed(lifecycle: JobLifecycle, job_id: str) -> None:
    assert lifecycle.claim(job_id).outcome is ClaimOutcome.CLAIMED


def succeed(service, lifecycle: JobLifecycle, job_id: str) -> None:
    job = lifecycle.succeed(job_id, {"video": f"gs://b/jobs/{job_id}/video.mp4"}, {}, 2)
    assert write_result_once(service.storage, service.settings.outputs, build_result(job))


def running_trigger(service, job_id: str, attempt: int = 1) -> tuple[str, str, str] | None:
    blob = service.storage.bucket(service.settings.outputs).get_blob(
        running_object(job_id, attempt)
    )
    return None if blob is None else (blob.bucket.name, blob.name, str(blob.generation))


def webhook(service, job_id: str) -> dict:
    return service.store.get(job_id)["webhook"]


def test_job_running_arrives_signed_before_job_succeeded_when_asked_for(
    service, lifecycle, notifier, receiver
):
    job_id = submit(service, receiver.url, ["running", "settled"])
    claimed(lifecycle, job_id)
    assert notifier.on_object(*running_trigger(service, job_id)) == "delivered"
    assert notifier.on_object(*running_trigger(service, job_id)) == "delivered"  # no resend
    succeed(service, lifecycle, job_id)
    assert notifier.on_object(*result_object(service, job_id)) == "delivered"

    running, settled = receiver.wait_for(2, timeout=5)
    assert len(receiver.deliveries) == 2
    events = [verify_webhook(SECRET, d.headers, d.body) for d in (running, settled)]
    for event in events:
        schemas.validator("webhook-event").validate(event)
    assert [e["type"] for e in events] == ["job.running", "job.succeeded"]
    assert running.webhook_id == f"evt_{job_id}_running_1" != settled.webhook_id
    data = events[0]["data"]
    assert data["job_id"] == job_id and data["attempt"] == 1 and data["state"] == "running"
    record = webhook(service, job_id)
    assert record["state"] == "delivered" and len(record["attempts"]) == 1
    assert record["running"]["state"] == "delivered"
    assert [a["status_code"] for a in record["running"]["attempts"]] == [200]
    schemas.validator("job").validate(_as_json(service, job_id))


def test_no_job_running_unless_asked_for(service, lifecycle, notifier, receiver):
    job_id = submit(service, receiver.url, None)  # the default: settled only
    claimed(lifecycle, job_id)
    assert running_trigger(service, job_id) is None  # the worker announced nothing
    succeed(service, lifecycle, job_id)
    assert notifier.on_object(*result_object(service, job_id)) == "delivered"
    (only,) = receiver.wait_for(1, timeout=5)
    assert only.event["type"] == "job.succeeded"
    assert webhook(service, job_id).get("running") is None


def test_running_only_sends_no_settled_event_and_nothing_to_redeliver(
    service, lifecycle, notifier, receiver
):
    job_id = submit(service, receiver.url, ["running"])
    claimed(lifecycle, job_id)
    assert notifier.on_object(*running_trigger(service, job_id)) == "delivered"
    succeed(service, lifecycle, job_id)
    assert notifier.on_object(*result_object(service, job_id)) == "skipped"
    time.sleep(0.3)
    assert [d.event["type"] for d in receiver.deliveries] == ["job.running"]
    record = webhook(service, job_id)
    assert record["state"] == "skipped" and record["attempts"] == []


def test_a_late_job_running_is_never_sent_after_the_job_settled(
    service, lifecycle, notifier, receiver
):
    job_id = submit(service, receiver.url, ["running", "settled"])
    claimed(lifecycle, job_id)
    succeed(service, lifecycle, job_id)  # before notify saw the running trigger
    assert notifier.on_object(*result_object(service, job_id)) == "delivered"
    assert notifier.on_object(*running_trigger(service, job_id)) == "skipped"
    time.sleep(0.3)
    assert [d.event["type"] for d in receiver.deliveries] == ["job.succeeded"]
    assert webhook(service, job_id)["running"]["state"] == "skipped"


def test_a_requeued_job_announces_each_attempt_under_its_own_id(
    service, lifecycle, notifier, receiver
):
    job_id = submit(service, receiver.url, ["running", "settled"])
    claimed(lifecycle, job_id)
    lifecycle.requeue(job_id, "preempted", "the VM was preempted")
    assert notifier.on_object(*running_trigger(service, job_id, 1)) == "skipped"  # stale now
    claimed(lifecycle, job_id)
    assert notifier.on_object(*running_trigger(service, job_id, 2)) == "delivered"
    (second,) = receiver.wait_for(1, timeout=5)
    assert second.webhook_id == f"evt_{job_id}_running_2"
    assert webhook(service, job_id)["running"]["attempt"] == 2


def test_the_settled_event_waits_for_a_job_running_on_the_wire(
    service, lifecycle, notifier, receiver
):
    job_id = submit(service, receiver.url, ["running", "settled"])
    claimed(lifecycle, job_id)
    seen: list[tuple[str, float, float]] = []

    def slow_running(_n, delivery):
        entered = time.monotonic()
        if delivery.event["type"] == "job.running":
            time.sleep(1.5)
        seen.append((delivery.event["type"], entered, time.monotonic()))
        return 200

    receiver.respond = slow_running
    sending = threading.Thread(
        target=notifier.on_object, args=running_trigger(service, job_id), daemon=True
    )
    sending.start()
    deadline = time.monotonic() + 5
    while not (webhook(service, job_id).get("running") or {}).get("sending_until"):
        assert time.monotonic() < deadline, "the job.running attempt was never claimed"
        time.sleep(0.02)
    succeed(service, lifecycle, job_id)  # settles while job.running is on the wire
    assert notifier.on_object(*result_object(service, job_id)) == "delivered"
    sending.join(10)

    (first, _running_in, running_out), (second, settled_in, _) = seen
    assert (first, second) == ("job.running", "job.succeeded")
    assert settled_in >= running_out  # not merely recorded later: sent later


def _as_json(service, job_id: str) -> dict:
    from ltxv.core.jobs import to_json

    return to_json(service.store.get(job_id))
