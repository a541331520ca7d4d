"""custom_time on the inputs intake pins (input_retention), against fake-gcs-server.

What fake-gcs does (checked here, so a change in it shows): it keeps custom_time on a
create and on a metadata patch, but a patch gives the object a new generation (Cloud
Storage keeps it and bumps the metageneration) and ignores ifGenerationMatch. Intake
renews before it pins, so the generation a job pins is readable either way."""

from __future__ import annotations

import logging
from datetime import timedelta

import pytest
from google.api_core import exceptions as gexc
from google.cloud import storage

from ltxv.intake.input_retention import TOUCH_AFTER, now_stamp
from tests import media_samples

from .conftest import prompt_files, settle

pytestmark = pytest.mark.emulators


def put(settings, name: str, data: bytes, custom_time=None, bucket=None) -> storage.Blob:
    blob = storage.Client(project=settings.project).bucket(bucket or settings.inputs).blob(name)
    blob.custom_time = custom_time
    blob.upload_from_string(data)
    blob.reload()
    return blob


def current(settings, name: str) -> storage.Blob:
    return storage.Client(project=settings.project).bucket(settings.inputs).get_blob(name)


def submit(client, auth, **fields):
    return client.post("/v1/jobs", json={"prompt": "x", "num_frames": 17, **fields}, headers=auth)


def pinned(service, response) -> dict:
    assert response.status_code == 202, response.get_data(as_text=True)
    return service.store.get(response.get_json()["job_id"])["inputs"][0]


def assert_fresh(blob: storage.Blob) -> None:
    assert blob.custom_time is not None
    assert abs(now_stamp() - blob.custom_time) < timedelta(minutes=1)


def test_an_inline_copy_is_stamped_when_stored(client, auth, settings, service):
    data = media_samples.png(color=(4, 5, 6))
    entry = pinned(
        service, submit(client, auth, conditions=[{"image": media_samples.data_url(data)}])
    )
    stored = current(settings, entry["uri"].split("/", 3)[3])
    assert_fresh(stored)
    assert stored.generation == entry["generation"]


@pytest.mark.parametrize("stamp", [None, now_stamp() - TOUCH_AFTER - timedelta(hours=1)])
def test_an_unstamped_or_stale_upload_is_renewed_then_pinned(
    client, auth, settings, service, stamp
):
    name = f"keys/default/uploads/stale-{stamp is None}.png"
    put(settings, name, media_samples.png(), custom_time=stamp)
    entry = pinned(
        service, submit(client, auth, conditions=[{"image": f"gs://{settings.inputs}/{name}"}])
    )
    after = current(settings, name)
    assert_fresh(after)
    # The pinned generation is the object as it is now (fake-gcs re-generates on patch).
    assert entry["generation"] == after.generation


def test_a_fresh_stamp_is_left_alone(client, auth, settings, service):
    stamp = now_stamp() - TOUCH_AFTER + timedelta(hours=1)
    blob = put(settings, "keys/default/uploads/fresh.png", media_samples.png(), custom_time=stamp)
    entry = pinned(
        service,
        submit(client, auth, conditions=[{"image": f"gs://{blob.bucket.name}/{blob.name}"}]),
    )
    after = current(settings, blob.name)
    assert (after.custom_time, after.generation, entry["generation"]) == (
        stamp,
        blob.generation,
        blob.generation,
    )


def test_a_stored_inline_copy_pinned_again_is_renewed(client, auth, settings, service):
    data = media_samples.png(color=(7, 7, 7))
    url = media_samples.data_url(data)
    name = pinned(service, submit(client, auth, conditions=[{"image": url}]))["uri"].split("/", 3)[
        3
    ]
    old = now_stamp() - timedelta(days=3)
    put(settings, name, data, custom_time=old)  # as if stored three days ago
    entry = pinned(service, submit(client, auth, conditions=[{"image": url}]))
    after = current(settings, name)
    assert_fresh(after)
    assert entry["generation"] == after.generation


def test_a_retry_renews_what_it_pins(client, auth, settings, service):
    name = "keys/default/uploads/retry.png"
    put(settings, name, media_samples.png(), custom_time=now_stamp())
    job_id = submit(
        client, auth, conditions=[{"image": f"gs://{settings.inputs}/{name}"}]
    ).get_json()["job_id"]
    settle(service, job_id, state="failed").join()
    put(settings, name, media_samples.png(), custom_time=now_stamp() - timedelta(days=3))
    retried = client.post(f"/v1/jobs/{job_id}/retry", headers=auth)
    assert pinned(service, retried)["generation"] == current(settings, name).generation
    assert_fresh(current(settings, name))


def test_a_prompt_file_line_renews_what_it_pins(settings, service):
    import json

    name = "keys/default/uploads/line-old.png"
    put(settings, name, media_samples.png(), custom_time=now_stamp() - timedelta(days=3))
    line = {"prompt": "p", "conditions": [{"image": f"gs://{settings.inputs}/{name}"}]}
    file = put(settings, "incoming/renew.jsonl", json.dumps(line).encode(), bucket=settings.prompts)
    handler = prompt_files(service, settings)
    receipt = handler.handle(file.bucket.name, file.name, str(file.generation), file.size)
    (accepted,) = receipt.accepted
    assert (
        service.store.get(accepted["job_id"])["inputs"][0]["generation"]
        == current(settings, name).generation
    )
    assert_fresh(current(settings, name))


def test_a_renewal_that_fails_is_logged_and_the_request_goes_on(
    client, auth, settings, service, monkeypatch, caplog
):
    # The seam: the deployed API's IAM refusing the patch, which fake-gcs cannot.
    def refused(self, **kwargs):
        raise gexc.Forbidden("storage.objects.update denied")

    monkeypatch.setattr(storage.Blob, "patch", refused)
    blob = put(settings, "keys/default/uploads/no-iam.png", media_samples.png())
    with caplog.at_level(logging.WARNING, logger="ltxv.intake.input_retention"):
        entry = pinned(
            service,
            submit(client, auth, conditions=[{"image": f"gs://{blob.bucket.name}/{blob.name}"}]),
        )
    assert entry["generation"] == blob.generation
    (record,) = [r for r in caplog.records if r.name == "ltxv.intake.input_retention"]
    assert record.levelno == logging.WARNING
    assert record.object == f"gs://{blob.bucket.name}/{blob.name}"
