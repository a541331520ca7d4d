"""The HTTP API through functions-framework's test client, against the emulators."""

from __future__ import annotations

import json
import threading
import time
from datetime import timedelta

import pytest

from ltxv.core import schemas
from ltxv.core.jobs import to_json, utcnow

from .conftest import OTHER_KEY, pull_job_ids, settle

pytestmark = pytest.mark.emulators

OLD_EXAMPLE = schemas.old_predict_example()


def submit(client, auth, body=None, **headers):
    return client.post("/v1/jobs", json=body or OLD_EXAMPLE, headers={**auth, **headers})


def assert_error(response, status, code, paths=()):
    assert response.status_code == status, response.get_data(as_text=True)
    body = response.get_json()
    schemas.validator("error").validate(body)
    assert body["error"]["code"] == code
    assert {d["path"] for d in body["error"]["details"]} >= set(paths)
    return body["error"]


def test_old_predict_body_is_accepted_queued_and_published(client, auth, settings):
    response = submit(client, auth)
    assert response.status_code == 202
    job = response.get_json()
    schemas.validator("job").validate(job)
    assert response.headers["Location"] == f"/v1/jobs/{job['job_id']}"
    assert job["state"] == "queued" and job["published"] is True
    assert {k: job["request"][k] for k in OLD_EXAMPLE} == OLD_EXAMPLE
    assert job["source"] == "http" and job["api_key_id"] == "default"

    fetched = client.get(response.headers["Location"], headers=auth)
    assert fetched.status_code == 200
    assert fetched.get_json()["state"] == "queued"
    assert pull_job_ids(settings) == [job["job_id"]]


def test_bearer_token_works_like_x_api_key(client, auth):
    bearer = {"Authorization": f"Bearer {auth['X-API-Key']}"}
    assert submit(client, bearer).status_code == 202


@pytest.mark.parametrize(
    "headers",
    [{}, {"X-API-Key": "wrong"}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic x"}],
)
def test_missing_or_wrong_keys_are_401(client, headers):
    for response in (
        client.post("/v1/jobs", json=OLD_EXAMPLE, headers=headers),
        client.get("/v1/jobs", headers=headers),
        client.post("/predict", json=OLD_EXAMPLE, headers=headers),
    ):
        assert_error(response, 401, "unauthenticated")
        assert response.headers["WWW-Authenticate"] == "Bearer"


def test_idempotency_key_replay_returns_the_same_job(client, auth, settings):
    first = submit(client, auth, **{"Idempotency-Key": "order-1"})
    again = submit(client, auth, **{"Idempotency-Key": "order-1"})
    assert first.status_code == again.status_code == 202
    assert first.get_json()["job_id"] == again.get_json()["job_id"]
    assert again.headers["Idempotent-Replayed"] == "true"
    assert "Idempotent-Replayed" not in first.headers
    assert pull_job_ids(settings) == [first.get_json()["job_id"]]  # published once

    other_body = submit(client, auth, {**OLD_EXAMPLE, "seed": 1}, **{"Idempotency-Key": "order-1"})
    error = assert_error(other_body, 409, "idempotency_key_reused", ["header.Idempotency-Key"])
    assert error["job_id"] == first.get_json()["job_id"]


def test_the_same_idempotency_key_of_another_api_key_is_another_job(client, auth):
    mine = submit(client, auth, **{"Idempotency-Key": "k"}).get_json()
    theirs = submit(client, {"X-API-Key": OTHER_KEY}, **{"Idempotency-Key": "k"}).get_json()
    assert mine["job_id"] != theirs["job_id"]


def test_invalid_idempotency_key_is_400(client, auth):
    response = submit(client, auth, **{"Idempotency-Key": "x" * 256})
    assert_error(response, 400, "invalid_argument", ["header.Idempotency-Key"])


@pytest.mark.parametrize(
    ("data", "content_type", "status", "code"),
    [
        ("{not json", "application/json", 400, "invalid_json"),
        ("", "application/json", 400, "invalid_json"),
        ('{"prompt": NaN}', "application/json", 400, "invalid_json"),
        (b"\xff\xfe", "application/json", 400, "invalid_json"),
        ("[" * 100_000 + "]" * 100_000, "application/json", 413, "payload_too_large"),
        ("[" * 5000 + "]" * 5000, "application/json", 400, "invalid_json"),
        ('"a string"', "application/json", 422, "validation_failed"),
        ("[1, 2]", "application/json", 422, "validation_failed"),
        ('{"prompt": "x"}', "text/plain", 415, "unsupported_media_type"),
        ('{"prompt": "x"}', "application/x-www-form-urlencoded", 415, "unsupported_media_type"),
        (json.dumps({"prompt": "x" * 70_000}), "application/json", 413, "payload_too_large"),
        ('{"prompt": "x", "seed": ' + "7" * 4301 + "}", "application/json", 400, "invalid_json"),
    ],
)
def test_malformed_bodies_are_4xx_with_a_clear_error(
    client, auth, data, content_type, status, code
):
    response = client.post("/v1/jobs", data=data, content_type=content_type, headers=auth)
    error = assert_error(response, status, code)
    assert error["message"]


def test_validation_errors_name_every_field(client, auth, settings):
    body = {"prompt": "", "height": 100, "num_frames": 120, "colour": "red", "fps": "24"}
    error = assert_error(
        submit(client, auth, body),
        422,
        "validation_failed",
        ["$.prompt", "$.height", "$.num_frames", "$.colour", "$.fps"],
    )
    assert "5 invalid field" in error["message"]
    assert pull_job_ids(settings, timeout=0.5) == []


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("webhook_url", "http://hooks.example.com/x"),
        ("webhook_url", "https://10.0.0.1/hook"),
        ("webhook_url", "https://169.254.169.254/computeMetadata/v1/"),
        ("webhook_url", "https://2130706433/"),
        ("gcs_destination", "gs://someone-elses-bucket/x.mp4"),
        ("model", "stable-diffusion"),
        ("seed", -5),
        ("num_inference_steps", 10_000),
    ],
)
def test_unsafe_or_out_of_range_fields_are_422(client, auth, field, value):
    response = submit(client, auth, {**OLD_EXAMPLE, field: value})
    assert_error(response, 422, "validation_failed", [f"$.{field}"])


@pytest.mark.parametrize(
    ("raw", "path"),
    [
        ('{"big": 18446744073709551616}', "$.metadata.big"),  # 2^64 was a 500
        ('{"__x__": 1}', "$.metadata"),  # was a 503 marked retryable
        ('{"far": 1e999}', "$.metadata.far"),  # was stored as infinity
    ],
)
def test_metadata_the_store_or_json_cannot_hold_is_422_and_stores_nothing(
    client, auth, service, settings, raw, path
):
    data = '{"prompt": "a cat", "metadata": ' + raw + "}"
    response = client.post("/v1/jobs", data=data, content_type="application/json", headers=auth)
    error = assert_error(response, 422, "validation_failed", [path])
    assert error["retryable"] is False
    assert list(service.firestore.collection("jobs").stream()) == []
    assert pull_job_ids(settings, timeout=0.5) == []


def test_a_document_firestore_refuses_is_422_not_a_retryable_503(client, auth, monkeypatch):
    from google.api_core import exceptions as gexc

    from ltxv.core.store import JobStore

    def refuse(self, creates, marks):  # the seam: Firestore refusing a document
        raise gexc.InvalidArgument("Property name is invalid")

    monkeypatch.setattr(JobStore, "write_together", refuse)
    error = assert_error(submit(client, auth), 422, "validation_failed", ["$"])
    assert error["retryable"] is False and "Property name" not in error["details"][0]["message"]


def test_gcs_destination_under_the_keys_own_prefix_is_kept(client, auth, settings):
    destination = f"gs://{settings.outputs}/destinations/default/campaign/clip.mp4"
    job = submit(client, auth, {**OLD_EXAMPLE, "gcs_destination": destination}).get_json()
    assert job["request"]["gcs_destination"] == destination


def test_no_key_may_name_another_tenants_video_as_its_destination(client, auth, settings):
    """Job ids from an Idempotency-Key are computable by whoever knows the key id: the
    destination rules, not the id's secrecy, keep one tenant off another's outputs."""
    from ltxv.core.jobs import job_id_for_idempotency_key

    theirs = submit(client, {"X-API-Key": OTHER_KEY}, **{"Idempotency-Key": "k1"}).get_json()
    assert theirs["job_id"] == job_id_for_idempotency_key("other", "k1")
    for name in (
        f"jobs/{theirs['job_id']}/video.mp4",
        "destinations/other/clip.mp4",
        "campaign/clip.mp4",
    ):
        body = {**OLD_EXAMPLE, "gcs_destination": f"gs://{settings.outputs}/{name}"}
        error = assert_error(submit(client, auth, body), 422, "validation_failed")
        assert error["details"][0]["path"] == "$.gcs_destination"
        assert f"gs://{settings.outputs}/destinations/default/" in error["details"][0]["message"]


def test_another_keys_job_is_not_found(client, auth):
    job_id = submit(client, auth).get_json()["job_id"]
    other = {"X-API-Key": OTHER_KEY}
    assert_error(client.get(f"/v1/jobs/{job_id}", headers=other), 404, "not_found")
    assert_error(client.post(f"/v1/jobs/{job_id}/cancel", headers=other), 404, "not_found")
    assert_error(client.get("/v1/jobs/" + "a" * 26, headers=auth), 404, "not_found")
    assert_error(client.get("/v1/jobs/../../etc", headers=auth), 404, "not_found")


def test_list_shows_own_jobs_newest_first_with_pages_and_state_filter(client, auth):
    mine = [submit(client, auth, {"prompt": f"p{i}"}).get_json()["job_id"] for i in range(5)]
    submit(client, {"X-API-Key": OTHER_KEY}, {"prompt": "not yours"})
    client.post(f"/v1/jobs/{mine[0]}/cancel", headers=auth)

    seen, token = [], None
    while True:
        query = {"page_size": 2, **({"page_token": token} if token else {})}
        page = client.get("/v1/jobs", query_string=query, headers=auth).get_json()
        assert len(page["jobs"]) <= 2
        seen += [job["job_id"] for job in page["jobs"]]
        token = page["next_page_token"]
        if not token:
            break
    assert seen == list(reversed(mine))

    canceled = client.get("/v1/jobs", query_string={"state": "canceled"}, headers=auth)
    assert [job["job_id"] for job in canceled.get_json()["jobs"]] == [mine[0]]
    queued = client.get("/v1/jobs", query_string={"state": "queued"}, headers=auth).get_json()
    assert len(queued["jobs"]) == 4


@pytest.mark.parametrize(
    ("query", "path"),
    [
        ({"state": "done"}, "query.state"),
        ({"page_size": "0"}, "query.page_size"),
        ({"page_size": "101"}, "query.page_size"),
        ({"page_size": "ten"}, "query.page_size"),
        ({"page_size": "²"}, "query.page_size"),  # isdigit() says yes; int() said 500
        ({"page_size": "٣"}, "query.page_size"),
        ({"page_token": "garbage!"}, "query.page_token"),
        ({"colour": "red"}, "query.colour"),
    ],
)
def test_bad_list_parameters_are_400(client, auth, query, path):
    response = client.get("/v1/jobs", query_string=query, headers=auth)
    assert_error(response, 400, "invalid_argument", [path])


def test_cancel_queued_running_and_finished_jobs(client, auth, service):
    queued = submit(client, auth).get_json()["job_id"]
    response = client.post(f"/v1/jobs/{queued}/cancel", headers=auth)
    assert response.status_code == 200
    assert response.get_json()["state"] == "canceled"
    assert response.get_json()["state_times"]["canceled"]
    again = client.post(f"/v1/jobs/{queued}/cancel", headers=auth)
    assert again.status_code == 200 and again.get_json()["state"] == "canceled"

    running = submit(client, auth).get_json()["job_id"]
    settle(service, running, "running").join()
    response = client.post(f"/v1/jobs/{running}/cancel", headers=auth)
    assert response.status_code == 202
    body = response.get_json()
    assert body["state"] == "running" and body["cancel_requested"] is True
    stored = client.get(f"/v1/jobs/{running}", headers=auth).get_json()
    assert stored["cancel_requested"] is True and stored["cancel_requested_at"]

    done = submit(client, auth).get_json()["job_id"]
    settle(service, done).join()
    assert_error(client.post(f"/v1/jobs/{done}/cancel", headers=auth), 409, "conflict")


def test_prefer_wait_returns_the_finished_job_with_a_signed_url(client, auth, service):
    job_id = submit(client, auth, **{"Idempotency-Key": "wait-1"}).get_json()["job_id"]
    settle(service, job_id, delay=0.5)
    response = submit(client, auth, **{"Idempotency-Key": "wait-1", "Prefer": "wait=4"})
    assert response.status_code == 200, response.get_json()
    assert response.headers["Preference-Applied"] == "wait=4"
    job = response.get_json()
    schemas.validator("job").validate(job)
    assert job["state"] == "succeeded"
    assert job["video_url"].startswith(
        f"{service.settings.storage_endpoint}/{service.settings.outputs}/"
    )
    assert "X-Goog-Signature=" in job["video_url"]


def test_prefer_wait_is_capped_and_answers_202_if_unfinished(client, auth):
    started = time.monotonic()
    response = submit(client, auth, Prefer="respond-async, wait=3600")
    assert response.status_code == 202
    assert response.headers["Preference-Applied"] == "wait=5"  # LTXV_MAX_WAIT_SECONDS
    assert 4.5 <= time.monotonic() - started < 15


def test_predict_waits_and_answers_in_the_old_shape(client, auth, service):
    body = {**OLD_EXAMPLE, "seed": 7, "metadata": {"order": 12}}
    # The worker picks up whatever gets published; here a thread plays its part.
    watcher = threading.Thread(target=_finish_next_job, args=(service,))
    watcher.start()
    response = client.post("/predict", json=body, headers=auth)
    watcher.join()
    assert response.status_code == 200, response.get_json()
    result = response.get_json()
    schemas.validator("predict-response").validate(result)
    assert result["seed"] == 7
    assert result["gcs_bucket"] == service.settings.outputs
    assert result["gcs_blob"] == result["video_path"] == f"jobs/{result['job_id']}/video.mp4"
    assert result["generation_time_seconds"] == 1.5
    assert result["metadata"] == {"order": 12}
    assert "X-Goog-Signature=" in result["video_url"]


def _finish_next_job(service):
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        jobs = list(service.firestore.collection("jobs").limit(1).stream())
        if jobs:
            settle(service, jobs[0].id).join()
            return
        time.sleep(0.05)


def test_predict_reports_a_timeout_with_the_job_to_follow(client, auth):
    response = client.post("/predict", json=OLD_EXAMPLE, headers=auth)
    error = assert_error(response, 504, "timeout")
    assert response.headers["Location"] == f"/v1/jobs/{error['job_id']}"


def test_predict_reports_a_failed_job(client, auth, service):
    job_id = submit(client, auth, **{"Idempotency-Key": "will-fail"}).get_json()["job_id"]
    error = {"code": "bad_prompt", "message": "the prompt was rejected", "retryable": False}
    settle(service, job_id, "failed", error=error).join()
    headers = {**auth, "Idempotency-Key": "will-fail"}
    response = client.post("/predict", json=OLD_EXAMPLE, headers=headers)
    body = assert_error(response, 422, "job_failed")
    assert body["message"] == "the prompt was rejected" and body["job_id"] == job_id


def test_a_credentials_failure_while_signing_urls_is_a_retryable_503(auth, service, monkeypatch):
    """Deployed, URLs are signed with the runtime's token; if it cannot be refreshed the
    answer is a retryable 503, not a 500."""
    import google.auth.exceptions
    from functions_framework import create_app

    from ltxv.core import signing

    from .conftest import SUBMIT_SOURCE

    class Unrefreshable:  # stands in for the metadata server's token endpoint failing
        valid = False
        service_account_email = "api@proj.iam.gserviceaccount.com"

        def refresh(self, request):
            raise google.auth.exceptions.RefreshError("metadata server unavailable")

    monkeypatch.delenv("LTXV_SIGNING_CREDENTIALS_FILE")
    monkeypatch.setattr(signing.google.auth, "default", lambda: (Unrefreshable(), "proj"))
    client = create_app(target="api", source=SUBMIT_SOURCE, signature_type="http").test_client()
    job_id = submit(client, auth).get_json()["job_id"]
    settle(service, job_id).join()
    response = client.get(f"/v1/jobs/{job_id}", headers=auth)
    error = assert_error(response, 503, "unavailable")
    assert error["retryable"] is True and "metadata" not in error["message"]


def test_health_openapi_and_unknown_routes(client):
    for path in ("/healthz", "/health"):
        response = client.get(path)
        assert response.status_code == 200 and response.get_json() == {"status": "ok"}
    document = client.get("/openapi.json").get_json()
    assert document["openapi"].startswith("3.1")
    assert document["components"]["schemas"]["JobRequest"]["properties"]["model"]["enum"] == [
        "tiny-random"
    ]
    assert_error(client.get("/nope"), 404, "not_found")
    response = client.delete("/v1/jobs")
    assert_error(response, 405, "method_not_allowed")
    assert response.headers["Allow"] == "GET, HEAD, POST"


def test_pubsub_failure_is_503_and_leaves_no_job(client, auth, monkeypatch, service):
    client.get("/healthz")  # the healthy app reads its settings now, before the break
    monkeypatch.setenv("LTXV_TOPIC", "no-such-topic")
    from functions_framework import create_app

    from .conftest import SUBMIT_SOURCE

    broken = create_app(target="api", source=SUBMIT_SOURCE, signature_type="http").test_client()
    response = broken.post("/v1/jobs", json=OLD_EXAMPLE, headers={**auth, "Idempotency-Key": "x1"})
    error = assert_error(response, 503, "unavailable")
    assert error["retryable"] is True and response.headers["Retry-After"]
    assert list(service.firestore.collection("jobs").stream()) == []

    # The client's retry, once Pub/Sub is back, goes through with the same key.
    retried = submit(client, auth, **{"Idempotency-Key": "x1"})
    assert retried.status_code == 202 and "Idempotent-Replayed" not in retried.headers


def test_firestore_failure_is_503_fast_and_publishes_nothing(auth, monkeypatch, settings):
    monkeypatch.setenv("FIRESTORE_EMULATOR_HOST", "127.0.0.1:9")  # nothing listens there
    monkeypatch.setenv("LTXV_RPC_TIMEOUT_SECONDS", "1")
    from functions_framework import create_app

    from .conftest import SUBMIT_SOURCE

    broken = create_app(target="api", source=SUBMIT_SOURCE, signature_type="http").test_client()
    started = time.monotonic()
    response = broken.post("/v1/jobs", json=OLD_EXAMPLE, headers=auth)
    assert_error(response, 503, "unavailable")
    assert time.monotonic() - started < 10
    assert pull_job_ids(settings, timeout=0.5) == []


def test_a_job_stranded_before_publish_is_published_by_the_sweep(service, settings):
    from ltxv.core.jobs import new_job, new_job_id
    from ltxv.intake.validation import request_hash

    request = service.intake.validate({"prompt": "stranded"}, api_key_id="default")
    job = new_job(
        job_id=new_job_id(),
        request=request,
        request_hash=request_hash(request),
        api_key_id="default",
        now=utcnow() - timedelta(minutes=5),
    )
    service.store.create(job)  # the process "crashed" here, before publishing
    fresh = new_job(job_id=new_job_id(), request=request, request_hash="x", api_key_id="default")
    service.store.create(fresh)  # too young: its request may still be publishing

    assert service.intake.redispatch(timedelta(seconds=60)) == [job["job_id"]]
    assert pull_job_ids(settings) == [job["job_id"]]
    stored = service.store.get(job["job_id"])
    assert stored["published"] is True
    assert service.intake.redispatch(timedelta(seconds=60)) == []


def test_a_replay_finishes_the_publish_of_a_stranded_job(client, auth, service, settings):
    from ltxv.core.jobs import job_id_for_idempotency_key, new_job
    from ltxv.intake.validation import request_hash

    request = service.intake.validate(OLD_EXAMPLE, api_key_id="default")
    job_id = job_id_for_idempotency_key("default", "crashed-1")
    service.store.create(
        new_job(
            job_id=job_id,
            request=request,
            request_hash=request_hash(request),
            api_key_id="default",
            idempotency_key="crashed-1",
        )
    )
    response = submit(client, auth, **{"Idempotency-Key": "crashed-1"})
    assert response.status_code == 202 and response.get_json()["published"] is True
    assert pull_job_ids(settings) == [job_id]


def test_job_documents_in_firestore_match_the_schema(client, auth, service):
    body = {**OLD_EXAMPLE, "webhook_url": "http://127.0.0.1:9/hook"}
    job_id = submit(client, auth, body).get_json()["job_id"]
    document = service.firestore.collection("jobs").document(job_id).get().to_dict()
    schemas.validator("job").validate(to_json(document))
    assert document["webhook"]["url"] == "http://127.0.0.1:9/hook"
    assert document["expires_at"] > document["created_at"]


def test_paths_no_route_can_hold_still_get_a_json_404(client, auth):
    response = client.get("/v1/jobs/abc%0Adef", headers=auth)
    assert_error(response, 404, "not_found")


def test_a_key_at_its_limit_of_jobs_in_flight_gets_429_and_others_do_not(
    auth, service, monkeypatch
):
    from functions_framework import create_app

    from .conftest import SUBMIT_SOURCE

    monkeypatch.setenv("LTXV_MAX_JOBS_IN_FLIGHT", "3")
    client = create_app(target="api", source=SUBMIT_SOURCE, signature_type="http").test_client()
    ids = [
        submit(client, auth, **{"Idempotency-Key": f"cap-{n}"}).get_json()["job_id"]
        for n in range(3)
    ]
    error = assert_error(submit(client, auth), 429, "too_many_jobs")
    assert error["retryable"] is True and "3 jobs queued or running" in error["message"]
    response = submit(client, auth)
    assert response.headers["Retry-After"] == "30"
    # A replay of an accepted job is still answered; another key has its own room.
    replay = submit(client, auth, **{"Idempotency-Key": "cap-1"})
    assert replay.status_code == 202 and replay.get_json()["job_id"] == ids[1]
    assert submit(client, {"X-API-Key": OTHER_KEY}).status_code == 202
    settle(service, ids[0]).join()  # one finished: room for one more
    assert submit(client, auth).status_code == 202
    assert_error(submit(client, auth), 429, "too_many_jobs")
