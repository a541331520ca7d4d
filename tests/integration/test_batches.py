"""Batches of prompt files: the manifest and batch.completed once every job settled.

The prompt-file function runs behind functions-framework as Eventarc would call it; the
notify side (`result_ready`'s parts, as its composition root builds them) runs in-process
so that concurrent settles can be started at one moment from threads. Jobs are settled as
a worker does it (state, then result.json create-only).
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator

import pytest
from functions_framework import create_app
from google.cloud import storage
from standardwebhooks.webhooks import Webhook

from ltxv.client.batch_manifests import wait_for_manifest
from ltxv.client.webhook_receiver import WebhookReceiver
from ltxv.core import schemas
from ltxv.core.batches import BatchStore
from ltxv.core.jobs import batch_id_for_prompt_file, to_json
from ltxv.core.results import build_result, output_prefix, write_result_once
from ltxv.core.webhook_triggers import batch_completed_object
from ltxv.intake.submission import JobOrigin
from ltxv.notify import compose as compose_notify
from ltxv.notify.notifier import RetryLater

from .conftest import SUBMIT_SOURCE, WEBHOOK_SECRETS
from .test_prompt_files import deliver, receipt, upload

pytestmark = pytest.mark.emulators

SECRET = WEBHOOK_SECRETS["default"][0]  # the prompt-file owner's (LTXV_PROMPT_FILE_OWNER)


@pytest.fixture
def prompt_client(env):
    return create_app(
        target="prompt_file", source=SUBMIT_SOURCE, signature_type="cloudevent"
    ).test_client()


@pytest.fixture
def result_ready(settings):
    return compose_notify.result_ready(settings)


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    with WebhookReceiver(SECRET) as running:
        yield running


def drop(prompt_client, settings, name: str, payload: bytes) -> storage.Blob:
    blob = upload(settings, name, payload)
    deliver(prompt_client, blob)
    return blob


def settle(service, job_id: str, state: str = "succeeded") -> None:
    """As a worker ends a job: the state (with outputs), then result.json, create-only."""

    def change(job, now):
        changes = {"state": state, f"state_times.{state}": now, "lease": None}
        if state == "succeeded":
            prefix = f"gs://{service.settings.outputs}/{output_prefix(job_id)}"
            changes["outputs"] = {"video": prefix + "video.mp4", "poster": prefix + "poster.jpg"}
        else:
            changes["error"] = {"code": "boom", "message": "it broke", "retryable": False}
        return changes

    job = service.store.transact(job_id, change)
    assert write_result_once(service.storage, service.settings.outputs, build_result(job))


def notify(result_ready, settings, job_id: str, tries: int = 5) -> str:
    """The trigger for the job's result.json, redelivered (at once) while it asks to."""
    name = output_prefix(job_id) + "result.json"
    for _ in range(tries):
        try:
            return result_ready.on_object(settings.outputs, name, None)
        except RetryLater:
            continue
    raise AssertionError(f"{job_id}: still asking for a retry after {tries} tries")


def manifest(settings, name: str) -> tuple[storage.Blob, list[dict]]:
    bucket = storage.Client(project=settings.project).bucket(settings.prompts)
    blob = bucket.get_blob(name)
    assert blob is not None, f"no {name}"
    rows = [json.loads(line) for line in blob.download_as_text().splitlines()]
    validator = schemas.validator("batch-manifest")
    for row in rows:
        validator.validate(row)
    return blob, rows


def has_manifest(settings, name: str) -> bool:
    return storage.Client(project=settings.project).bucket(settings.prompts).blob(name).exists()


def test_three_lines_one_rejected_make_one_manifest_with_every_line_once_all_settled(
    prompt_client, settings, service, result_ready
):
    lines = ['{"prompt": "a kite"}', '{"prompt": "x", "height": 100}', '{"prompt": "a boat"}']
    blob = drop(prompt_client, settings, "incoming/three.jsonl", "\n".join(lines).encode())
    accepted = receipt(settings, "receipts/three.jsonl.json")["accepted"]
    first, third = (entry["job_id"] for entry in accepted)
    batch_id = batch_id_for_prompt_file(settings.prompts, "incoming/three.jsonl", blob.generation)
    job = service.store.get(first)
    assert job["batch_id"] == batch_id
    schemas.validator("job").validate(to_json(job))

    settle(service, first)
    assert notify(result_ready, settings, first) == "no_webhook"
    assert notify(result_ready, settings, first) == "no_webhook"  # a repeated trigger
    assert not has_manifest(settings, "results/three.jsonl.jsonl")  # one job still queued
    settle(service, third, "failed")
    notify(result_ready, settings, third)

    stored, (header, *rows) = manifest(settings, "results/three.jsonl.jsonl")
    assert header["generation"] == str(blob.generation) and header["batch_id"] == batch_id
    assert header["summary"] == {
        "lines": 3, "jobs": 2, "succeeded": 1, "failed": 1, "canceled": 0, "rejected": 1
    }  # fmt: skip
    assert header["manifest"] == f"gs://{settings.prompts}/results/three.jsonl.jsonl"
    assert [(r["line"], r["job_id"], r["state"]) for r in rows] == [
        (1, first, "succeeded"),
        (2, None, "rejected"),
        (3, third, "failed"),
    ]
    assert rows[0]["outputs"]["video"].endswith(f"/jobs/{first}/video.mp4")
    assert rows[1]["error"]["details"] == [
        {"path": "$.height", "message": "must be divisible by 32"}
    ]
    assert rows[2]["error"]["code"] == "boom" and rows[2]["outputs"] is None
    notify(result_ready, settings, third)  # a late repeat rewrites nothing
    again = storage.Client(project=settings.project).bucket(settings.prompts)
    assert again.get_blob("results/three.jsonl.jsonl").generation == stored.generation
    assert BatchStore(service.firestore).get(batch_id)["state"] == "completed"


def test_eight_jobs_settling_at_once_make_one_manifest_and_one_signed_batch_event(
    prompt_client, settings, service, result_ready, receiver, caplog
):
    body = {"jobs": [{"prompt": f"shot {n}"} for n in range(8)], "webhook_url": receiver.url}
    blob = drop(prompt_client, settings, "incoming/eight.json", json.dumps(body).encode())
    job_ids = [
        entry["job_id"] for entry in receipt(settings, "receipts/eight.json.json")["accepted"]
    ]
    assert len(job_ids) == 8
    for job_id in job_ids:
        settle(service, job_id, "canceled" if job_id == job_ids[3] else "succeeded")

    start, asked_again = threading.Barrier(8), []

    def trigger(job_id: str) -> None:
        start.wait()
        try:
            result_ready.on_object(settings.outputs, output_prefix(job_id) + "result.json", None)
        except RetryLater as later:  # another trigger holds the event's send
            asked_again.append(later)

    caplog.set_level(logging.INFO, logger="ltxv.notify.batches")
    threads = [threading.Thread(target=trigger, args=(job_id,)) for job_id in job_ids]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    for later in asked_again:  # the trigger comes back for those: nothing more is sent
        notify(result_ready, settings, later.job_id if later.job_id in job_ids else job_ids[0])

    completed = [r for r in caplog.records if r.getMessage() == "batch completed"]
    assert len(completed) == 1  # one manifest write won; every other completer found it
    _, (header, *rows) = manifest(settings, "results/eight.json.jsonl")
    assert [row["line"] for row in rows] == list(range(1, 9))
    assert header["summary"]["succeeded"] == 7 and header["summary"]["canceled"] == 1

    (delivery,) = receiver.deliveries
    assert Webhook(SECRET).verify(delivery.body, delivery.headers) == delivery.event
    schemas.validator("webhook-event").validate(delivery.event)
    batch_id = batch_id_for_prompt_file(settings.prompts, "incoming/eight.json", blob.generation)
    assert delivery.webhook_id == f"evt_batch_{batch_id}"
    assert delivery.event["type"] == "batch.completed"
    assert delivery.event["data"] == header  # the manifest's header line
    assert delivery.event["timestamp"] == header["completed_at"]
    record = BatchStore(service.firestore).get(batch_id)["webhook"]
    assert record["state"] == "delivered" and [a["status_code"] for a in record["attempts"]] == [
        200
    ]


def test_a_batch_event_the_receiver_refuses_at_first_is_retried_on_the_trigger(
    prompt_client, settings, service, result_ready, receiver
):
    receiver.respond = lambda n, _d: 503 if n == 1 else 200
    body = {"jobs": [{"prompt": "one"}], "webhook_url": receiver.url}
    drop(prompt_client, settings, "incoming/retry.json", json.dumps(body).encode())
    (entry,) = receipt(settings, "receipts/retry.json.json")["accepted"]
    settle(service, entry["job_id"])
    name = output_prefix(entry["job_id"]) + "result.json"
    with pytest.raises(RetryLater, match="did not take"):
        result_ready.on_object(settings.outputs, name, None)
    # Due now rather than after the 30 s backoff; the record itself says when it is due.
    service.firestore.collection("batches").document(_batch_of(service, entry)).update(
        {"webhook.next_attempt_at": None}
    )
    assert result_ready.on_object(settings.outputs, name, None) == "no_webhook"
    assert [d.status for d in receiver.deliveries] == [503, 200]
    assert len({d.webhook_id for d in receiver.deliveries}) == 1
    assert len({d.body for d in receiver.deliveries}) == 1  # the same event each time


def _batch_of(service, entry) -> str:
    return service.store.get(entry["job_id"])["batch_id"]


@pytest.mark.parametrize(
    ("body", "code", "says"),
    [
        (
            {"jobs": [{"prompt": "a"}], "webhook_url": "https://169.254.169.254/hook"},
            "invalid_webhook_url",
            "$.webhook_url",
        ),
        (
            {"jobs": [{"prompt": "a"}], "webhook_url": "ftp://example.com/x"},
            "invalid_webhook_url",
            "https",
        ),
        ({"jobs": []}, "invalid_batch", "$.jobs"),
        ({"jobs": "a"}, "invalid_batch", "$.jobs"),
        ({"jobs": [{"prompt": "a"}], "hook": "x"}, "invalid_batch", "$.hook: unknown field"),
    ],
)
def test_a_batch_object_with_a_bad_webhook_or_shape_is_refused_whole(
    prompt_client, settings, service, body, code, says
):
    drop(prompt_client, settings, "incoming/bad.json", json.dumps(body).encode())
    result = receipt(settings, "receipts/bad.json.json")
    assert result["error"]["code"] == code and says in result["error"]["message"]
    assert result["accepted"] == [] and result["rejected"] == []
    assert list(service.firestore.collection("jobs").stream()) == []
    assert list(service.firestore.collection("batches").stream()) == []
    assert not has_manifest(settings, "results/bad.json.jsonl")


def test_a_file_whose_every_line_is_rejected_gets_its_manifest_at_once(
    prompt_client, settings, service
):
    drop(prompt_client, settings, "incoming/none.jsonl", b'{"prompt": ""}\nnot json\n')
    _, (header, *rows) = manifest(settings, "results/none.jsonl.jsonl")
    assert header["summary"]["rejected"] == 2 and header["summary"]["jobs"] == 0
    assert [(r["line"], r["state"]) for r in rows] == [(1, "rejected"), (2, "rejected")]


def test_a_file_whose_every_line_is_rejected_still_gets_its_signed_batch_event(
    prompt_client, settings, service, result_ready, receiver
):
    body = {"jobs": [{"prompt": ""}, {"prompt": "x", "width": 33}], "webhook_url": receiver.url}
    blob = drop(prompt_client, settings, "incoming/nothing.json", json.dumps(body).encode())
    _, (header, *_rows) = manifest(settings, "results/nothing.json.jsonl")
    assert header["summary"]["rejected"] == 2 and header["summary"]["jobs"] == 0
    batch_id = batch_id_for_prompt_file(settings.prompts, "incoming/nothing.json", blob.generation)
    trigger = batch_completed_object(batch_id)
    outputs = storage.Client(project=settings.project).bucket(settings.outputs)
    assert outputs.blob(trigger).exists()  # what asks notify, the signer, for the event

    assert result_ready.on_object(settings.outputs, trigger, None) == "done"
    assert result_ready.on_object(settings.outputs, trigger, None) == "done"  # a redelivery
    (delivery,) = receiver.deliveries
    assert Webhook(SECRET).verify(delivery.body, delivery.headers) == delivery.event
    schemas.validator("webhook-event").validate(delivery.event)
    assert delivery.event["type"] == "batch.completed"
    assert delivery.event["data"] == header
    assert delivery.webhook_id == f"evt_batch_{batch_id}"

    deliver(prompt_client, blob)  # the upload's event again: no second trigger, no event
    assert [d.webhook_id for d in receiver.deliveries] == [f"evt_batch_{batch_id}"]


def test_a_rejected_file_without_a_webhook_writes_no_trigger(prompt_client, settings):
    blob = drop(prompt_client, settings, "incoming/quiet.jsonl", b'{"prompt": ""}\n')
    batch_id = batch_id_for_prompt_file(settings.prompts, "incoming/quiet.jsonl", blob.generation)
    outputs = storage.Client(project=settings.project).bucket(settings.outputs)
    assert not outputs.blob(batch_completed_object(batch_id)).exists()


def test_a_name_dropped_again_is_a_new_batch_and_the_newest_upload_keeps_the_manifest(
    prompt_client, settings, service, result_ready
):
    older = drop(prompt_client, settings, "incoming/again.json", b'{"prompt": "first"}')
    (old_job,) = receipt(settings, "receipts/again.json.json")["accepted"]
    newer = drop(prompt_client, settings, "incoming/again.json", b'{"prompt": "second"}')
    (new_job,) = receipt(settings, "receipts/again.json.json")["accepted"]
    assert _batch_of(service, old_job) != _batch_of(service, new_job)

    settle(service, new_job["job_id"])
    notify(result_ready, settings, new_job["job_id"])
    settle(service, old_job["job_id"])  # the older upload completes last
    notify(result_ready, settings, old_job["job_id"])

    _, (header, row) = manifest(settings, "results/again.json.jsonl")
    assert header["generation"] == str(newer.generation) and row["job_id"] == new_job["job_id"]
    older_batch = BatchStore(service.firestore).get(_batch_of(service, old_job))
    assert older_batch["state"] == "completed"  # complete all the same; its manifest lost
    bucket = storage.Client(project=settings.project).bucket(settings.prompts)
    rows = wait_for_manifest(bucket, "incoming/again.json", str(newer.generation), timeout=5)
    assert rows[0] == header
    with pytest.raises(Exception, match="newer upload"):
        wait_for_manifest(bucket, "incoming/again.json", str(older.generation), timeout=5)


def test_a_job_that_settles_before_its_batch_is_recorded_is_asked_about_again(
    settings, service, result_ready
):
    batch_id = batch_id_for_prompt_file(settings.prompts, "incoming/slow.jsonl", "7")
    request = service.intake.validate({"prompt": "early"}, api_key_id="default")
    origin = JobOrigin(api_key_id="default", source="gs://x/incoming/slow.jsonl", batch_id=batch_id)
    job_id = service.intake.accept(request, job_id="a" * 26, origin=origin).job["job_id"]
    settle(service, job_id)
    with pytest.raises(RetryLater, match="not recorded yet"):
        result_ready.on_object(settings.outputs, output_prefix(job_id) + "result.json", None)
