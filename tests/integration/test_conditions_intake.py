"""Conditions and extend at submit, over the API against the emulators and fake-gcs: each
input is read, decoded and pinned to one object generation, or the request is refused
with the item and field that are wrong."""

from __future__ import annotations

import hashlib
import json
import threading

import flask
import pytest
from functions_framework import create_app
from google.cloud import storage
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from ltxv.core import schemas
from ltxv.core.jobs import to_json
from ltxv.core.profiles import all_profiles
from ltxv.core.settings import Settings
from ltxv.intake import compose as compose_submit
from ltxv.intake.input_retention import now_stamp
from tests import media_samples

from .conftest import API_KEY, OTHER_KEY, SUBMIT_SOURCE, settle

pytestmark = pytest.mark.emulators


def put(settings, name: str, data: bytes, bucket: str | None = None) -> storage.Blob:
    """Stored as an upload is: stamped with custom_time now (its signed PUT requires it),
    so intake need not renew it (test_input_retention.py tests the renewal)."""
    blob = storage.Client(project=settings.project).bucket(bucket or settings.inputs).blob(name)
    blob.custom_time = now_stamp()
    blob.upload_from_string(data, content_type="application/octet-stream")
    blob.reload()
    return blob


def uri(blob: storage.Blob) -> str:
    return f"gs://{blob.bucket.name}/{blob.name}"


def submit(client, auth, **fields):
    body = {"prompt": "a fox", "num_frames": 17, **fields}
    return client.post("/v1/jobs", json=body, headers=auth)


def refused(response) -> dict[str, str]:
    assert response.status_code == 422, response.get_data(as_text=True)
    return {d["path"]: d["message"] for d in response.get_json()["error"]["details"]}


def stored_job(service, job_id):
    job = service.store.get(job_id)
    schemas.validator("job").validate(to_json(job))
    return job


def expected(blob, data, origin, kind, content_type, frames, select, frame_index, strength=1.0):
    return {
        "from": origin,
        "kind": kind,
        "uri": uri(blob),
        "generation": blob.generation,
        "content_type": content_type,
        "bytes": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
        "width": 64,
        "height": 48,
        "frames": frames,
        "select": select,
        "frame_index": frame_index,
        "strength": strength,
    }


def test_an_image_resolves_to_its_pinned_inputs_entry(client, auth, settings, service):
    data = media_samples.png()
    blob = put(settings, "keys/default/uploads/first.png", data)
    response = submit(client, auth, conditions=[{"image": uri(blob), "strength": 0.8}])
    assert response.status_code == 202, response.get_data(as_text=True)
    job = stored_job(service, response.get_json()["job_id"])
    assert job["inputs"] == [
        expected(
            blob, data, "conditions[0]", "image", "image/png", 1, {"start": 0, "count": 1}, 0, 0.8
        )
    ]
    assert job["request"]["conditions"] == [{"image": uri(blob), "frame_index": 0, "strength": 0.8}]
    assert response.get_json()["inputs"] == job["inputs"]


def test_first_and_last_keyframes(client, auth, settings, service):
    first, last = media_samples.png(), media_samples.jpeg()
    a = put(settings, "keys/default/uploads/a", first)
    b = put(settings, "keys/default/uploads/b", last)
    conditions = [{"image": uri(a)}, {"image": uri(b), "frame_index": -1}]
    response = submit(client, auth, num_frames=33, conditions=conditions)
    assert response.status_code == 202, response.get_data(as_text=True)
    job = stored_job(service, response.get_json()["job_id"])
    one = {"start": 0, "count": 1}
    assert job["inputs"] == [
        expected(a, first, "conditions[0]", "image", "image/png", 1, one, 0),
        expected(b, last, "conditions[1]", "image", "image/jpeg", 1, one, 32),
    ]


def test_a_video_uses_its_first_frames_that_fit(client, auth, settings, service):
    data = media_samples.video(frames=17)
    blob = put(settings, "keys/default/uploads/clip", data)
    # Pinned at 8 of 17 output frames: 9 fit, and 9 is 8k + 1.
    response = submit(client, auth, conditions=[{"video": uri(blob), "frame_index": 8}])
    assert response.status_code == 202, response.get_data(as_text=True)
    job = stored_job(service, response.get_json()["job_id"])
    assert job["inputs"] == [
        expected(blob, data, "conditions[0]", "video", "video/mp4", 17, {"start": 0, "count": 9}, 8)
    ]


def test_a_condition_names_the_generation_it_checked(client, auth, settings, service):
    blob = put(settings, "keys/default/uploads/changing", media_samples.png())
    job_id = submit(client, auth, conditions=[{"image": uri(blob)}]).get_json()["job_id"]
    newer = put(settings, "keys/default/uploads/changing", media_samples.png(color=(1, 2, 3)))
    assert newer.generation != blob.generation
    assert service.store.get(job_id)["inputs"][0]["generation"] == blob.generation


@pytest.mark.parametrize(
    ("name", "data", "field", "words"),
    [
        (
            "keys/default/uploads/cat.png",
            b"just text, named like a picture",
            "image",
            "not an image",
        ),
        ("keys/default/uploads/cut.png", media_samples.png()[:70], "image", "not a decodable"),
        (
            "keys/default/uploads/vid.png",
            media_samples.video(9),
            "image",
            "not an image; name it as video",
        ),
        (
            "keys/default/uploads/img.mp4",
            media_samples.png(),
            "video",
            "not a video; name it as image",
        ),
        (
            "keys/default/uploads/big.png",
            media_samples.png(4097, 4096),
            "image",
            "pixels; the limit",
        ),
    ],
)
def test_a_bad_input_is_refused_at_submit(client, auth, settings, name, data, field, words):
    blob = put(settings, name, data)
    errors = refused(submit(client, auth, conditions=[{field: uri(blob)}]))
    assert words in errors[f"$.conditions[0].{field}"]


def test_an_object_over_the_byte_limit_is_refused_before_it_is_downloaded(client, auth, settings):
    limit = all_profiles()["tiny-random"].conditioning.max_input_bytes
    blob = put(settings, "keys/default/uploads/huge", b"\0" * (limit + 1))
    errors = refused(submit(client, auth, conditions=[{"image": uri(blob)}]))
    assert errors["$.conditions[0].image"] == f"is {limit + 1} bytes; the limit is {limit}"


def test_a_missing_object_and_where_inputs_may_come_from(client, auth, settings):
    own = f"gs://{settings.inputs}/keys/default/uploads/"
    theirs = put(settings, "keys/other/uploads/secret.png", media_samples.png())
    output = put(settings, "jobs/x/poster.png", media_samples.png(), bucket=settings.outputs)
    errors = refused(
        submit(
            client,
            auth,
            num_frames=33,
            conditions=[
                {"image": own + "nothing-here"},
                {"image": uri(theirs), "frame_index": 8},
                {"image": uri(output), "frame_index": 16},
            ],
        )
    )
    # Where an input may come from is checked before any is read: nothing was read yet.
    assert set(errors) == {"$.conditions[1].image", "$.conditions[2].image"}
    mine = f"only from gs://{settings.inputs}/keys/default/ "
    assert mine in errors["$.conditions[1].image"]
    assert mine in errors["$.conditions[2].image"]
    missing = refused(submit(client, auth, conditions=[{"image": own + "nothing-here"}]))
    assert missing == {"$.conditions[0].image": f"{own}nothing-here does not exist"}


def test_an_allowed_bucket_is_read_for_its_keys_only(emulators, env, monkeypatch, settings):
    shared = f"{settings.prefix}-shared-media"
    client_ = storage.Client(project=settings.project)
    if client_.lookup_bucket(shared) is None:
        client_.create_bucket(shared)
    blob = put(settings, "team/first.png", media_samples.png(), bucket=shared)
    monkeypatch.setenv("LTXV_INPUT_BUCKETS", json.dumps({shared: ["default"]}))
    client = create_app(target="api", source=SUBMIT_SOURCE, signature_type="http").test_client()
    ok = submit(client, {"X-API-Key": API_KEY}, conditions=[{"image": uri(blob)}])
    assert ok.status_code == 202, ok.get_data(as_text=True)
    errors = refused(submit(client, {"X-API-Key": OTHER_KEY}, conditions=[{"image": uri(blob)}]))
    assert "may read conditions only from" in errors["$.conditions[0].image"]


def test_a_data_url_is_stored_once_by_its_digest(client, auth, settings, service):
    data = media_samples.png(color=(9, 9, 9))
    digest = hashlib.sha256(data).hexdigest()
    stored = f"gs://{settings.inputs}/keys/default/inline/{digest}"
    jobs = []
    for _ in range(2):
        response = submit(client, auth, conditions=[{"image": media_samples.data_url(data)}])
        assert response.status_code == 202, response.get_data(as_text=True)
        jobs.append(stored_job(service, response.get_json()["job_id"]))
    assert [job["request"]["conditions"][0]["image"] for job in jobs] == [stored, stored]
    assert jobs[0]["inputs"] == jobs[1]["inputs"]  # the same object generation, stored once
    assert jobs[0]["inputs"][0]["uri"] == stored and jobs[0]["inputs"][0]["sha256"] == digest
    assert "base64" not in json.dumps(to_json(jobs[0]))
    bucket = storage.Client(project=settings.project).bucket(settings.inputs)
    assert bucket.blob(f"keys/default/inline/{digest}").download_as_bytes() == data


def test_a_data_url_that_is_not_an_image_is_refused_and_not_stored(client, auth, settings):
    errors = refused(submit(client, auth, conditions=[{"image": media_samples.data_url(b"hi")}]))
    assert "not an image or video" in errors["$.conditions[0].image"]
    bucket = storage.Client(project=settings.project).bucket(settings.inputs)
    assert not list(bucket.list_blobs(prefix="keys/default/inline/8f434346"))


def test_a_replay_with_the_same_idempotency_key_is_the_same_job(client, auth, settings):
    conditions = [{"image": media_samples.data_url(media_samples.png(color=(5, 6, 7)))}]
    headers = {**auth, "Idempotency-Key": "keyframes-1"}
    first = submit(client, headers, conditions=conditions)
    again = submit(client, headers, conditions=conditions)
    assert first.status_code == 202 and again.status_code == 202
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.get_json()["job_id"] == first.get_json()["job_id"]


def test_predict_takes_no_conditions(client, auth, settings):
    blob = put(settings, "keys/default/uploads/p.png", media_samples.png())
    response = client.post(
        "/predict", json={"prompt": "x", "conditions": [{"image": uri(blob)}]}, headers=auth
    )
    assert "use POST /v1/jobs" in refused(response)["$.conditions"]


def test_a_retry_checks_its_inputs_again(client, auth, settings, service):
    blob = put(settings, "keys/default/uploads/gone-later.png", media_samples.png())
    job_id = submit(client, auth, conditions=[{"image": uri(blob)}]).get_json()["job_id"]
    settle(service, job_id, state="failed").join()
    blob.delete()
    errors = refused(client.post(f"/v1/jobs/{job_id}/retry", headers=auth))
    assert errors["$.conditions[0].image"].endswith("does not exist")
    put(settings, "keys/default/uploads/gone-later.png", media_samples.png())
    retried = client.post(f"/v1/jobs/{job_id}/retry", headers=auth)
    assert retried.status_code == 202, retried.get_data(as_text=True)
    assert retried.get_json()["parent_job_id"] == job_id
    assert retried.get_json()["inputs"][0]["generation"] != blob.generation


# --- extend -----------------------------------------------------------------------------


def finished_job(client, auth, settings, service, frames: int = 17) -> tuple[str, bytes]:
    """A succeeded job of the key with a real video in the outputs bucket."""
    job_id = submit(client, auth).get_json()["job_id"]
    video = media_samples.video(frames=frames)
    put(settings, f"jobs/{job_id}/video.mp4", video, bucket=settings.outputs)
    settle(service, job_id).join()
    return job_id, video


def test_extend_continues_the_last_frames_of_a_succeeded_job(client, auth, settings, service):
    parent, video = finished_job(client, auth, settings, service, frames=17)
    response = submit(client, auth, num_frames=33, extend={"job_id": parent, "frames": 9})
    assert response.status_code == 202, response.get_data(as_text=True)
    job = stored_job(service, response.get_json()["job_id"])
    assert job["parent_job_id"] == parent
    blob = (
        storage.Client(project=settings.project)
        .bucket(settings.outputs)
        .get_blob(f"jobs/{parent}/video.mp4")
    )
    assert job["inputs"] == [
        expected(blob, video, "extend", "video", "video/mp4", 17, {"start": 8, "count": 9}, 0)
    ]


def test_extend_refusals(client, auth, settings, service):
    parent, _ = finished_job(client, auth, settings, service, frames=17)
    other = {"X-API-Key": OTHER_KEY}
    errors = refused(submit(client, other, extend={"job_id": parent}))
    assert errors["$.extend.job_id"] == f"no succeeded job {parent} of this API key"
    queued = submit(client, auth).get_json()["job_id"]
    assert (
        "no succeeded job"
        in refused(submit(client, auth, extend={"job_id": queued}))["$.extend.job_id"]
    )
    too_many = refused(submit(client, auth, num_frames=41, extend={"job_id": parent, "frames": 25}))
    assert too_many["$.extend.frames"] == f"must be at most job {parent}'s 17 frames, got 25"
    storage.Client(project=settings.project).bucket(settings.outputs).blob(
        f"jobs/{parent}/video.mp4"
    ).delete()
    gone = refused(submit(client, auth, extend={"job_id": parent}))
    assert "does not exist" in gone["$.extend.job_id"]


# --- concurrency and fuzz ------------------------------------------------------------------


def test_inspections_beyond_the_bound_wait_briefly_then_get_a_503(env, monkeypatch, settings, auth):
    monkeypatch.setenv("LTXV_MAX_INSPECTIONS", "1")
    monkeypatch.setenv("LTXV_INSPECTION_WAIT_SECONDS", "0.5")
    api = compose_submit.api(Settings.from_env())
    app = flask.Flask("api")
    app.add_url_rule("/<path:path>", "all", lambda path: api(flask.request), methods=["POST"])
    client = app.test_client()
    blob = put(settings, "keys/default/uploads/slot.png", media_samples.png())
    slots = api.intake.inputs.slots._slots
    assert slots.acquire(timeout=1)  # another request's inspection holds the only slot
    busy = submit(client, auth, conditions=[{"image": uri(blob)}])
    assert busy.status_code == 503, busy.get_data(as_text=True)
    assert busy.headers["Retry-After"] == "5"
    assert busy.get_json()["error"]["retryable"] is True
    # Freed while a request waits for it: that request goes through.
    threading.Timer(0.1, slots.release).start()
    assert submit(client, auth, conditions=[{"image": uri(blob)}]).status_code == 202


@hsettings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    st.lists(
        st.fixed_dictionaries(
            {},
            optional={
                "image": st.sampled_from(
                    [
                        "gs://ltxv-inputs/keys/default/uploads/fuzz.png",
                        "data:image/png;base64,iVBORw0KGgo=",
                        "gs://x/y",
                        "data:,",
                    ]
                ),
                "video": st.sampled_from(["gs://ltxv-inputs/keys/default/uploads/fuzz.png"]),
                "frame_index": st.integers(-40, 40),
                "strength": st.floats(-1, 2, allow_nan=False),
            },
        ),
        max_size=5,
    ),
    st.one_of(
        st.none(),
        st.fixed_dictionaries(
            {"job_id": st.sampled_from(["a" * 26, "x"])}, optional={"frames": st.integers(0, 40)}
        ),
    ),
)
def test_fuzz_conditions_over_http_never_5xx(client, auth, settings, conditions, extend):
    put(settings, "keys/default/uploads/fuzz.png", media_samples.png())
    response = submit(client, auth, conditions=conditions, extend=extend)
    assert response.status_code in (202, 422), response.get_data(as_text=True)
    if response.status_code == 422:
        assert all(d["path"].startswith("$") for d in response.get_json()["error"]["details"])
