"""The whole intake path over real HTTP on the local stack: functions-framework processes,
the emulators, fake-gcs-server notifications and the Eventarc bridge."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator

import pytest
import requests
from google.api_core import exceptions as gexc
from google.cloud import pubsub_v1, storage

from ltxv.core import schemas
from ltxv.local.stack import LocalStack

from .conftest import key_session, running_stack

pytestmark = pytest.mark.emulators

OLD_EXAMPLE = schemas.old_predict_example()
FUNCTIONS = ["api", "prompt_file", "redispatch", "bridge"]


@pytest.fixture(scope="module")
def stack(emulators) -> Iterator[LocalStack]:
    """The session's emulators plus the submit functions and the bridge, as `make dev` runs."""
    with running_stack(emulators, FUNCTIONS) as running:
        yield running


@pytest.fixture
def api(stack, clean_firestore) -> Iterator[requests.Session]:
    _drain(stack)
    with key_session(stack) as session:
        yield session


def _drain(stack: LocalStack) -> list[str]:
    subscriber = pubsub_v1.SubscriberClient()
    path = subscriber.subscription_path(stack.project, stack.settings.subscription)
    ids: list[str] = []
    while True:
        response = subscriber.pull(subscription=path, max_messages=100, timeout=2)
        if not response.received_messages:
            return ids
        ids += [m.message.attributes["job_id"] for m in response.received_messages]
        subscriber.acknowledge(
            subscription=path, ack_ids=[m.ack_id for m in response.received_messages]
        )


def _wait_for_object(bucket: storage.Bucket, name: str, timeout: float = 30) -> bytes:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            return bucket.blob(name).download_as_bytes()
        except gexc.NotFound:
            time.sleep(0.2)
    raise AssertionError(f"gs://{bucket.name}/{name} did not appear in {timeout}s")


def test_old_predict_body_to_v1_jobs_is_queued_and_waits_in_the_subscription(stack, api):
    response = api.post(f"{stack.api_url}/v1/jobs", json=OLD_EXAMPLE)
    assert response.status_code == 202
    job = response.json()
    schemas.validator("job").validate(job)
    location = response.headers["Location"]
    assert location == f"/v1/jobs/{job['job_id']}"

    fetched = api.get(stack.api_url + location)
    assert fetched.status_code == 200 and fetched.json()["state"] == "queued"
    assert _drain(stack) == [job["job_id"]]


def test_idempotency_key_replay_over_http(stack, api):
    headers = {"Idempotency-Key": f"http-{uuid.uuid4()}"}
    first = api.post(f"{stack.api_url}/v1/jobs", json=OLD_EXAMPLE, headers=headers)
    again = api.post(f"{stack.api_url}/v1/jobs", json=OLD_EXAMPLE, headers=headers)
    assert first.json()["job_id"] == again.json()["job_id"]
    assert again.headers["Idempotent-Replayed"] == "true"
    conflict = api.post(
        f"{stack.api_url}/v1/jobs", json={**OLD_EXAMPLE, "seed": 9}, headers=headers
    )
    assert conflict.status_code == 409
    assert _drain(stack) == [first.json()["job_id"]]


def test_a_dropped_jsonl_file_yields_jobs_and_a_receipt_through_the_bridge(stack, api):
    name = f"incoming/{uuid.uuid4().hex}.jsonl"
    lines = [
        {"prompt": "a red fox in snow"},
        {"prompt": "waves at dusk", "seed": 3},
        {"prompt": "bad", "num_frames": 10},
        {"prompt": "a city at night", "num_frames": 17},
    ]
    bucket = storage.Client(project=stack.project).bucket(stack.settings.prompts)
    bucket.blob(name).upload_from_string("\n".join(json.dumps(line) for line in lines))

    receipt_name = "receipts/" + name.removeprefix("incoming/") + ".json"
    receipt = json.loads(_wait_for_object(bucket, receipt_name))
    schemas.validator("receipt").validate(receipt)
    assert [entry["line"] for entry in receipt["accepted"]] == [1, 2, 4]
    assert receipt["rejected"][0]["line"] == 3
    assert receipt["rejected"][0]["errors"][0]["path"] == "$.num_frames"

    for entry in receipt["accepted"]:
        job = api.get(f"{stack.api_url}/v1/jobs/{entry['job_id']}").json()
        assert job["state"] == "queued" and job["source"] == f"gs://{bucket.name}/{name}"
    published = _drain(stack)
    assert sorted(e["job_id"] for e in receipt["accepted"]) == sorted(
        job_id for job_id in published if job_id in {e["job_id"] for e in receipt["accepted"]}
    )


def test_errors_over_http_are_json_with_paths(stack, api):
    response = api.post(
        f"{stack.api_url}/v1/jobs", data="{oops", headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 400 and response.json()["error"]["code"] == "invalid_json"
    response = api.post(f"{stack.api_url}/v1/jobs", json={"prompt": "x", "height": 100})
    assert response.status_code == 422
    assert response.json()["error"]["details"][0]["path"] == "$.height"
    response = requests.get(f"{stack.api_url}/v1/jobs", timeout=5)
    assert response.status_code == 401


def test_health_and_openapi_over_http(stack):
    assert requests.get(f"{stack.api_url}/health", timeout=5).json() == {"status": "ok"}
    assert requests.get(f"{stack.api_url}/openapi.json", timeout=5).json()["openapi"] == "3.1.0"
