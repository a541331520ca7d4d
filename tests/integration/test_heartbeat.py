"""Workers announce themselves: `workers/{worker_id}` heartbeats (gpu_worker/heartbeat.py)
against the Firestore emulator, from the thread on its own and from a real worker process
whose render time then drives a queued job's estimate over the API."""

from __future__ import annotations

import signal
import time
from datetime import timedelta

import pytest

from gpu_worker.health import Health
from gpu_worker.heartbeat import Heartbeat
from ltxv.core.jobs import utcnow
from ltxv.core.workers import BUSY, IDLE, LOADING, WorkerRegistry

from ..bodies import SLOW, SMALL
from .test_worker import start_worker, submit, tiny_model_dir, topic_names, wait_state

pytestmark = pytest.mark.emulators
__all__ = ["start_worker", "tiny_model_dir", "topic_names"]  # fixtures used here


@pytest.fixture
def registry(service, settings) -> WorkerRegistry:
    return WorkerRegistry(service.firestore, settings.workers_collection)


def document(registry: WorkerRegistry, worker_id: str) -> dict | None:
    snapshot = registry.collection.document(worker_id).get()
    return snapshot.to_dict() if snapshot.exists else None


def wait_document(registry, worker_id, timeout=10.0, **expected) -> dict:
    deadline = time.monotonic() + timeout
    found = None
    while time.monotonic() < deadline:
        found = document(registry, worker_id)
        if found and all(found.get(k) == v for k, v in expected.items()):
            return found
        time.sleep(0.05)
    raise AssertionError(f"workers/{worker_id} never showed {expected}: {found}")


def test_the_heartbeat_follows_the_loop_and_leaves_with_it(registry, clean_firestore):
    health = Health(model="tiny-random")
    # A long interval: every change below must be written because it happened, at once.
    heartbeat = Heartbeat(registry, health, "w-1", interval=60).start()
    try:
        first = wait_document(registry, "w-1", state=LOADING, ready=False)
        assert first["model"] == "tiny-random" and first["render_seconds"] == []
        assert first["expires_at"] - first["last_seen"] == timedelta(days=1)  # for the TTL

        health.loaded("cpu")
        health.job_started("job-a")  # taking a job is news: written at once
        busy = wait_document(registry, "w-1", state=BUSY, job_id="job-a", ready=True)
        assert busy["job_started_at"] <= utcnow()
        for step in range(1, 5):
            health.progress(step, 4)
        time.sleep(0.2)
        health.job_done()
        done = wait_document(registry, "w-1", state=IDLE, job_id=None)
        (seconds,) = done["render_seconds"]
        assert 0.2 <= seconds < 5

        health.job_started("job-b")  # settled elsewhere: no step, so no render time
        health.job_done()
        health.job_started("job-c")  # canceled at step 1 of 4: not a render time either
        health.progress(1, 4)
        health.job_done()
        time.sleep(0.5)
        assert wait_document(registry, "w-1", state=IDLE)["render_seconds"] == [seconds]
        assert [
            b["worker_id"] for b in registry.live("tiny-random", utcnow() - timedelta(seconds=5))
        ]
    finally:
        heartbeat.stop()
    assert document(registry, "w-1") is None  # a worker that left is not live


def test_a_worker_process_beats_and_its_renders_drive_the_estimate(
    client, auth, service, settings, registry, start_worker
):
    worker = start_worker(LTXV_HEARTBEAT_SECONDS="1")
    (beat,) = wait_for_workers(registry, settings, 1)
    assert beat["model"] == "tiny-random" and beat["state"] == IDLE and beat["ready"]

    done = submit(client, auth, SMALL)
    wait_state(service, done, {"succeeded"})
    (beat,) = wait_for_workers(registry, settings, 1, renders=1)
    render = beat["render_seconds"][0]

    # A slow job keeps the worker busy; the next one waits behind it with an estimate.
    slow = submit(client, auth, SLOW)
    wait_state(service, slow, {"running"}, progress__step=1)
    waiting = submit(client, auth, SMALL)
    queue = client.get(f"/v1/jobs/{waiting}", headers=auth).get_json()["queue"]
    assert queue["position"] == 0
    assert queue["basis"] == (
        f"0 jobs ahead; 1 live worker, median render {render:.0f} s over the last 1 render"
    )
    assert queue["estimated_start_at"] and queue["estimated_finish_at"]
    running = client.get(f"/v1/jobs/{slow}", headers=auth).get_json()["queue"]
    assert running["basis"].startswith("running; step ") and running["estimated_finish_at"]

    assert worker.stop(signal.SIGTERM) == 0
    assert wait_for_workers(registry, settings, 0) == []  # gone with its process


def wait_for_workers(registry, settings, count, renders=0, timeout=30.0) -> list[dict]:
    deadline = time.monotonic() + timeout
    found: list = []
    while time.monotonic() < deadline:
        found = [
            b
            for b in registry.live(settings.worker_model, utcnow() - timedelta(seconds=30))
            if len(b.get("render_seconds") or []) >= renders
        ]
        if len(found) == count and (count or not list(registry.collection.stream())):
            return found
        time.sleep(0.2)
    raise AssertionError(f"not {count} live worker(s) with {renders} render(s): {found}")
