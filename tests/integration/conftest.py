"""Fixtures for tests that run the submit function against the emulators.

Each test gets its own jobs topic and worker subscription (so messages never leak between
tests), an empty Firestore, and functions-framework's test client over the real
`functions/submit/main.py`, configured only through LTXV_* variables as in the cloud.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from functions_framework import create_app
from google.api_core import exceptions as gexc
from google.cloud import pubsub_v1

from ltxv.core.jobs import utcnow
from ltxv.core.settings import Settings
from ltxv.core.webhooks import new_secret
from ltxv.intake import compose as compose_submit
from ltxv.intake.auth import generate_api_key, hash_api_key
from ltxv.local.credentials import fake_service_account_key

ROOT = Path(__file__).resolve().parents[2]
SUBMIT_SOURCE = str(ROOT / "functions" / "submit" / "main.py")
API_KEY = generate_api_key()
OTHER_KEY = generate_api_key()
KEY_HASHES = json.dumps({"default": hash_api_key(API_KEY), "other": hash_api_key(OTHER_KEY)})
# Each key signs its webhooks with its own secret.
WEBHOOK_SECRETS = {"default": [new_secret()], "other": [new_secret()]}


@contextlib.contextmanager
def fresh_topic(project: str, **subscription: object) -> Iterator[tuple[str, str]]:
    """A new jobs topic and worker subscription (options as in Pub/Sub's API), then gone."""
    suffix = uuid.uuid4().hex[:8]
    topic, name = f"jobs-{suffix}", f"jobs-{suffix}-worker"
    publisher, subscriber = pubsub_v1.PublisherClient(), pubsub_v1.SubscriberClient()
    topic_path = publisher.topic_path(project, topic)
    sub_path = subscriber.subscription_path(project, name)
    publisher.create_topic(name=topic_path)
    subscriber.create_subscription(request={"name": sub_path, "topic": topic_path, **subscription})
    yield topic, name
    with contextlib.suppress(gexc.NotFound):
        subscriber.delete_subscription(subscription=sub_path)
    with contextlib.suppress(gexc.NotFound):
        publisher.delete_topic(topic=topic_path)


@pytest.fixture
def topic_names(emulators) -> Iterator[tuple[str, str]]:
    """A fresh jobs topic and worker subscription for one test."""
    with fresh_topic(emulators.project, ack_deadline_seconds=60) as names:
        yield names


@pytest.fixture(scope="session")
def signing_key_file(tmp_path_factory) -> Path:
    """A throwaway service-account key: fake-gcs-server does not check signatures."""
    path = tmp_path_factory.mktemp("signing") / "sa.json"
    path.write_text(json.dumps(fake_service_account_key("ltxv-test")))
    return path


@pytest.fixture
def env(emulators, clean_firestore, topic_names, signing_key_file, monkeypatch) -> dict[str, str]:
    topic, subscription = topic_names
    values = {
        "LTXV_PROJECT": emulators.project,
        "LTXV_PREFIX": emulators.prefix,
        "LTXV_TOPIC": topic,
        "LTXV_SUBSCRIPTION": subscription,
        "LTXV_API_KEY_HASHES": KEY_HASHES,
        "LTXV_WEBHOOK_SECRETS": json.dumps(WEBHOOK_SECRETS),
        "LTXV_SIGNING_CREDENTIALS_FILE": str(signing_key_file),
        "LTXV_ALLOW_HTTP_LOOPBACK_WEBHOOKS": "true",
        "LTXV_MAX_WAIT_SECONDS": "5",
        "LTXV_PREDICT_WAIT_SECONDS": "5",
        "LTXV_RPC_TIMEOUT_SECONDS": "3",
    }
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    return values


@pytest.fixture
def settings(env) -> Settings:
    return Settings.from_env()


@pytest.fixture
def service(settings) -> compose_submit.SubmitParts:
    """The submit function's parts, as its composition root builds them."""
    return compose_submit.parts(settings)


@pytest.fixture
def app(env):
    return create_app(target="api", source=SUBMIT_SOURCE, signature_type="http")


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def auth() -> dict[str, str]:
    return {"X-API-Key": API_KEY}


def pull_job_ids(settings: Settings, max_messages: int = 100, timeout: float = 2.0) -> list[str]:
    """Every job id waiting in the worker subscription (acknowledged as they are read)."""
    subscriber = pubsub_v1.SubscriberClient()
    found: list[str] = []
    while True:
        response = subscriber.pull(
            subscription=settings.subscription_path, max_messages=max_messages, timeout=timeout
        )
        if not response.received_messages:
            return found
        for received in response.received_messages:
            data = json.loads(received.message.data)
            assert received.message.attributes["job_id"] == data["job_id"]
            found.append(data["job_id"])
        subscriber.acknowledge(
            subscription=settings.subscription_path,
            ack_ids=[r.ack_id for r in response.received_messages],
        )


def settle(service, job_id, state="succeeded", delay=0.0, **fields):
    """Move a job on as a worker would (the worker itself arrives with issue 3)."""

    def run():
        time.sleep(delay)
        now = utcnow()
        changes = {"state": state, f"state_times.{state}": now, "updated_at": now, **fields}
        if state == "succeeded":
            outputs_bucket = service.settings.outputs
            changes.setdefault(
                "outputs",
                {
                    "video": f"gs://{outputs_bucket}/jobs/{job_id}/video.mp4",
                    "poster": f"gs://{outputs_bucket}/jobs/{job_id}/poster.jpg",
                    "result": f"gs://{outputs_bucket}/jobs/{job_id}/result.json",
                },
            )
            changes.setdefault("timings", {"generate_seconds": 1.5})
        service.firestore.collection("jobs").document(job_id).update(changes)

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def prompt_files(service, settings):
    """The prompt-file handler in-process, over the service's intake and clients, with the
    settings' limits (the deployed function's composition, minus its Eventarc wrapper)."""
    return compose_submit.prompt_files_over(service, settings)
