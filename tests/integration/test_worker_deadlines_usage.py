"""The GPU worker process (tiny-random on the CPU) with deadlines and usage: a job past its
queue deadline is failed at the claim without a render, a render past max_run_seconds
stops between steps, and settled jobs record the GPU seconds they used and their price."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest

from ltxv.core import schemas
from ltxv.core.deadlines import QUEUE_DEADLINE_EXCEEDED, RUN_DEADLINE_EXCEEDED
from ltxv.core.jobs import to_json, utcnow

from ..bodies import SLOW, SMALL
from .test_worker import (
    start_worker,
    submit,
    tiny_model_dir,
    topic_names,
    wait_outputs,
    wait_state,
)

pytestmark = pytest.mark.emulators
__all__ = ["start_worker", "tiny_model_dir", "topic_names"]  # fixtures, used by name

PRICE = 36.0  # USD per GPU hour: a cent per second, easy to check


def _result(settings, job_id: str) -> dict:
    return json.loads(wait_outputs(settings, job_id, 1)["result.json"].download_as_bytes())


def _cost(seconds: float) -> float:
    return seconds / 3600 * PRICE


def test_a_job_claimed_past_its_queue_deadline_fails_without_rendering(
    client, auth, service, settings, start_worker
):
    job_id = submit(client, auth, {**SMALL, "max_queue_seconds": 10})
    # It waited out its deadline while no worker ran (moved, rather than waited for).
    past = utcnow() - timedelta(seconds=1)
    service.store.transact(job_id, lambda job, now: {"queue_deadline_at": past})
    worker = start_worker()
    job = wait_state(service, job_id, {"failed", "running", "succeeded"})
    assert job["state"] == "failed" and job["attempts"] == 0
    assert job["error"]["code"] == QUEUE_DEADLINE_EXCEEDED
    assert job.get("usage") is None  # never reached the GPU
    result = _result(settings, job_id)
    assert result["error"]["code"] == QUEUE_DEADLINE_EXCEEDED and result["usage"] is None
    assert not [e for e in worker.lines() if e.get("message") == "rendering"]


def test_a_render_past_max_run_seconds_stops_between_steps_and_fails(
    client, auth, service, settings, start_worker
):
    job_id = submit(client, auth, {**SLOW, "max_run_seconds": 10})
    # A 1 s limit (the API's minimum is 10 s, longer than this render takes on a CPU):
    # set on the stored request before any worker reads it, as a clock seam.
    service.store.transact(job_id, lambda job, now: {"request.max_run_seconds": 1})
    start_worker(LTXV_GPU_HOUR_USD=str(PRICE))
    job = wait_state(service, job_id, {"failed", "succeeded"}, timeout=120)
    assert job["state"] == "failed" and job["attempts"] == 1, job
    assert job["error"] == {
        "code": RUN_DEADLINE_EXCEEDED,
        "message": "the render ran past max_run_seconds (1 s) and was stopped between "
        "denoising steps",
        "retryable": False,
    }
    assert job["progress"]["step"] < SLOW["num_inference_steps"]  # stopped early
    files = wait_outputs(settings, job_id, 1)
    assert "video.mp4" not in files
    result = json.loads(files["result.json"].download_as_bytes())
    assert result["error"]["code"] == RUN_DEADLINE_EXCEEDED
    # It held the GPU (and paid the model load, the process's first render) until it stopped.
    usage = job["usage"]
    assert usage["gpu_seconds"] >= 1.0 and usage == result["usage"]
    assert usage["cost_usd"] == pytest.approx(_cost(usage["gpu_seconds"]), abs=1e-5)


def test_a_succeeded_job_records_load_render_and_encode_seconds_at_the_price(
    client, auth, service, settings, start_worker
):
    start_worker(LTXV_GPU_HOUR_USD=str(PRICE))
    first = submit(client, auth, SMALL)
    second = submit(client, auth, SMALL)
    for job_id, pays_load in ((first, True), (second, False)):
        job = wait_state(service, job_id, {"succeeded", "failed"})
        assert job["state"] == "succeeded", job
        timings = job["timings"]
        assert (timings["model_load_seconds"] > 0) is pays_load  # the first render pays it
        used = timings["model_load_seconds"] + timings["generate_seconds"]
        used += timings["encode_seconds"]  # not the upload: the GPU is free by then
        assert job["usage"]["gpu_seconds"] == pytest.approx(used, abs=0.002)
        assert job["usage"]["cost_usd"] == pytest.approx(_cost(used), abs=1e-5)
        assert _result(settings, job_id)["usage"] == job["usage"]
        schemas.validator("job").validate(to_json(job))
    shown = client.get(f"/v1/jobs/{first}", headers=auth).get_json()
    assert shown["usage"] == service.store.get(first)["usage"]


def test_a_job_canceled_while_running_records_the_gpu_time_it_took(
    client, auth, service, settings, start_worker
):
    start_worker(LTXV_GPU_HOUR_USD=str(PRICE))
    job_id = submit(client, auth, SLOW)
    wait_state(service, job_id, {"running"}, progress__step=2)
    assert client.post(f"/v1/jobs/{job_id}/cancel", headers=auth).status_code == 202
    job = wait_state(service, job_id, {"canceled", "succeeded"}, timeout=60)
    assert job["state"] == "canceled"
    usage = job["usage"]
    assert usage["gpu_seconds"] > 0
    assert usage["cost_usd"] == pytest.approx(_cost(usage["gpu_seconds"]), abs=1e-5)
    assert _result(settings, job_id)["usage"] == usage
