"""Image-to-video, keyframes, video-to-video and extend, end to end on the local stack:
the API function, the worker on tiny-random on the CPU, result_ready and the bridge, over
real HTTP, with media uploaded through POST /v1/uploads and its signed PUT to fake-gcs.

Each job must succeed, and its result.json must name exactly the inputs it was made
from (the uploaded object, its bytes' sha256, the frames used, where they were pinned).
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from google.cloud import storage
from PIL import Image

from ltxv.client import Client
from ltxv.core import schemas
from ltxv.core.media import probe
from ltxv.local.stack import LocalStack

from .conftest import running_stack, user_env

pytestmark = [pytest.mark.emulators, pytest.mark.timeout(300)]

COMPONENTS = ["api", "result_ready", "worker", "bridge"]
SMALL = {"width": 96, "height": 64, "num_inference_steps": 2}


@pytest.fixture(scope="module")
def stack(emulators) -> Iterator[LocalStack]:
    with running_stack(emulators, COMPONENTS) as running:
        yield running


@pytest.fixture
def client(stack, clean_firestore) -> Client:
    return Client(stack.api_url, stack.api_key)


def png(colour: tuple[int, int, int], size: tuple[int, int] = (120, 80)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, colour).save(out, format="PNG")
    return out.getvalue()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def result_json(stack: LocalStack, job_id: str, timeout: float = 30.0) -> dict:
    """The job's result.json; the worker writes it just after it marks the job succeeded."""
    blob = (
        storage.Client(project=stack.project)
        .bucket(stack.settings.outputs)
        .blob(f"jobs/{job_id}/result.json")
    )
    deadline = time.monotonic() + timeout
    while not blob.exists():
        assert time.monotonic() < deadline, f"no result.json for job {job_id} in {timeout}s"
        time.sleep(0.2)
    result = json.loads(blob.download_as_bytes())
    schemas.validator("result").validate(result)
    return result


def rendered(client: Client, job: dict) -> dict:
    job = client.wait(job["job_id"], timeout=240)
    assert job["state"] == "succeeded", job.get("error")
    return job


def test_an_image_conditioned_job_names_its_upload_in_result_json(stack, client):
    image = png((200, 40, 40))
    uri = client.upload(image)
    assert uri.startswith(f"gs://{stack.settings.inputs}/keys/")
    job = rendered(client, client.submit("a red room", conditions=[{"image": uri}], **SMALL))
    assert [c["image"] for c in job["request"]["conditions"]] == [uri]
    (used,) = result_json(stack, job["job_id"])["inputs"]
    assert used["from"] == "conditions[0]" and used["kind"] == "image"
    assert (used["uri"], used["sha256"], used["bytes"]) == (uri, sha256(image), len(image))
    assert (used["content_type"], used["width"], used["height"]) == ("image/png", 120, 80)
    assert (used["frame_index"], used["strength"], used["select"]) == (
        0,
        1.0,
        {"start": 0, "count": 1},
    )


def test_an_inline_data_url_image_is_kept_in_the_keys_inputs(stack, client):
    image = png((10, 200, 10), (64, 64))
    data_url = "data:image/png;base64," + base64.b64encode(image).decode()
    job = rendered(client, client.submit("green", conditions=[{"image": data_url}], **SMALL))
    (used,) = result_json(stack, job["job_id"])["inputs"]
    assert used["sha256"] == sha256(image)
    assert used["uri"].startswith(f"gs://{stack.settings.inputs}/keys/")
    assert used["uri"].endswith(f"/inline/{sha256(image)}")


def test_first_and_last_keyframes_through_the_cli(stack, clean_firestore, tmp_path):
    first, last = tmp_path / "first.png", tmp_path / "last.png"
    first.write_bytes(png((250, 250, 250)))
    last.write_bytes(png((5, 5, 5)))
    out = tmp_path / "keyframes.mp4"
    run = ltxv(
        stack,
        *("submit", "day turns to night", "--num-frames", "17", "--width", "96"),
        *("--height", "64", "--num-inference-steps", "2"),
        *("--image", str(first), "--image-at", "0", "--image", str(last), "--image-at", "-1"),
        *("--wait", "--out", str(out)),
    )
    assert run.returncode == 0, run.stderr
    assert "Traceback" not in run.stderr
    job_id = run.stdout.strip()
    assert probe(out).num_frames == 17
    inputs = result_json(stack, job_id)["inputs"]
    assert [(i["from"], i["frame_index"], i["sha256"]) for i in inputs] == [
        ("conditions[0]", 0, sha256(first.read_bytes())),
        ("conditions[1]", 16, sha256(last.read_bytes())),  # -1: the last of 17 frames
    ]


def test_a_video_conditioned_job_and_an_extend_name_their_frames(stack, client, tmp_path):
    source = rendered(client, client.submit("waves", num_frames=17, seed=5, **SMALL))
    video = client.download(source, tmp_path / "source.mp4").read_bytes()
    uri = client.upload(video)  # sniffed: video/mp4

    conditioned = client.submit(
        "waves, later", num_frames=17, conditions=[{"video": uri, "strength": 0.8}], **SMALL
    )
    conditioned = rendered(client, conditioned)
    (used,) = result_json(stack, conditioned["job_id"])["inputs"]
    assert (used["kind"], used["uri"], used["sha256"]) == ("video", uri, sha256(video))
    assert (used["content_type"], used["frames"], used["strength"]) == ("video/mp4", 17, 0.8)
    assert used["select"] == {"start": 0, "count": 17}

    extended = rendered(client, client.extend(source["job_id"], frames=9))
    assert extended["parent_job_id"] == source["job_id"]
    assert extended["request"]["extend"] == {"job_id": source["job_id"], "frames": 9}
    # Extend takes over the earlier job's look and length.
    for field in ("prompt", "width", "height", "num_frames", "num_inference_steps"):
        assert extended["request"][field] == source["request"][field]
    result = result_json(stack, extended["job_id"])
    assert result["parent_job_id"] == source["job_id"]
    (used,) = result["inputs"]
    assert (used["from"], used["kind"], used["frame_index"]) == ("extend", "video", 0)
    assert used["select"] == {"start": 8, "count": 9}  # the last 9 of its 17 frames


def test_ltxv_extend_continues_with_a_new_prompt(stack, client):
    source = rendered(client, client.submit("a boat", **SMALL))  # 9 frames
    run = ltxv(stack, "extend", source["job_id"], "--prompt", "the boat sails", "--wait")
    assert run.returncode == 0, run.stderr
    job = client.get(run.stdout.strip())
    assert job["request"]["prompt"] == "the boat sails" and job["state"] == "succeeded"
    # Its 9 frames, continued: the new job must be longer, so 9 + 8.
    assert job["request"]["num_frames"] == 17
    assert f"extending job {source['job_id']} as job {job['job_id']}" in run.stderr


def test_ltxv_download_extended_saves_the_whole_video(stack, client, tmp_path):
    source = rendered(client, client.submit("a kite", num_frames=17, **SMALL))
    more = rendered(client, client.extend(source["job_id"], frames=9))  # 17 frames too
    assert more["extended_url"] and "extended_url" not in source
    out = tmp_path / "whole.mp4"
    run = ltxv(stack, "download", more["job_id"], "--extended", "--out", str(out))
    assert run.returncode == 0, run.stderr
    assert probe(out).num_frames == 8 + 17  # the earlier 8 before the seam
    assert result_json(stack, more["job_id"])["extended"]["num_frames"] == 25
    plain = ltxv(stack, "download", source["job_id"], "--extended", "--out", str(tmp_path))
    assert plain.returncode != 0
    assert f"job {source['job_id']} has no extended video: it did not extend one" in plain.stderr


def ltxv(stack: LocalStack, *args: str) -> subprocess.CompletedProcess[str]:
    env = user_env(LTXV_STATE_DIR=str(stack.state_dir), PYTHONUNBUFFERED="1")
    return subprocess.run(
        [sys.executable, "-m", "ltxv.cli", *args],
        env=env,
        cwd=Path(__file__).parent,
        capture_output=True,
        text=True,
        timeout=280,
    )
