"""The GPU worker as a process (`python -m gpu_worker`, tiny-random on the CPU) against the
emulators: jobs come in through the real submit API and leave as mp4s in fake GCS."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import requests
from google.cloud import pubsub_v1, storage

from ltxv.core import schemas

from ..bodies import SLOW, SMALL
from .conftest import ROOT, fresh_topic

pytestmark = pytest.mark.emulators


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    from gpu_worker.generation import Renderer
    from ltxv.core.profiles import all_profiles

    folder = tmp_path_factory.mktemp("models") / "tiny-random"
    Renderer(all_profiles()["tiny-random"], model_dir=folder).load()
    return folder


@pytest.fixture
def topic_names(emulators) -> Iterator[tuple[str, str]]:
    """Jobs topic and worker subscription with short deadlines, so redelivery is quick."""
    with fresh_topic(
        emulators.project,
        ack_deadline_seconds=10,
        retry_policy={"minimum_backoff": {"seconds": 1}, "maximum_backoff": {"seconds": 2}},
        enable_exactly_once_delivery=True,
    ) as names:
        yield names


class WorkerProcess:
    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.log = log
        handle = log.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gpu_worker"],
            env=env,
            cwd=ROOT,
            stdout=handle,
            stderr=subprocess.STDOUT,
        )
        handle.close()

    def lines(self) -> list[dict]:
        out = []
        for line in self.log.read_text().splitlines():
            with contextlib.suppress(ValueError):
                out.append(json.loads(line))
        return out

    def wait_for(self, message: str, timeout: float = 60, **fields) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for entry in self.lines():
                if entry.get("message") == message and all(
                    entry.get(k) == v for k, v in fields.items()
                ):
                    return entry
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"worker exited {self.proc.returncode}:\n{self.log.read_text()}"
                )
            time.sleep(0.1)
        raise AssertionError(f"no {message!r} in {timeout}s:\n{self.log.read_text()[-3000:]}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout)


@pytest.fixture
def start_worker(env, tiny_model_dir, tmp_path) -> Iterator:
    started: list[WorkerProcess] = []

    def start(**overrides: str) -> WorkerProcess:
        worker_env = {
            **os.environ,
            "LTXV_MODEL_DIR": str(tiny_model_dir),
            "LTXV_LEASE_SECONDS": "4",
            "LTXV_ACK_EXTENSION_SECONDS": "6",
            "LTXV_PROGRESS_INTERVAL_SECONDS": "0.3",
            "LTXV_SHUTDOWN_GRACE_SECONDS": "20",
            **overrides,
        }
        worker = WorkerProcess(worker_env, tmp_path / f"worker-{len(started)}.log")
        started.append(worker)
        worker.wait_for("model loaded")
        return worker

    yield start
    for worker in started:
        with contextlib.suppress(subprocess.TimeoutExpired):
            worker.stop(signal.SIGKILL, timeout=10)


def submit(client, auth, body) -> str:
    response = client.post("/v1/jobs", json=body, headers=auth)
    assert response.status_code == 202, response.get_json()
    return response.get_json()["job_id"]


def wait_state(service, job_id: str, states: set[str], timeout: float = 90, **where) -> dict:
    deadline = time.monotonic() + timeout
    job = None
    while time.monotonic() < deadline:
        job = service.store.get(job_id)
        if (
            job
            and job["state"] in states
            and all(_dig(job, key) >= value for key, value in where.items())
        ):
            return job
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} never reached {states} {where}: {job}")


def _dig(job: dict, key: str):
    value = job
    for part in key.split("__"):
        value = (value or {}).get(part)
    return value or 0


def outputs(settings, job_id: str) -> dict[str, storage.Blob]:
    bucket = storage.Client(project=settings.project).bucket(settings.outputs)
    return {
        blob.name.rsplit("/", 1)[-1]: blob for blob in bucket.list_blobs(prefix=f"jobs/{job_id}/")
    }


def wait_outputs(settings, job_id: str, count: int, timeout: float = 30) -> dict[str, storage.Blob]:
    deadline = time.monotonic() + timeout
    while len(found := outputs(settings, job_id)) < count and time.monotonic() < deadline:
        time.sleep(0.2)
    return found


def decoded_digest(path: Path) -> tuple[str, int, int, int, float]:
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        digest = hashlib.sha256()
        frames = 0
        for frame in container.decode(stream):
            digest.update(frame.to_ndarray(format="rgb24").tobytes())
            frames += 1
        return digest.hexdigest(), frames, stream.width, stream.height, float(stream.average_rate)


def decoded_frames(path: Path) -> np.ndarray:
    import av

    with av.open(str(path)) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    return np.stack(frames).astype(np.float32)


def test_a_submitted_job_ends_succeeded_with_video_poster_and_result(
    client, auth, service, settings, start_worker, tmp_path
):
    start_worker()
    job_id = submit(client, auth, {**SMALL, "fps": 12, "metadata": {"order": 7}})
    job = wait_state(service, job_id, {"succeeded", "failed"})
    assert job["state"] == "succeeded", job
    assert job["attempts"] == 1
    assert set(job["timings"]) >= {
        "queue_seconds",
        "model_load_seconds",
        "generate_seconds",
        "encode_seconds",
        "upload_seconds",
    }
    files = wait_outputs(settings, job_id, 3)
    assert set(files) == {"video.mp4", "poster.jpg", "result.json"}
    assert files["video.mp4"].content_type == "video/mp4"
    video = tmp_path / "video.mp4"
    files["video.mp4"].download_to_filename(video)
    _, frames, width, height, fps = decoded_digest(video)
    assert (frames, width, height, fps) == (9, 96, 64, 12.0)
    assert files["poster.jpg"].download_as_bytes()[:3] == b"\xff\xd8\xff"
    result = json.loads(files["result.json"].download_as_bytes())
    schemas.validator("result").validate(result)
    assert result["state"] == "succeeded" and result["metadata"] == {"order": 7}
    assert result["outputs"]["video"] == f"gs://{settings.outputs}/jobs/{job_id}/video.mp4"

    # The API now hands out a signed URL that fetches the video.
    body = client.get(f"/v1/jobs/{job_id}", headers=auth).get_json()
    assert requests.get(body["video_url"], timeout=10).content == video.read_bytes()


def test_the_same_seed_gives_the_same_frames(
    client, auth, service, settings, start_worker, tmp_path
):
    start_worker()
    ids = [submit(client, auth, {**SMALL, "seed": 5}) for _ in range(2)] + [
        submit(client, auth, {**SMALL, "seed": 6})
    ]
    videos = []
    for job_id in ids:
        wait_state(service, job_id, {"succeeded"})
        path = tmp_path / f"{job_id}.mp4"
        outputs(settings, job_id)["video.mp4"].download_to_filename(path)
        videos.append(decoded_frames(path))
    # Not bit for bit: on a busy CPU, BLAS may split a reduction over fewer threads, and
    # float sums in another order differ in the last bits (GPUs do the same). Such noise
    # moves a pixel by a level or two; another seed moves it by tens.
    same = np.abs(videos[0] - videos[1]).mean()
    other = np.abs(videos[0] - videos[2]).mean()
    assert videos[0].shape == videos[1].shape == videos[2].shape
    assert same < 1.0 and other > 10.0, (same, other)


def _destination(settings) -> tuple[str, storage.Blob]:
    name = f"destinations/default/campaign/{uuid.uuid4().hex}.mp4"
    blob = storage.Client(project=settings.project).bucket(settings.outputs).blob(name)
    return f"gs://{settings.outputs}/{name}", blob


def test_gcs_destination_receives_the_video_and_its_url_serves_only_that_write(
    client, auth, service, settings, start_worker
):
    start_worker()
    destination, blob = _destination(settings)
    job_id = submit(client, auth, {**SMALL, "gcs_destination": destination})
    job = wait_state(service, job_id, {"succeeded"})
    assert job["outputs"]["video"] == destination
    blob.reload()
    assert job["outputs"]["video_generation"] == str(blob.generation)
    assert blob.metadata == {"ltxv-job-id": job_id}
    url = client.get(f"/v1/jobs/{job_id}", headers=auth).get_json()["video_url"]
    video = requests.get(url, timeout=10)
    assert video.status_code == 200 and video.content == blob.download_as_bytes()

    # Whoever writes that name later (the key's own bucket, say), this job's URL never
    # serves it: it is signed for the generation the job wrote.
    blob.upload_from_string(b"something else", content_type="video/mp4")
    url = client.get(f"/v1/jobs/{job_id}", headers=auth).get_json()["video_url"]
    assert requests.get(url, timeout=10).status_code == 404


def test_a_destination_that_exists_is_never_overwritten_and_fails_the_job(
    client, auth, service, settings, start_worker
):
    destination, blob = _destination(settings)
    blob.upload_from_string(b"a video someone made earlier", content_type="video/mp4")
    job_id = submit(client, auth, {**SMALL, "gcs_destination": destination})
    start_worker()
    job = wait_state(service, job_id, {"failed", "succeeded"})
    assert job["state"] == "failed" and job["attempts"] == 1
    assert job["error"]["code"] == "destination_exists" and job["error"]["retryable"] is False
    assert destination in job["error"]["message"]
    assert blob.download_as_bytes() == b"a video someone made earlier"
    result = json.loads(wait_outputs(settings, job_id, 1)["result.json"].download_as_bytes())
    assert result["error"]["code"] == "destination_exists"


def test_a_retried_job_replaces_its_own_earlier_upload(
    client, auth, service, settings, start_worker
):
    """An attempt that uploaded and then died leaves the job's own object behind: the next
    attempt may replace that one (labelled with its job id), and only that one."""
    destination, blob = _destination(settings)
    job_id = submit(client, auth, {**SMALL, "gcs_destination": destination})
    blob.metadata = {"ltxv-job-id": job_id}
    blob.upload_from_string(b"half of an earlier attempt", content_type="video/mp4")
    start_worker()
    job = wait_state(service, job_id, {"failed", "succeeded"})
    assert job["state"] == "succeeded", job["error"]
    current = blob.bucket.get_blob(blob.name)
    assert job["outputs"]["video_generation"] == str(current.generation)
    assert current.download_as_bytes()[4:8] == b"ftyp"  # an mp4 now


def test_sigkill_mid_render_is_redelivered_and_completes_once(
    client, auth, service, settings, start_worker
):
    first = start_worker()
    job_id = submit(client, auth, SLOW)
    wait_state(service, job_id, {"running"}, progress__step=2)
    first.stop(signal.SIGKILL)

    second = start_worker()
    job = wait_state(service, job_id, {"succeeded"}, timeout=120)
    assert job["attempts"] == 2
    assert set(wait_outputs(settings, job_id, 3)) == {"video.mp4", "poster.jpg", "result.json"}
    result = json.loads(outputs(settings, job_id)["result.json"].download_as_bytes())
    assert result["attempts"] == 2
    assert second.wait_for("job succeeded", job_id=job_id)


def test_a_duplicated_message_renders_once(client, auth, service, settings, start_worker):
    worker = start_worker()
    job_id = submit(client, auth, SMALL)
    service.dispatcher.publish([service.store.get(job_id)])  # the same job id, a second message
    wait_state(service, job_id, {"succeeded"})
    time.sleep(2)  # let the duplicate arrive and be dismissed
    job = service.store.get(job_id)
    assert job["attempts"] == 1
    renders = [e for e in worker.lines() if e.get("message") == "rendering"]
    assert [e["job_id"] for e in renders] == [job_id]


def test_cancel_during_render_ends_canceled_without_video(
    client, auth, service, settings, start_worker
):
    start_worker()
    job_id = submit(client, auth, SLOW)
    wait_state(service, job_id, {"running"}, progress__step=1)
    response = client.post(f"/v1/jobs/{job_id}/cancel", headers=auth)
    assert response.status_code == 202
    job = wait_state(service, job_id, {"canceled", "succeeded"}, timeout=60)
    assert job["state"] == "canceled"
    files = wait_outputs(settings, job_id, 1)
    assert "video.mp4" not in files
    assert json.loads(files["result.json"].download_as_bytes())["state"] == "canceled"


def test_sigterm_mid_render_requeues_for_another_worker(
    client, auth, service, settings, start_worker
):
    first = start_worker(LTXV_SHUTDOWN_GRACE_SECONDS="0.5")
    job_id = submit(client, auth, SLOW)
    wait_state(service, job_id, {"running"}, progress__step=1)
    assert first.stop(signal.SIGTERM) == 0
    job = service.store.get(job_id)
    assert job["state"] == "queued" and job["attempts"] == 1
    assert job["error"]["code"] == "worker_shutdown"

    start_worker()
    job = wait_state(service, job_id, {"succeeded"}, timeout=120)
    assert job["attempts"] == 2 and job["error"] is None


def test_a_poison_message_does_not_stop_the_worker(client, auth, service, settings, start_worker):
    worker = start_worker()
    publisher = pubsub_v1.PublisherClient()
    publisher.publish(settings.topic_path, b"not json").result()
    publisher.publish(settings.topic_path, json.dumps({"job_id": "nosuchjob"}).encode()).result()
    job_id = submit(client, auth, SMALL)
    wait_state(service, job_id, {"succeeded"})
    assert worker.proc.poll() is None
    messages = [e.get("message") for e in worker.lines()]
    assert "message names no job; dropped" in messages
    # Just published, it may have overtaken its job's creation: deferred, not dropped
    # (dropped once older than a create can take: test_publish_beside.py).
    assert "no such job yet; deferred" in messages


class FlakyStorage:
    """A proxy in front of fake-gcs-server that answers the first upload with a 503."""

    def __init__(self, upstream: str, failures: int = 1) -> None:
        self.upstream = upstream
        self.failures = failures
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def _forward(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                if self.path.startswith("/upload/") and proxy.failures > 0:
                    proxy.failures -= 1
                    self.send_response(503)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                headers = {k: v for k, v in self.headers.items() if k.lower() != "host"}
                upstream = requests.request(
                    self.command,
                    proxy.upstream + self.path,
                    data=body,
                    headers=headers,
                    timeout=30,
                )
                self.send_response(upstream.status_code)
                for key, value in upstream.headers.items():
                    if key.lower() not in (
                        "content-length",
                        "transfer-encoding",
                        "connection",
                        "content-encoding",
                    ):
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(upstream.content)))
                self.end_headers()
                self.wfile.write(upstream.content)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _forward

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"


@pytest.mark.parametrize("failures", [1, 8])
def test_a_transient_storage_error_is_retried(
    client, auth, service, settings, start_worker, emulators, failures
):
    """One 503 is retried by the storage client itself; a longer outage fails the finish,
    and the job goes back to the queue and succeeds on a later delivery."""
    flaky = FlakyStorage(emulators.storage_host, failures=failures)
    try:
        worker = start_worker(STORAGE_EMULATOR_HOST=flaky.url, LTXV_STORAGE_RETRY_SECONDS="2")
        job_id = submit(client, auth, SMALL)
        job = wait_state(service, job_id, {"succeeded"}, timeout=120)
        assert flaky.failures == 0
        assert job["error"] is None
        # result.json comes just after the state write (and after a retried upload)
        assert set(wait_outputs(settings, job_id, 3)) == {"video.mp4", "poster.jpg", "result.json"}
        requeued = [e for e in worker.lines() if e.get("message") == "job requeued"]
        assert job["attempts"] == 1 + len(requeued)
        if failures > 1:
            assert requeued and requeued[0]["code"] == "finish_error"
    finally:
        flaky.server.shutdown()


def test_a_redelivered_message_repairs_a_missing_result_json_and_nothing_more(
    client, auth, service, settings, start_worker
):
    worker = start_worker()
    job_id = submit(client, auth, SMALL)
    wait_state(service, job_id, {"succeeded"})
    files = wait_outputs(settings, job_id, 3)
    video_generation = files["video.mp4"].generation
    files["result.json"].delete()  # as if the worker died between the state write and it

    service.dispatcher.publish([service.store.get(job_id)])
    worker.wait_for("result.json repaired", job_id=job_id)
    files = outputs(settings, job_id)
    result = json.loads(files["result.json"].download_as_bytes())
    schemas.validator("result").validate(result)
    assert result["state"] == "succeeded" and result["attempts"] == 1
    assert files["video.mp4"].generation == video_generation  # not rendered again
    assert service.store.get(job_id)["attempts"] == 1


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"height": 100}, "height and width must be multiples of 32"),  # the worker's check
    ],
)
def test_a_request_the_pipeline_refuses_fails_at_once_with_a_result(
    service, settings, start_worker, change, message
):
    """Intake never lets such a request through; a job written by other means must still
    end cleanly, on its first attempt, rather than loop through retries to a dead letter."""
    from ltxv.core.jobs import new_job, new_job_id

    request = {**service.intake.validate(SMALL, api_key_id="default"), **change}
    job = new_job(job_id=new_job_id(), request=request, request_hash="x", api_key_id="default")
    service.store.create(job)
    service.dispatcher.publish([job])
    start_worker()
    settled = wait_state(service, job["job_id"], {"failed", "succeeded"})
    assert settled["state"] == "failed" and settled["attempts"] == 1
    assert settled["error"]["code"] == "invalid_request" and settled["error"]["retryable"] is False
    assert message in settled["error"]["message"]
    assert "Traceback" not in settled["error"]["message"]
    result = json.loads(wait_outputs(settings, job["job_id"], 1)["result.json"].download_as_bytes())
    assert result["state"] == "failed" and result["error"]["code"] == "invalid_request"
