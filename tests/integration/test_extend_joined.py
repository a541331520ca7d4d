"""Extend makes one longer video (issue 17, item 3): the worker process (tiny-random on the
CPU) writes `extended.mp4` beside an extend's video, the earlier video's frames before the
ones it continued and then its own; extending that job continues the joined video; the API
signs a URL for exactly the generation written. Jobs go in through the real submit API,
whose inspection reads the real videos the worker wrote to fake GCS."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import requests
from google.cloud import storage

from ltxv.core import schemas
from tests import media_samples

from . import test_worker
from .conftest import settle
from .test_conditions_intake import put, refused
from .test_worker import decoded_frames, outputs, submit, wait_state

# The worker-process fixtures test_worker.py defines.
start_worker, tiny_model_dir = test_worker.start_worker, test_worker.tiny_model_dir

pytestmark = pytest.mark.emulators

BODY = {"prompt": "a paper boat on a pond", "num_frames": 17, "height": 64, "width": 96}


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def assert_same_frames(got: np.ndarray, expected: np.ndarray) -> None:
    """Equal within what one or two more H.264 passes (CRF 20) cost: frame by frame, at
    least 25 dB PSNR (measured: 28 to 35 dB; tiny-random's frames are noise, which codes
    worst) and closer to its own counterpart than to any other frame of `expected` (other
    frames of these noise videos measure 18 to 21 dB)."""
    assert got.shape == expected.shape, (got.shape, expected.shape)
    for i, frame in enumerate(got):
        scores = [psnr(frame, other) for other in expected]
        assert scores[i] >= 25, (i, scores[i])
        assert scores[i] == max(scores), (i, scores)


def fetch(blob: storage.Blob, path: Path) -> np.ndarray:
    blob.download_to_filename(path)
    return decoded_frames(path)


def rendered(service, job_id: str) -> dict:
    job = wait_state(service, job_id, {"succeeded", "failed"})
    assert job["state"] == "succeeded", job.get("error")
    return job


def result_json(settings, job_id: str) -> dict:
    result = json.loads(outputs(settings, job_id)["result.json"].download_as_bytes())
    schemas.validator("result").validate(result)
    return result


def test_an_extend_writes_one_longer_video_and_its_extend_grows_it(
    client, auth, service, settings, start_worker, tmp_path
):
    start_worker()
    first = submit(client, auth, BODY)
    rendered(service, first)
    # Not an extend: no joined video, no URL for one, nothing about one in result.json.
    assert "extended.mp4" not in outputs(settings, first)
    assert "extended" not in service.store.get(first)["outputs"]
    assert "extended_url" not in client.get(f"/v1/jobs/{first}", headers=auth).get_json()
    assert "extended" not in result_json(settings, first)
    first_video = fetch(outputs(settings, first)["video.mp4"], tmp_path / "first.mp4")

    second = submit(client, auth, {**BODY, "extend": {"job_id": first, "frames": 9}})
    job = rendered(service, second)
    assert job["inputs"][0]["uri"].endswith(f"jobs/{first}/video.mp4")  # no joined video yet
    assert job["inputs"][0]["select"] == {"start": 8, "count": 9}
    files = outputs(settings, second)
    joined = files["extended.mp4"]
    assert job["outputs"]["extended"] == f"gs://{settings.outputs}/jobs/{second}/extended.mp4"
    assert job["outputs"]["extended_generation"] == str(joined.generation)
    assert joined.metadata == {"ltxv-job-id": second} and joined.content_type == "video/mp4"
    whole = fetch(joined, tmp_path / "second-extended.mp4")
    own = fetch(files["video.mp4"], tmp_path / "second.mp4")
    assert len(whole) == 8 + 17  # select.start + num_frames
    assert_same_frames(whole[:8], first_video[:8])  # the earlier frames before the seam
    assert_same_frames(whole[8:], own)  # then every frame of its own render
    facts = result_json(settings, second)["extended"]
    assert (facts["num_frames"], facts["width"], facts["height"]) == (25, 96, 64)
    assert facts["bytes"] == joined.size and facts["fps"] == job["request"]["fps"]

    # The view signs that generation: the URL serves it, and never what comes later (below).
    url = client.get(f"/v1/jobs/{second}", headers=auth).get_json()["extended_url"]
    assert requests.get(url, timeout=10).content == joined.download_as_bytes()

    # Extending the extension continues its joined video: one video keeps growing.
    third = submit(client, auth, {**BODY, "extend": {"job_id": second, "frames": 9}})
    job = rendered(service, third)
    (used,) = job["inputs"]
    assert used["uri"] == f"gs://{settings.outputs}/jobs/{second}/extended.mp4"
    assert used["generation"] == joined.generation
    assert (used["frames"], used["select"]) == (25, {"start": 16, "count": 9})
    files = outputs(settings, third)
    longer = fetch(files["extended.mp4"], tmp_path / "third-extended.mp4")
    assert len(longer) == 16 + 17
    assert_same_frames(longer[:16], whole[:16])
    assert_same_frames(longer[16:], fetch(files["video.mp4"], tmp_path / "third.mp4"))

    joined.upload_from_string(b"written over by someone", content_type="video/mp4")
    url = client.get(f"/v1/jobs/{second}", headers=auth).get_json()["extended_url"]
    assert requests.get(url, timeout=10).status_code == 404  # never the newer object


def test_an_earlier_video_of_another_size_is_center_cropped_into_the_joined_one(
    client, auth, service, settings, start_worker, tmp_path
):
    start_worker()
    first = submit(client, auth, BODY)  # 96 x 64
    rendered(service, first)
    square = {**BODY, "width": 64, "extend": {"job_id": first, "frames": 9}}
    second = submit(client, auth, square)
    rendered(service, second)
    first_video = fetch(outputs(settings, first)["video.mp4"], tmp_path / "first.mp4")
    whole = fetch(outputs(settings, second)["extended.mp4"], tmp_path / "joined.mp4")
    assert whole.shape == (8 + 17, 64, 64, 3)
    # The centered 64 x 64 of each 96 x 64 frame: same height, so no resize.
    assert_same_frames(whole[:8], first_video[:8, :, 16:80])


# --- intake: which video an extend continues --------------------------------------------


def extended_job(client, auth, settings, service, frames: int) -> tuple[str, storage.Blob]:
    """A succeeded job of the key that an extend made: its video and a joined video."""
    job_id = client.post("/v1/jobs", json=BODY, headers=auth).get_json()["job_id"]
    put(settings, f"jobs/{job_id}/video.mp4", media_samples.video(17), bucket=settings.outputs)
    joined = put(
        settings, f"jobs/{job_id}/extended.mp4", media_samples.video(frames), settings.outputs
    )
    prefix = f"gs://{settings.outputs}/jobs/{job_id}/"
    recorded = {
        "video": prefix + "video.mp4",
        "extended": prefix + "extended.mp4",
        "extended_generation": str(joined.generation),
    }
    settle(service, job_id, outputs=recorded).join()
    return job_id, joined


def test_extend_checks_frames_against_the_whole_video(client, auth, settings, service):
    parent, _ = extended_job(client, auth, settings, service, frames=25)
    body = {**BODY, "num_frames": 41, "extend": {"job_id": parent, "frames": 33}}
    errors = refused(client.post("/v1/jobs", json=body, headers=auth))
    assert errors["$.extend.frames"] == (
        f"must be at most job {parent}'s whole (extended) video's 25 frames, got 33"
    )


def test_a_chain_past_the_frames_the_model_reads_back_is_refused(client, auth, settings, service):
    parent, _ = extended_job(client, auth, settings, service, frames=265)  # over 257
    body = {**BODY, "extend": {"job_id": parent, "frames": 9}}
    errors = refused(client.post("/v1/jobs", json=body, headers=auth))
    assert errors["$.extend.job_id"] == (
        f"job {parent}'s whole video (extended.mp4, its chain of extends so far) has more "
        "than 257 frames, the most this model can read back: the chain is too long to "
        "continue; download it and extend a shorter part of it (conditions with a video of "
        "its last frames)"
    )
