"""`POST /v1/jobs/{id}/webhook/redeliver` over real HTTP (the submit function served by a
real WSGI server on a socket), against the emulators, with a real receiver verifying every
delivery. The notify function's handler runs in-process, fed the trigger objects the API
writes, as its storage trigger would deliver them."""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Iterator

import pytest
import requests
from functions_framework import create_app
from werkzeug.serving import make_server

from ltxv.client import Client
from ltxv.client.client import ApiError
from ltxv.client.webhook_receiver import WebhookReceiver
from ltxv.core import schemas
from ltxv.core.webhook_triggers import redelivery_object
from ltxv.core.webhooks import verify_webhook
from ltxv.notify.notifier import WebhookNotifier

from .conftest import API_KEY, OTHER_KEY, SUBMIT_SOURCE
from .test_notify import SECRET, SECRETS, finish, result_object

pytestmark = pytest.mark.emulators

INTERVAL = 2  # seconds between redeliveries of one job, in these tests
MOST = 3  # redeliveries per job


@pytest.fixture
def api_url(env, monkeypatch) -> Iterator[str]:
    """The submit function on a real socket."""
    monkeypatch.setenv("LTXV_WEBHOOK_REDELIVERY_INTERVAL_SECONDS", str(INTERVAL))
    monkeypatch.setenv("LTXV_WEBHOOK_REDELIVERIES_MAX", str(MOST))
    app = create_app(target="api", source=SUBMIT_SOURCE, signature_type="http")
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    thread.join()


@pytest.fixture
def notifier(service, settings) -> WebhookNotifier:
    quick = dataclasses.replace(settings, webhook_retry_base_seconds=0.2, webhook_timeout_seconds=2)
    return WebhookNotifier(service.store, service.storage, quick, secrets=SECRETS)


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    with WebhookReceiver(SECRET) as running:
        yield running


def submit(api_url: str, webhook_url: str | None, **fields) -> str:
    body = {"prompt": "a lighthouse at dawn", **fields}
    if webhook_url:
        body["webhook_url"] = webhook_url
    response = requests.post(f"{api_url}/v1/jobs", json=body, headers={"X-API-Key": API_KEY})
    assert response.status_code == 202, response.text
    return response.json()["job_id"]


def redeliver(api_url: str, job_id: str, key: str = API_KEY) -> requests.Response:
    return requests.post(
        f"{api_url}/v1/jobs/{job_id}/webhook/redeliver", headers={"X-API-Key": key}, timeout=30
    )


def record(service, job_id: str) -> dict:
    return service.store.get(job_id)["webhook"]


def delivered_once(service, notifier, api_url, receiver) -> str:
    """A succeeded job whose job.succeeded the receiver took (one attempt)."""
    job_id = submit(api_url, receiver.url)
    finish(service, job_id)
    assert notifier.on_object(*result_object(service, job_id)) == "delivered"
    return job_id


def run_trigger(service, notifier, job_id: str, number: int) -> str:
    """What the notify function's storage trigger does with redelivery `number`'s object."""
    name = redelivery_object(job_id, number)
    blob = service.storage.bucket(service.settings.outputs).get_blob(name)
    assert blob is not None, f"{name} was not written"
    return notifier.on_object(blob.bucket.name, blob.name, str(blob.generation))


def error_code(response: requests.Response) -> str:
    schemas.validator("error").validate(response.json())
    return response.json()["error"]["code"]


def test_a_redelivery_is_the_same_event_id_as_one_more_recorded_attempt(
    service, notifier, api_url, receiver
):
    job_id = delivered_once(service, notifier, api_url, receiver)

    response = redeliver(api_url, job_id)
    assert response.status_code == 202, response.text
    answered = response.json()
    schemas.validator("job").validate({**_job_json(service, job_id), "webhook": answered})
    assert answered["state"] == "pending" and len(answered["redeliveries"]) == 1
    assert response.headers["Location"] == f"/v1/jobs/{job_id}"

    assert run_trigger(service, notifier, job_id, 1) == "delivered"
    assert run_trigger(service, notifier, job_id, 1) == "delivered"  # a repeated trigger: no send
    first, again = receiver.wait_for(2, timeout=5)
    assert len(receiver.deliveries) == 2
    assert first.webhook_id == again.webhook_id == f"evt_{job_id}"
    assert first.body == again.body  # the same event, byte for byte; signed afresh
    for delivery in (first, again):
        event = verify_webhook(SECRET, delivery.headers, delivery.body)
        assert event["type"] == "job.succeeded" and event["data"]["job_id"] == job_id
    webhook = record(service, job_id)
    assert webhook["state"] == "delivered" and webhook["event_id"] == f"evt_{job_id}"
    assert [a.get("redelivery") for a in webhook["attempts"]] == [None, 1]
    assert [a["status_code"] for a in webhook["attempts"]] == [200, 200]


def test_a_failed_redelivery_is_one_attempt_not_retried(service, notifier, api_url, receiver):
    job_id = delivered_once(service, notifier, api_url, receiver)
    receiver.respond = lambda n, _d: 503
    assert redeliver(api_url, job_id).status_code == 202
    assert run_trigger(service, notifier, job_id, 1) == "failed"  # no RetryLater: one attempt
    webhook = record(service, job_id)
    assert webhook["state"] == "failed" and "redelivery 1" in webhook["reason"]
    assert [a["status_code"] for a in webhook["attempts"]] == [200, 503]


def test_no_redelivery_before_the_job_and_its_first_delivery_settled(
    service, notifier, api_url, receiver
):
    queued = submit(api_url, receiver.url)
    response = redeliver(api_url, queued)
    assert response.status_code == 409 and error_code(response) == "job_not_settled"

    finish(service, queued)  # settled, its event not sent yet: pending
    response = redeliver(api_url, queued)
    assert response.status_code == 409 and error_code(response) == "webhook_delivery_pending"
    assert "first delivery" in response.json()["error"]["message"]

    no_hook = submit(api_url, None)
    finish(service, no_hook)
    response = redeliver(api_url, no_hook)
    assert response.status_code == 409 and error_code(response) == "no_webhook"

    assert receiver.deliveries == []
    assert record(service, queued)["attempts"] == []


def test_redelivering_too_soon_is_429_with_retry_after_and_the_count_is_capped(
    service, notifier, api_url, receiver
):
    job_id = delivered_once(service, notifier, api_url, receiver)
    for number in range(1, MOST + 1):
        assert redeliver(api_url, job_id).status_code == 202
        assert run_trigger(service, notifier, job_id, number) == "delivered"
        too_soon = redeliver(api_url, job_id)
        if number < MOST:
            assert too_soon.status_code == 429 and error_code(too_soon) == "too_many_redeliveries"
            assert 1 <= int(too_soon.headers["Retry-After"]) <= INTERVAL
            threading.Event().wait(int(too_soon.headers["Retry-After"]) + 0.2)
    assert too_soon.status_code == 429 and error_code(too_soon) == "redelivery_limit_reached"
    assert "Retry-After" not in too_soon.headers
    assert len(receiver.deliveries) == 1 + MOST
    assert len(record(service, job_id)["redeliveries"]) == MOST


def test_another_keys_job_is_404_like_a_missing_one(service, notifier, api_url, receiver):
    job_id = delivered_once(service, notifier, api_url, receiver)
    for key, path_id in [(OTHER_KEY, job_id), (API_KEY, "a" * 26), (API_KEY, "not-an-id")]:
        response = redeliver(api_url, path_id, key)
        assert response.status_code == 404 and error_code(response) == "not_found"
    assert redeliver(api_url, job_id, "").status_code == 401
    assert "redeliveries" not in record(service, job_id)


def test_ten_concurrent_requests_make_one_redelivery_and_one_send(
    service, notifier, api_url, receiver
):
    job_id = delivered_once(service, notifier, api_url, receiver)
    start = threading.Barrier(10)
    answers: list[requests.Response] = []

    def ask() -> None:
        start.wait()
        answers.append(redeliver(api_url, job_id))

    threads = [threading.Thread(target=ask) for _ in range(10)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    statuses = sorted(a.status_code for a in answers)
    assert statuses.count(202) == 1, statuses
    assert set(statuses) <= {202, 409, 429, 503}, statuses
    assert len(record(service, job_id)["redeliveries"]) == 1
    assert run_trigger(service, notifier, job_id, 1) == "delivered"
    bucket = service.storage.bucket(service.settings.outputs)
    assert bucket.get_blob(redelivery_object(job_id, 2)) is None
    receiver.wait_for(2, timeout=5)
    threading.Event().wait(0.5)  # room for a duplicate, were there one
    assert len(receiver.deliveries) == 2


def test_a_redelivery_whose_trigger_was_lost_is_started_by_the_next_request(
    service, notifier, api_url, receiver
):
    job_id = delivered_once(service, notifier, api_url, receiver)
    assert redeliver(api_url, job_id).status_code == 202
    # As if the API had died between its Firestore write and the trigger object.
    bucket = service.storage.bucket(service.settings.outputs)
    bucket.blob(redelivery_object(job_id, 1)).delete()

    again = redeliver(api_url, job_id)
    assert again.status_code == 409 and error_code(again) == "webhook_delivery_pending"
    assert "redelivery 1" in again.json()["error"]["message"]
    assert run_trigger(service, notifier, job_id, 1) == "delivered"
    assert len(record(service, job_id)["redeliveries"]) == 1
    assert len(receiver.wait_for(2, timeout=5)) == 2


def test_the_client_and_the_cli_redeliver(service, notifier, api_url, receiver, capsys):
    from ltxv.cli import main

    job_id = delivered_once(service, notifier, api_url, receiver)
    client = Client(api_url, API_KEY)
    webhook = client.redeliver_webhook(job_id)
    assert webhook["state"] == "pending" and webhook["event_id"] == f"evt_{job_id}"
    with pytest.raises(ApiError) as refused:  # answered at once, not waited out
        client.redeliver_webhook(job_id)
    assert refused.value.status == 409 and refused.value.code == "webhook_delivery_pending"
    assert run_trigger(service, notifier, job_id, 1) == "delivered"

    threading.Event().wait(INTERVAL + 0.2)
    cli = ["webhook", "redeliver", job_id, "--url", api_url, "--api-key", API_KEY]
    waiter = threading.Thread(target=_trigger_when_written, args=(service, notifier, job_id, 2))
    waiter.start()
    assert main([*cli, "--wait", "--timeout", "20"]) == 0
    waiter.join()
    captured = capsys.readouterr()
    assert captured.out.strip() == "delivered"
    assert f"redelivery 2 of evt_{job_id} requested" in captured.err
    queued = submit(api_url, receiver.url)
    cli[2] = queued
    assert main(cli) == 2  # refused, and said why
    assert "job_not_settled" in capsys.readouterr().err


def _trigger_when_written(service, notifier, job_id: str, number: int) -> None:
    bucket = service.storage.bucket(service.settings.outputs)
    for _ in range(100):
        if bucket.get_blob(redelivery_object(job_id, number)) is not None:
            run_trigger(service, notifier, job_id, number)
            return
        threading.Event().wait(0.1)


def _job_json(service, job_id: str) -> dict:
    from ltxv.core.jobs import to_json

    return to_json(service.store.get(job_id))
