"""The worker process (`python -m gpu_worker`, tiny-random on the CPU) with jobs that carry
conditioning inputs, written to Firestore as intake records them: the video is made from
them and result.json says which; an input that is gone fails the job at once."""

from __future__ import annotations

import json
import uuid

import pytest
from google.cloud import storage

from ltxv.core import schemas
from ltxv.core.inputs import upload_name
from ltxv.core.jobs import new_job, new_job_id

from ..bodies import SMALL
from . import conditioning_media as media
from . import test_worker
from .test_worker import wait_outputs, wait_state

# The worker-process fixtures test_worker.py defines.
start_worker, tiny_model_dir = test_worker.start_worker, test_worker.tiny_model_dir

pytestmark = pytest.mark.emulators


def stored_image(settings, seed: int, frame_index: int, origin: str) -> dict:
    bucket = media.ensure_bucket(storage.Client(project=settings.project), settings.inputs)
    image = media.picture(120, 80, seed)
    data = media.image_bytes(image)
    blob = media.store(bucket, upload_name("default", uuid.uuid4().hex), data, "image/png")
    return media.entry(
        blob, data, origin=origin, kind="image", content_type="image/png", size=image.size,
        frames=1, start=0, count=1, frame_index=frame_index,
    )  # fmt: skip


def submit_job(service, inputs: list[dict], parent: str | None = None, **change) -> dict:
    request = {**service.intake.validate(SMALL, api_key_id="default"), **change}
    job = new_job(
        job_id=new_job_id(), request=request, request_hash="x", api_key_id="default",
        parent_job_id=parent,
    )  # fmt: skip
    job["inputs"] = inputs
    service.store.create(job)
    service.dispatcher.publish([job])
    return job


def result_of(settings, job_id: str, count: int) -> dict:
    result = json.loads(wait_outputs(settings, job_id, count)["result.json"].download_as_bytes())
    schemas.validator("result").validate(result)
    return result


def test_a_keyframed_job_succeeds_and_its_result_records_the_inputs(
    service, settings, start_worker
):
    last = SMALL["num_frames"] - 1
    inputs = [
        stored_image(settings, 1, 0, "conditions[0]"),
        stored_image(settings, 2, last, "conditions[1]"),
    ]
    parent = new_job_id()  # the job an extend would continue (any id: the worker only records it)
    job = submit_job(service, inputs, parent=parent)
    start_worker()
    settled = wait_state(service, job["job_id"], {"succeeded", "failed"})
    assert settled["state"] == "succeeded", settled.get("error")
    result = result_of(settings, job["job_id"], 3)
    assert result["inputs"] == inputs  # URI, generation, bytes, sha256, frames, index, strength
    assert result["parent_job_id"] == parent


def test_a_job_whose_input_is_gone_fails_with_input_unavailable(service, settings, start_worker):
    entry = stored_image(settings, 3, 0, "conditions[0]")
    bucket = storage.Client(project=settings.project).bucket(settings.inputs)
    bucket.blob(entry["uri"].split("/", 3)[3]).delete()
    job = submit_job(service, [entry])
    start_worker()
    settled = wait_state(service, job["job_id"], {"failed", "succeeded"})
    assert settled["state"] == "failed" and settled["attempts"] == 1
    error = settled["error"]
    assert error["code"] == "input_unavailable" and error["retryable"] is False
    assert "conditions[0]" in error["message"] and "no longer exists" in error["message"]
    result = result_of(settings, job["job_id"], 1)
    assert result["error"]["code"] == "input_unavailable"
    assert result["inputs"] == [entry] and result["parent_job_id"] is None


def test_a_condition_the_pipeline_refuses_fails_at_once(service, settings, start_worker):
    """Intake never lets it through (frame_index past the end); a job written by other means
    must still end on its first attempt, not loop through retries to a dead letter."""
    entry = stored_image(settings, 4, 0, "conditions[0]")
    job = submit_job(service, [{**entry, "frame_index": 16}])  # num_frames is 9
    start_worker()
    settled = wait_state(service, job["job_id"], {"failed", "succeeded"})
    assert settled["state"] == "failed" and settled["attempts"] == 1
    assert settled["error"]["code"] == "invalid_request"
    assert settled["error"]["message"] == (
        "conditions[0]: frame_index 16 is outside the video (frames 0 to 8)"
    )
