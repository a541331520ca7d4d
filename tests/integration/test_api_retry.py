"""POST /v1/jobs/{id}/retry through functions-framework's test client, against the
emulators: a failed or canceled job's stored request again, as a new job naming its parent."""

from __future__ import annotations

import pytest
from functions_framework import create_app

from ltxv.core import schemas
from ltxv.core.jobs import to_json

from .conftest import OTHER_KEY, SUBMIT_SOURCE, pull_job_ids, settle
from .test_api import OLD_EXAMPLE, assert_error, submit

pytestmark = pytest.mark.emulators

FAILURE = {"code": "internal", "message": "the render broke", "retryable": True}


def retry(client, auth, job_id, **headers):
    return client.post(f"/v1/jobs/{job_id}/retry", headers={**auth, **headers})


def failed_job(client, auth, service, body=None) -> dict:
    job = submit(client, auth, body).get_json()
    settle(service, job["job_id"], "failed", error=FAILURE).join()
    return job


def test_a_failed_job_is_retried_as_a_queued_job_with_its_parent_and_request(
    client, auth, service, settings
):
    body = {**OLD_EXAMPLE, "seed": 5, "metadata": {"run": "a"}}
    parent = failed_job(client, auth, service, body)
    assert pull_job_ids(settings) == [parent["job_id"]]

    response = retry(client, auth, parent["job_id"])
    assert response.status_code == 202, response.get_data(as_text=True)
    job = response.get_json()
    schemas.validator("job").validate(job)
    assert response.headers["Location"] == f"/v1/jobs/{job['job_id']}"
    assert "Idempotent-Replayed" not in response.headers
    assert job["job_id"] != parent["job_id"] and job["parent_job_id"] == parent["job_id"]
    assert job["state"] == "queued" and job["published"] is True
    assert job["request"] == parent["request"] and job["model"] == parent["model"]
    assert job["api_key_id"] == "default" and job["source"] == "http"
    assert pull_job_ids(settings) == [job["job_id"]]

    # The lineage shows in the job views and the stored document; the parent is unchanged.
    fetched = client.get(f"/v1/jobs/{job['job_id']}", headers=auth).get_json()
    assert fetched["parent_job_id"] == parent["job_id"]
    listed = {j["job_id"]: j for j in client.get("/v1/jobs", headers=auth).get_json()["jobs"]}
    assert listed[job["job_id"]]["parent_job_id"] == parent["job_id"]
    assert listed[parent["job_id"]]["parent_job_id"] is None
    assert listed[parent["job_id"]]["state"] == "failed"
    document = service.firestore.collection("jobs").document(job["job_id"]).get().to_dict()
    schemas.validator("job").validate(to_json(document))


def test_a_canceled_job_is_retried_and_a_retry_can_be_retried(client, auth, service):
    parent = submit(client, auth).get_json()["job_id"]
    assert client.post(f"/v1/jobs/{parent}/cancel", headers=auth).status_code == 200
    child = retry(client, auth, parent).get_json()
    assert child["parent_job_id"] == parent and child["state"] == "queued"
    settle(service, child["job_id"], "failed", error=FAILURE).join()
    grandchild = retry(client, auth, child["job_id"]).get_json()
    assert grandchild["parent_job_id"] == child["job_id"]


def test_an_idempotency_key_makes_a_repeated_retry_return_the_same_job(
    client, auth, service, settings
):
    parent = failed_job(client, auth, service)["job_id"]
    pull_job_ids(settings)
    first = retry(client, auth, parent, **{"Idempotency-Key": "retry-1"})
    again = retry(client, auth, parent, **{"Idempotency-Key": "retry-1"})
    assert first.status_code == again.status_code == 202
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.get_json()["job_id"] == first.get_json()["job_id"]
    assert pull_job_ids(settings) == [first.get_json()["job_id"]]  # published once

    # Without the header every retry is a new job; the key names no submit's job either.
    plain = {retry(client, auth, parent).get_json()["job_id"] for _ in range(2)}
    assert len(plain) == 2 and first.get_json()["job_id"] not in plain
    submitted = submit(client, auth, **{"Idempotency-Key": "retry-1"}).get_json()
    assert submitted["job_id"] != first.get_json()["job_id"]
    assert submitted["parent_job_id"] is None
    # The same key retrying another job is that job's retry.
    other = failed_job(client, auth, service)["job_id"]
    elsewhere = retry(client, auth, other, **{"Idempotency-Key": "retry-1"}).get_json()
    assert elsewhere["parent_job_id"] == other


@pytest.mark.parametrize("state", ["queued", "running", "succeeded"])
def test_a_job_that_did_not_fail_is_409_not_retryable(client, auth, service, settings, state):
    job_id = submit(client, auth).get_json()["job_id"]
    if state != "queued":
        settle(service, job_id, state).join()
    pull_job_ids(settings)
    error = assert_error(retry(client, auth, job_id), 409, "not_retryable")
    assert error["job_id"] == job_id
    assert f"is {state}; only a failed or canceled job can be retried" in error["message"]
    assert pull_job_ids(settings) == []  # nothing was created


def test_another_keys_job_and_unknown_ids_are_404(client, auth, service):
    parent = failed_job(client, auth, service)["job_id"]
    assert_error(retry(client, {"X-API-Key": OTHER_KEY}, parent), 404, "not_found")
    assert_error(retry(client, auth, "a" * 26), 404, "not_found")
    assert_error(retry(client, auth, "not-a-job-id"), 404, "not_found")
    assert_error(retry(client, {}, parent), 401, "unauthenticated")
    assert_error(client.get(f"/v1/jobs/{parent}/retry", headers=auth), 405, "method_not_allowed")


def test_a_bad_idempotency_key_is_400(client, auth, service):
    parent = failed_job(client, auth, service)["job_id"]
    response = retry(client, auth, parent, **{"Idempotency-Key": "has space"})
    assert_error(response, 400, "invalid_argument", ["header.Idempotency-Key"])


def test_a_stored_request_that_no_longer_validates_is_422_naming_the_field(
    client, auth, service, settings
):
    """As if the model's limits had shrunk since the job was accepted."""
    parent = failed_job(client, auth, service)["job_id"]
    document = service.firestore.collection("jobs").document(parent)
    document.update({"request.height": 8192})
    pull_job_ids(settings)
    error = assert_error(retry(client, auth, parent), 422, "validation_failed", ["$.height"])
    assert "1 invalid field(s)" in error["message"]
    assert pull_job_ids(settings) == []


def test_a_retry_counts_against_the_keys_jobs_in_flight(auth, service, monkeypatch):
    monkeypatch.setenv("LTXV_MAX_JOBS_IN_FLIGHT", "2")
    client = create_app(target="api", source=SUBMIT_SOURCE, signature_type="http").test_client()
    parent = failed_job(client, auth, service)["job_id"]
    accepted = retry(client, auth, parent, **{"Idempotency-Key": "cap"})
    assert submit(client, auth).status_code == 202  # two in flight: the limit
    error = assert_error(retry(client, auth, parent), 429, "too_many_jobs")
    assert error["retryable"] is True
    # A replay of the retry already accepted is still answered.
    replay = retry(client, auth, parent, **{"Idempotency-Key": "cap"})
    assert replay.status_code == 202
    assert replay.get_json()["job_id"] == accepted.get_json()["job_id"]
