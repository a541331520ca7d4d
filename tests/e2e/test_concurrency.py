"""Bursts of concurrent clients against the local stack over real HTTP: the API under
functions-framework (threaded, as Cloud Run serves it), the GPU worker on tiny-random, the
Eventarc bridge and the notify function. Nothing may answer 5xx, no job may be lost, and
none may be published, rendered or announced twice."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
from google.cloud import pubsub_v1

from ltxv.local.stack import LocalStack

from .conftest import running_stack

pytestmark = [pytest.mark.emulators, pytest.mark.timeout(300)]

COMPONENTS = ["api", "result_ready", "worker", "bridge"]
SMALL = {"prompt": "a paper boat on a pond", "num_frames": 9, "height": 64, "width": 96}
# Several seconds of denoising on two cores: long enough to be caught running.
SLOW = {
    "prompt": "waves at dusk",
    "height": 512,
    "width": 768,
    "num_frames": 49,
    "num_inference_steps": 50,
}


@pytest.fixture(scope="module")
def stack(emulators) -> Iterator[LocalStack]:
    with running_stack(emulators, COMPONENTS) as running:
        yield running


@pytest.fixture
def api(stack, clean_firestore) -> Iterator[requests.Session]:
    session = requests.Session()
    session.headers["X-API-Key"] = stack.api_key
    # Enough pooled connections that a burst really arrives at once.
    adapter = requests.adapters.HTTPAdapter(pool_connections=64, pool_maxsize=64)
    session.mount("http://", adapter)
    yield session
    session.close()


def burst(count: int, call) -> list[requests.Response]:
    with ThreadPoolExecutor(count) as pool:
        return list(pool.map(lambda _: call(), range(count)))


def wait_job(stack, api, job_id, states, timeout=120.0) -> dict:
    deadline = time.monotonic() + timeout
    body: dict = {}
    while time.monotonic() < deadline:
        body = api.get(f"{stack.api_url}/v1/jobs/{job_id}").json()
        if body.get("state") in states:
            return body
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} never reached {states}: {body}")


def worker_lines(stack, message: str, job_id: str) -> list[dict]:
    found = []
    for line in stack.log_file("worker").read_text(errors="replace").splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if entry.get("message") == message and entry.get("job_id") == job_id:
            found.append(entry)
    return found


def test_parallel_cancels_of_a_running_job_all_answer_and_stop_the_render(stack, api):
    job_id = api.post(f"{stack.api_url}/v1/jobs", json=SLOW).json()["job_id"]
    wait_job(stack, api, job_id, {"running"})

    answers = burst(8, lambda: api.post(f"{stack.api_url}/v1/jobs/{job_id}/cancel"))

    statuses = [a.status_code for a in answers]
    assert all(status in (200, 202) for status in statuses), [a.text for a in answers]
    job = wait_job(stack, api, job_id, {"canceled", "succeeded", "failed"})
    assert job["state"] == "canceled", job  # the cancel reached the render
    assert job["progress"]["step"] < SLOW["num_inference_steps"]
    assert len(worker_lines(stack, "rendering", job_id)) == 1
    assert not worker_lines(stack, "lease not renewed", job_id)
    # Asked again once it is settled: the same answer, cheaply.
    again = api.post(f"{stack.api_url}/v1/jobs/{job_id}/cancel")
    assert again.status_code == 200 and again.json()["state"] == "canceled"


def _pull_all(stack, job_id: str, quiet_seconds: float = 3.0) -> list[str]:
    """The ids of every message for `job_id` in the worker subscription (all acknowledged)."""
    subscriber = pubsub_v1.SubscriberClient()
    path = subscriber.subscription_path(stack.project, stack.settings.subscription)
    seen: list[str] = []
    ack_ids: list[str] = []
    deadline = time.monotonic() + quiet_seconds
    while time.monotonic() < deadline:
        response = subscriber.pull(subscription=path, max_messages=100, timeout=2)
        for received in response.received_messages:
            ack_ids.append(received.ack_id)
            if received.message.attributes.get("job_id") == job_id:
                seen.append(received.message.message_id)
    if ack_ids:
        subscriber.acknowledge(subscription=path, ack_ids=ack_ids)
    subscriber.close()
    return seen


def test_parallel_identical_submits_make_one_job_published_once(stack, api):
    stack.down(["worker"])  # nothing takes the message: what was published stays countable
    try:
        key = f"burst-{uuid.uuid4().hex}"
        answers = burst(
            40,
            lambda: api.post(
                f"{stack.api_url}/v1/jobs", json=SMALL, headers={"Idempotency-Key": key}
            ),
        )
        statuses = sorted({a.status_code for a in answers})
        assert statuses == [202], [a.text for a in answers if a.status_code != 202]
        ids = {a.json()["job_id"] for a in answers}
        assert len(ids) == 1
        (job_id,) = ids
        fresh = [a for a in answers if "Idempotent-Replayed" not in a.headers]
        assert len(fresh) == 1
        assert len(_pull_all(stack, job_id)) == 1
        assert api.get(f"{stack.api_url}/v1/jobs/{job_id}").json()["state"] == "queued"
    finally:
        stack.up(["worker"])
