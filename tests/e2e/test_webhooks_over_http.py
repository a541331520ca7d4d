"""Outcomes reach clients over real HTTP on the local stack: the API and notify functions
under functions-framework, the GPU worker on tiny-random, the Eventarc bridge, and a webhook
receiver in this process verifying every delivery with the standardwebhooks library."""

from __future__ import annotations

import dataclasses
import json
import socket
import time
import uuid
from collections.abc import Iterator

import pytest
import requests
from google.cloud import pubsub_v1, storage
from standardwebhooks.webhooks import Webhook

from ltxv.client.webhook_receiver import WebhookReceiver
from ltxv.core import schemas
from ltxv.intake import compose as compose_submit
from ltxv.local.stack import LocalStack

from ..bodies import SLOW, SMALL
from .conftest import key_session, running_stack

pytestmark = [pytest.mark.emulators, pytest.mark.timeout(240)]

COMPONENTS = ["api", "result_ready", "dead_letter", "worker", "bridge"]


@pytest.fixture(scope="module")
def stack(emulators) -> Iterator[LocalStack]:
    # Retries a second or two apart, so a test sees several within its time.
    settings = dataclasses.replace(
        emulators.settings, webhook_retry_base_seconds=0.5, webhook_retry_max_seconds=2.0
    )
    with running_stack(emulators, COMPONENTS, settings) as running:
        yield running


@pytest.fixture
def api(stack, clean_firestore) -> Iterator[requests.Session]:
    with key_session(stack) as session:
        yield session


@pytest.fixture
def receiver(stack) -> Iterator[WebhookReceiver]:
    with WebhookReceiver(stack.webhook_secret) as running:
        yield running


def submit(stack, api, body) -> str:
    response = api.post(f"{stack.api_url}/v1/jobs", json=body)
    assert response.status_code == 202, response.text
    return response.json()["job_id"]


def job(stack, api, job_id) -> dict:
    return api.get(f"{stack.api_url}/v1/jobs/{job_id}").json()


def wait_webhook(stack, api, job_id, states, timeout=120.0, attempts=0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        record = job(stack, api, job_id).get("webhook") or {}
        if record.get("state") in states and len(record.get("attempts", [])) >= attempts:
            return record
        time.sleep(0.2)
    raise AssertionError(f"webhook of {job_id} not {states} in {timeout}s: {record}")


def result_json(stack, job_id) -> dict:
    bucket = storage.Client(project=stack.project).bucket(stack.settings.outputs)
    return json.loads(bucket.blob(f"jobs/{job_id}/result.json").download_as_bytes())


def test_a_rendered_job_sends_one_verifiable_job_succeeded(stack, api, receiver):
    job_id = submit(stack, api, {**SMALL, "webhook_url": receiver.url})
    record = wait_webhook(stack, api, job_id, {"delivered"})
    time.sleep(2)  # room for a duplicate, were there one

    (delivery,) = receiver.deliveries
    event = Webhook(stack.webhook_secret).verify(delivery.body, delivery.headers)
    schemas.validator("webhook-event").validate(event)
    assert event["type"] == "job.succeeded"
    assert event["data"] == result_json(stack, job_id)
    assert event["data"]["state"] == "succeeded" and event["data"]["video"]["num_frames"] == 9
    assert delivery.webhook_id == record["event_id"] == f"evt_{job_id}"
    assert [a["status_code"] for a in record["attempts"]] == [200]


def test_job_running_reaches_the_receiver_before_job_succeeded_when_asked_for(stack, api, receiver):
    # The worker announces its claim (a trigger object), notify signs and sends; a render
    # of some seconds leaves job.running time to arrive before the job settles.
    body = {**SLOW, "webhook_url": receiver.url, "webhook_events": ["running", "settled"]}
    job_id = submit(stack, api, body)
    record = wait_webhook(stack, api, job_id, {"delivered"}, timeout=180)
    time.sleep(2)  # room for a duplicate, were there one

    running, settled = receiver.deliveries
    events = [Webhook(stack.webhook_secret).verify(d.body, d.headers) for d in (running, settled)]
    for event in events:
        schemas.validator("webhook-event").validate(event)
    assert [e["type"] for e in events] == ["job.running", "job.succeeded"]
    assert running.webhook_id == f"evt_{job_id}_running_1"
    assert settled.webhook_id == record["event_id"] == f"evt_{job_id}"
    assert events[0]["data"]["job_id"] == job_id and events[0]["data"]["attempt"] == 1
    assert record["running"]["state"] == "delivered"


def test_a_receiver_failing_twice_gets_the_event_on_the_third_attempt(stack, api, receiver):
    receiver.respond = lambda n, _d: 503 if n <= 2 else 200
    job_id = submit(stack, api, {**SMALL, "webhook_url": receiver.url})
    record = wait_webhook(stack, api, job_id, {"delivered", "failed"})

    assert record["state"] == "delivered"
    assert [a["status_code"] for a in record["attempts"]] == [503, 503, 200]
    assert [d.status for d in receiver.deliveries] == [503, 503, 200]
    assert {d.webhook_id for d in receiver.deliveries} == {f"evt_{job_id}"}
    assert all(d.event for d in receiver.deliveries)  # every attempt correctly signed


def test_a_receiver_answering_410_is_not_retried(stack, api, receiver):
    receiver.respond = lambda n, _d: 410
    job_id = submit(stack, api, {**SMALL, "webhook_url": receiver.url})
    record = wait_webhook(stack, api, job_id, {"delivered", "failed"})
    time.sleep(3)

    assert record["state"] == "failed" and "410" in record["reason"]
    assert len(receiver.deliveries) == 1
    assert len(job(stack, api, job_id)["webhook"]["attempts"]) == 1


def test_a_receiver_down_for_a_while_gets_the_event_when_back(stack, api):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}/webhook"
    job_id = submit(stack, api, {**SMALL, "webhook_url": url})
    down = wait_webhook(stack, api, job_id, {"retrying"}, attempts=2)
    assert all(a["status_code"] is None for a in down["attempts"])

    with WebhookReceiver(stack.webhook_secret, port=port) as back:
        record = wait_webhook(stack, api, job_id, {"delivered"})
        assert len(back.deliveries) == 1 and back.deliveries[0].event["type"] == "job.succeeded"
    assert record["attempts"][-1]["status_code"] == 200
    assert len(record["attempts"]) >= 3


def _job_on_its_own_topic(stack, topic: str, body: dict) -> str:
    """A job accepted as the API would, published to `topic`, out of the workers' reach."""
    settings = dataclasses.replace(
        stack.settings, topic_name=topic, allow_http_loopback_webhooks=True
    )
    accepted = compose_submit.parts(settings).intake.submit_http(body, api_key_id="default")
    return accepted.job["job_id"]


def test_a_job_nacked_into_the_dead_letter_topic_ends_failed_with_job_failed(stack, api, receiver):
    project = stack.project
    publisher, subscriber = pubsub_v1.PublisherClient(), pubsub_v1.SubscriberClient()
    topic = f"jobs-{uuid.uuid4().hex[:8]}"
    topic_path = publisher.topic_path(project, topic)
    sub_path = subscriber.subscription_path(project, f"{topic}-worker")
    publisher.create_topic(name=topic_path)
    subscriber.create_subscription(
        request={
            "name": sub_path,
            "topic": topic_path,
            "dead_letter_policy": {
                "dead_letter_topic": publisher.topic_path(
                    project, stack.settings.dead_letter_topic
                ),
                "max_delivery_attempts": 5,
            },
        }
    )
    job_id = _job_on_its_own_topic(stack, topic, {**SMALL, "webhook_url": receiver.url})

    # A worker that never finishes: every delivery nacked, until Pub/Sub moves it on.
    attempts_seen: list[int] = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        response = subscriber.pull(
            request={"subscription": sub_path, "max_messages": 1, "return_immediately": True},
            timeout=5,
        )
        for received in response.received_messages:
            attempts_seen.append(received.delivery_attempt)
            subscriber.modify_ack_deadline(
                subscription=sub_path, ack_ids=[received.ack_id], ack_deadline_seconds=0
            )
        if job(stack, api, job_id)["state"] == "failed":
            break
        time.sleep(0.2)
    assert attempts_seen[:5] == [1, 2, 3, 4, 5]

    record = wait_webhook(stack, api, job_id, {"delivered"})
    failed = job(stack, api, job_id)
    assert failed["state"] == "failed" and failed["error"]["code"] == "attempts_exhausted"
    (delivery,) = receiver.deliveries
    assert delivery.event["type"] == "job.failed"
    assert delivery.event["data"] == result_json(stack, job_id)
    assert record["event_id"] == delivery.webhook_id
    subscriber.delete_subscription(subscription=sub_path)
    publisher.delete_topic(topic=topic_path)


def test_a_job_canceled_in_the_queue_sends_job_canceled(stack, api, receiver):
    publisher = pubsub_v1.PublisherClient()
    topic = f"jobs-{uuid.uuid4().hex[:8]}"
    publisher.create_topic(name=publisher.topic_path(stack.project, topic))
    job_id = _job_on_its_own_topic(stack, topic, {**SMALL, "webhook_url": receiver.url})

    canceled = api.post(f"{stack.api_url}/v1/jobs/{job_id}/cancel")
    assert canceled.status_code == 200 and canceled.json()["state"] == "canceled"
    wait_webhook(stack, api, job_id, {"delivered"})
    (delivery,) = receiver.deliveries
    assert delivery.event["type"] == "job.canceled"
    assert delivery.event["data"]["state"] == "canceled"
    assert delivery.event["data"] == result_json(stack, job_id)
    publisher.delete_topic(topic=publisher.topic_path(stack.project, topic))


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("https://10.0.0.7/hook", "private address"),
        ("https://192.168.1.1/hook", "private address"),
        ("https://169.254.169.254/computeMetadata/v1/", "metadata server"),
        ("https://metadata.google.internal/computeMetadata/v1/", "metadata server"),
        ("https://100.64.0.1/hook", "CGNAT"),
        ("https://224.0.0.1/hook", "multicast"),
        ("https://0.0.0.0/hook", "unspecified"),
        ("https://2130706433/hook", "not a canonical IP address"),
        ("https://0x7f.0.0.1/hook", "not a canonical IP address"),
        ("https://017700000001/hook", "not a canonical IP address"),
        ("https://[::ffff:127.0.0.1]/hook", "IPv6 literal"),
        ("https://[fd00::1]/hook", "IPv6 literal"),
        ("https://user:pw@example.com/hook", "user credentials"),
        ("http://93.184.216.34/hook", "https"),
        ("ftp://93.184.216.34/hook", "https"),
    ],
)
def test_unsafe_webhook_urls_are_refused_at_submit(stack, api, url, why):
    response = api.post(f"{stack.api_url}/v1/jobs", json={**SMALL, "webhook_url": url})
    assert response.status_code == 422
    (error,) = response.json()["error"]["details"]
    assert error["path"] == "$.webhook_url" and why in error["message"]
