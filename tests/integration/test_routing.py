"""Routing by model against the emulators: two models enabled, a subscription per model on
one jobs topic (filtered as the local stack and terraform filter them), and a worker process
for one of them. A job is only ever rendered by a worker of the model it was recorded for.

Google's Pub/Sub emulator stores a subscription's filter but does not apply it: every
subscription of the topic gets every message. So these tests exercise the worker's own
check, which stands in for the filter here and backs it up in the cloud.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Iterator

import pytest
from google.api_core import exceptions as gexc
from google.cloud import pubsub_v1

from ltxv.core.dispatch import subscription_filter
from ltxv.core.jobs import new_job, new_job_id

from . import test_worker
from .test_worker import SMALL, outputs, submit, wait_state

# The worker process fixtures of test_worker.py (tiny-random on the CPU), shared as they are.
tiny_model_dir = test_worker.tiny_model_dir
start_worker = test_worker.start_worker

pytestmark = pytest.mark.emulators

DEFAULT = "tiny-random"  # renders on a CPU: the worker these tests run
OTHER = "ltx-video-2b"  # enabled, but no worker of it runs here
OTHER_REQUEST = {"prompt": "a lighthouse", "model": OTHER, "height": 256, "width": 256}


def worker_subscription(topic: str, model: str) -> str:
    return f"{topic}-worker-{model}"


@pytest.fixture
def topic_names(emulators) -> Iterator[tuple[str, str]]:
    """A jobs topic with one subscription per enabled model, as the local stack makes them;
    the default model's subscription is the one the settings (and the worker) use."""
    topic = f"jobs-{uuid.uuid4().hex[:8]}"
    publisher, subscriber = pubsub_v1.PublisherClient(), pubsub_v1.SubscriberClient()
    topic_path = publisher.topic_path(emulators.project, topic)
    publisher.create_topic(name=topic_path)
    paths = []
    for model in (DEFAULT, OTHER):
        paths.append(
            subscriber.subscription_path(emulators.project, worker_subscription(topic, model))
        )
        subscriber.create_subscription(
            request={
                "name": paths[-1],
                "topic": topic_path,
                "filter": subscription_filter(model, DEFAULT),
                "ack_deadline_seconds": 10,
                "enable_exactly_once_delivery": True,
            }
        )
    yield topic, worker_subscription(topic, DEFAULT)
    for path in paths:
        with contextlib.suppress(gexc.NotFound):
            subscriber.delete_subscription(subscription=path)
    with contextlib.suppress(gexc.NotFound):
        publisher.delete_topic(topic=topic_path)


@pytest.fixture
def env(env, monkeypatch) -> dict[str, str]:
    """The API accepts both models (each has its subscription, its pool)."""
    models = {"LTXV_MODELS": f"{DEFAULT},{OTHER}", "LTXV_DEFAULT_MODEL": DEFAULT}
    for name, value in models.items():
        monkeypatch.setenv(name, value)
    return {**env, **models}


def held_job_ids(project: str, subscription: str) -> list[tuple[str, str]]:
    """(job id, model attribute) of what waits in a subscription, left there (nacked)."""
    subscriber = pubsub_v1.SubscriberClient()
    path = subscriber.subscription_path(project, subscription)
    response = subscriber.pull(
        request={"subscription": path, "max_messages": 10, "return_immediately": True},
        timeout=10,
    )
    if response.received_messages:
        subscriber.modify_ack_deadline(
            request={
                "subscription": path,
                "ack_ids": [r.ack_id for r in response.received_messages],
                "ack_deadline_seconds": 0,
            }
        )
    return [
        (r.message.attributes["job_id"], r.message.attributes.get("model"))
        for r in response.received_messages
    ]


def test_a_job_for_another_model_is_left_to_that_models_pool(
    client, auth, service, settings, start_worker, topic_names
):
    topic, _ = topic_names
    worker = start_worker(LTXV_WORKER_MODEL=DEFAULT)
    other_job = submit(client, auth, OTHER_REQUEST)
    own_job = submit(client, auth, SMALL)

    # The emulator delivered the other model's message here too, filter or not; the worker
    # acknowledged it unread, as Pub/Sub acknowledges what a filter keeps out.
    seen = worker.wait_for(
        "another model's job; acknowledged as the filter would", job_id=other_job
    )
    assert (seen["job_model"], seen["worker_model"]) == (OTHER, DEFAULT)
    assert wait_state(service, own_job, {"succeeded", "failed"})["state"] == "succeeded"

    job = service.store.get(other_job)
    assert job["state"] == "queued" and job["model"] == OTHER
    assert job["attempts"] == 0 and job["lease"] is None and not outputs(settings, other_job)
    said = [e["message"] for e in worker.lines() if e.get("job_id") == other_job]
    assert said == [seen["message"]]  # nothing else: no claim, no render
    # Its message still waits in its own model's subscription, for that model's workers.
    held = held_job_ids(settings.project, worker_subscription(topic, OTHER))
    assert (other_job, OTHER) in held


def test_a_job_recorded_for_another_model_than_its_message_names_is_never_rendered(
    service, settings, start_worker
):
    # A message that names this worker's model for a job recorded for another (misrouted,
    # or forged): the job document is the truth.
    request = service.intake.validate(OTHER_REQUEST, api_key_id="default")
    job = new_job(job_id=new_job_id(), request=request, request_hash="x", api_key_id="default")
    service.store.create(job)
    service.dispatcher.publish([{**job, "model": DEFAULT}])
    other_job = job["job_id"]
    worker = start_worker(LTXV_WORKER_MODEL=DEFAULT)

    worker.wait_for("job recorded for another model; not rendered", job_id=other_job)
    time.sleep(1)  # anything it would wrongly do next has had time to start
    job = service.store.get(other_job)
    assert job["state"] == "queued" and job["attempts"] == 0 and job["lease"] is None
    assert job["error"]["code"] == "no_worker_for_model" and job["error"]["retryable"] is True
    assert not outputs(settings, other_job)
    said = [e["message"] for e in worker.lines() if e.get("job_id") == other_job]
    assert said == ["job recorded for another model; not rendered"]
