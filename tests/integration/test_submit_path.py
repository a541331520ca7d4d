"""What a submit waits for (the create and the publish), and what it leaves for after its
answer (the `published` mark) or does beside them (the in-flight count), against the
emulators: nothing a refused request made survives, and every accepted job is marked."""

from __future__ import annotations

import time

import pytest

from ltxv.core import schemas
from ltxv.core.jobs import job_id_for_idempotency_key

from .conftest import pull_job_ids

pytestmark = pytest.mark.emulators

OLD_EXAMPLE = schemas.old_predict_example()


def submit(client, auth, **headers):
    return client.post("/v1/jobs", json=OLD_EXAMPLE, headers={**auth, **headers})


@pytest.fixture
def capped_client(env, monkeypatch):
    from functions_framework import create_app

    from .conftest import SUBMIT_SOURCE

    monkeypatch.setenv("LTXV_MAX_JOBS_IN_FLIGHT", "3")
    return create_app(target="api", source=SUBMIT_SOURCE, signature_type="http").test_client()


def test_a_job_refused_at_the_limit_leaves_no_document_and_no_message(
    capped_client, auth, service, settings
):
    accepted = [submit(capped_client, auth).get_json()["job_id"] for _ in range(3)]
    # Counted while it was being created: the job was written, then removed unpublished.
    refused = submit(capped_client, auth, **{"Idempotency-Key": "over-the-limit"})
    assert refused.status_code == 429, refused.get_data(as_text=True)
    assert service.store.get(job_id_for_idempotency_key("default", "over-the-limit")) is None
    assert service.store.count_in_flight("default") == 3
    assert sorted(pull_job_ids(settings)) == sorted(accepted)
    # The same key, asked again at the limit, is refused again; nothing was left to replay.
    again = submit(capped_client, auth, **{"Idempotency-Key": "over-the-limit"})
    assert again.status_code == 429


def test_the_published_mark_follows_the_answer(client, auth, service):
    answered = [submit(client, auth).get_json() for _ in range(5)]
    assert all(job["published"] is True for job in answered)
    deadline = time.monotonic() + 10
    stored = [service.store.get(job["job_id"]) for job in answered]
    while not all(job["published"] for job in stored) and time.monotonic() < deadline:
        time.sleep(0.05)
        stored = [service.store.get(job["job_id"]) for job in answered]
    assert all(job["published"] and job["published_at"] for job in stored)


def test_a_replay_during_the_creators_publish_gets_the_same_published_job(client, auth):
    first = submit(client, auth, **{"Idempotency-Key": "twice-quickly"})
    second = submit(client, auth, **{"Idempotency-Key": "twice-quickly"})
    assert first.status_code == second.status_code == 202
    assert second.headers["Idempotent-Replayed"] == "true"
    assert first.get_json()["job_id"] == second.get_json()["job_id"]
    assert second.get_json()["published"] is True


def test_an_aged_count_far_below_the_limit_is_taken_again_beside_not_before(service):
    """The submit goes ahead on the aged count, without waiting for the fresh one taken
    meanwhile, which is what the next submits go by."""
    intake = service.intake
    intake.in_flight.fresh_seconds = 0.05
    counts = []
    count = intake.store.count_in_flight

    def slow_count(api_key_id, up_to):
        time.sleep(0.5)
        counts.append(count(api_key_id, up_to=up_to))
        return counts[-1]

    intake.store.count_in_flight = slow_count
    started = time.monotonic()
    intake.submit_http(OLD_EXAMPLE, api_key_id="default")  # the key's first: waited for
    assert time.monotonic() - started >= 0.5 and len(counts) == 1
    time.sleep(0.1)
    intake.submit_http(OLD_EXAMPLE, api_key_id="default")
    assert len(counts) == 1  # it did not wait for the count its aged one started
    deadline = time.monotonic() + 5
    while intake.in_flight._readings["default"].counted < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert counts == [1, 2] and intake.in_flight._readings["default"].counted == 2


def test_a_background_count_that_fails_is_started_again_by_a_later_submit(service):
    intake = service.intake
    intake.in_flight.fresh_seconds = 0.05
    intake.submit_http(OLD_EXAMPLE, api_key_id="default")
    calls = []

    def broken(api_key_id, up_to):
        calls.append(api_key_id)
        raise RuntimeError("a bug in the count")

    intake.store.count_in_flight = broken
    time.sleep(0.1)
    intake.submit_http(OLD_EXAMPLE, api_key_id="default")
    deadline = time.monotonic() + 5
    while intake.in_flight._readings["default"].refreshing and time.monotonic() < deadline:
        time.sleep(0.01)
    assert calls == ["default"] and not intake.in_flight._readings["default"].refreshing
    intake.submit_http(OLD_EXAMPLE, api_key_id="default")
    deadline = time.monotonic() + 5
    while len(calls) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert calls == ["default", "default"]
