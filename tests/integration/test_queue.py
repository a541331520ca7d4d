"""`queue` in GET /v1/jobs/{id} and the list's poster thumbnails, against the emulators:
positions from count aggregations over real job documents, estimates from real heartbeat
documents (written as gpu_worker/heartbeat.py writes them), and a read cost per GET that
stays the same with 10 or 300 jobs queued."""

from __future__ import annotations

from collections import Counter
from datetime import datetime, timedelta
from typing import Any

import pytest
from flask import Request
from google.cloud import firestore
from werkzeug.test import EnvironBuilder

from ltxv.core.jobs import new_job, utcnow
from ltxv.core.store import JobStore
from ltxv.core.workers import BUSY, IDLE, LOADING, WorkerRegistry, worker_beat
from ltxv.intake import compose as compose_submit
from ltxv.intake.queue_estimates import QueueEstimates

from .conftest import API_KEY, OTHER_KEY, settle

pytestmark = pytest.mark.emulators


@pytest.fixture
def registry(service, settings) -> WorkerRegistry:
    return WorkerRegistry(service.firestore, settings.workers_collection)


def beat(registry, worker_id, *, model="tiny-random", state=IDLE, ready=True, ago=0.0,
         started_ago=None, renders=()):  # fmt: skip
    now = utcnow()
    registry.beat(
        worker_beat(
            worker_id=worker_id,
            model=model,
            state=state,
            ready=ready,
            now=now - timedelta(seconds=ago),
            job_id="x" if state == BUSY else None,
            job_started_at=now - timedelta(seconds=started_ago) if started_ago else None,
            render_seconds=list(renders),
        )
    )


def submit(client, auth, **body) -> str:
    response = client.post("/v1/jobs", json={"prompt": "a queue", **body}, headers=auth)
    assert response.status_code == 202, response.get_json()
    return response.get_json()["job_id"]


def queue_of(client, auth, job_id) -> dict[str, Any]:
    response = client.get(f"/v1/jobs/{job_id}", headers=auth)
    assert response.status_code == 200, response.get_json()
    return response.get_json()["queue"]


def seconds_from_now(iso: str) -> float:
    return (datetime.fromisoformat(iso) - utcnow()).total_seconds()


def test_without_a_live_worker_the_position_shows_and_the_estimates_are_null(
    client, auth, registry
):
    first, second = submit(client, auth), submit(client, auth)
    beat(registry, "gone", ago=300, renders=[30])  # died five minutes ago
    beat(registry, "loading", state=LOADING)  # still loading its model
    beat(registry, "broken", ready=False, renders=[30])  # beats, but its GPU is unusable
    beat(registry, "elsewhere", model="ltx-video-2b", renders=[30])  # another model's pool
    assert queue_of(client, auth, first) == {
        "position": 0,
        "estimated_start_at": None,
        "estimated_finish_at": None,
        "basis": "0 jobs ahead; no live worker for model tiny-random",
    }
    assert queue_of(client, auth, second)["position"] == 1

    beat(registry, "fresh")  # live, but has rendered nothing yet
    queue = queue_of(client, auth, second)
    assert queue["estimated_start_at"] is None
    assert queue["basis"] == "1 job ahead; 1 live worker, no render times yet"


def test_positions_count_the_lane_and_estimates_count_the_higher_lanes(client, auth, registry):
    high = [submit(client, auth, priority="high") for _ in range(2)]
    normal = [submit(client, auth) for _ in range(3)]  # the default lane
    low = submit(client, auth, priority="low")
    other_key = submit(client, {"X-API-Key": OTHER_KEY})  # everyone's jobs queue together
    beat(registry, "idle", renders=[30, 50])
    beat(registry, "busy", state=BUSY, started_ago=10, renders=[40])

    assert [queue_of(client, auth, j)["position"] for j in high] == [0, 1]
    assert [queue_of(client, auth, j)["position"] for j in normal] == [0, 1, 2]
    assert queue_of(client, {"X-API-Key": OTHER_KEY}, other_key)["position"] == 3

    queue = queue_of(client, auth, low)
    assert queue["position"] == 0
    assert queue["basis"] == (
        "6 jobs ahead (0 in its lane, 6 in higher lanes); 2 live workers, "
        "median render 40 s over the last 3 renders"
    )
    # Free in 0 s and 40 - 10 s; six jobs of 40 s ahead: three turns each, then the idle one.
    start = seconds_from_now(queue["estimated_start_at"])
    assert 120 - 3 <= start <= 120 + 1
    assert seconds_from_now(queue["estimated_finish_at"]) == pytest.approx(start + 40, abs=1)

    # Another key's job is not found, queue or not.
    assert client.get(f"/v1/jobs/{low}", headers={"X-API-Key": OTHER_KEY}).status_code == 404


def test_running_settled_and_listed_jobs(client, auth, service):
    queued, running, done = submit(client, auth), submit(client, auth), submit(client, auth)
    started = utcnow() - timedelta(seconds=20)
    settle(
        service,
        running,
        "running",
        progress={"step": 5, "total": 20},
        **{"state_times.running": started},
    ).join()
    queue = queue_of(client, auth, running)
    assert queue["position"] == 0 and queue["estimated_start_at"]
    assert queue["basis"].startswith("running; step 5 of 20 after 20 s")
    assert 55 <= seconds_from_now(queue["estimated_finish_at"]) <= 61  # 15 steps at 1/4 s
    settle(
        service,
        done,
        "succeeded",
        outputs={
            "video": f"gs://{service.settings.outputs}/jobs/{done}/video.mp4",
            "poster": f"gs://{service.settings.outputs}/jobs/{done}/poster.jpg",
            "poster_generation": "17",
        },
    ).join()
    assert queue_of(client, auth, done) is None

    def listed() -> dict[str, dict[str, Any]]:
        body = client.get("/v1/jobs", headers=auth).get_json()
        return {job["job_id"]: job for job in body["jobs"]}

    first, again = listed(), listed()
    assert "queue" not in first[queued]  # a count per queued item: left to GET
    assert first[running]["queue"]["basis"].startswith("running; step 5 of 20")
    assert "queue" not in first[done]
    # The thumbnail: a poster URL signed for the generation the job wrote, reused by the
    # next poll rather than signed again; only posters, never the video, in a list.
    poster = first[done]["poster_url"]
    assert f"/jobs/{done}/poster.jpg" in poster and "generation=17" in poster
    assert again[done]["poster_url"] == poster
    assert "video_url" not in first[done] and "poster_url" not in first[queued]


class CountingFirestore:
    """The Firestore client's RPC layer, counting each call and each document it streams."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.calls: Counter[str] = Counter()
        self.documents = 0

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self.inner, name)
        if not callable(attribute) or name.startswith("_"):
            return attribute

        def call(*args: Any, **kwargs: Any) -> Any:
            self.calls[name] += 1
            result = attribute(*args, **kwargs)
            if name in {"run_query", "batch_get_documents"}:
                return self._counted(result)
            return result

        return call

    def _counted(self, responses: Any) -> Any:
        for response in responses:
            if getattr(response, "document", None) or getattr(response, "found", None):
                self.documents += 1
            yield response


def _queue_jobs(service, count: int, before: datetime, tag: str) -> None:
    """`count` queued jobs of another key, created one second apart up to `before`."""
    batch = service.firestore.batch()
    for n in range(count):
        job = new_job(
            job_id=tag + "".join("abcdefghij"[int(d)] for d in f"{n:025d}"),
            request={"model": "tiny-random", "prompt": f"old {n}"},
            request_hash="x",
            api_key_id="other",
            now=before - timedelta(seconds=count - n),
        )
        batch.set(service.store.ref(job["job_id"]), dict(job))
    batch.commit()


def test_a_gets_reads_stay_flat_from_10_to_300_queued_jobs(settings, service, registry):
    api = compose_submit.api(settings)
    counting = CountingFirestore(api.store.client._firestore_api)  # built now, then wrapped
    api.store.client._firestore_api_internal = counting
    beat(registry, "one", renders=[30])
    beat(registry, "two", state=BUSY, started_ago=5, renders=[40])
    job_id = None

    def get() -> tuple[dict[str, Any], Counter[str], int]:
        counting.calls.clear()
        counting.documents = 0
        environ = EnvironBuilder(path=f"/v1/jobs/{job_id}", headers={"X-API-Key": API_KEY})
        response = api(Request(environ.get_environ()))
        assert response.status_code == 200, response.get_json()
        return response.get_json()["queue"], Counter(counting.calls), counting.documents

    now = utcnow()
    _queue_jobs(service, 10, now, "s")
    job_id = _own_job(service, now)
    small, small_calls, small_documents = get()
    _queue_jobs(service, 290, now - timedelta(hours=1), "l")  # 300 ahead now, all older
    large, large_calls, large_documents = get()

    assert small["position"] == 10 and large["position"] == 300
    # One job read, two counts (its lane; no higher lane has jobs, the count still runs
    # for normal), one worker query: the same calls and documents however long the queue.
    assert (
        small_calls
        == large_calls
        == Counter({"batch_get_documents": 1, "run_aggregation_query": 2, "run_query": 1})
    )
    assert small_documents == large_documents == 1 + 2  # the job, the two workers


def _own_job(service, now: datetime) -> str:
    job = new_job(
        job_id="z" * 26,
        request={"model": "tiny-random", "prompt": "mine"},
        request_hash="x",
        api_key_id="default",
        now=now,
    )
    service.store.create(job)
    return job["job_id"]


def test_a_queue_that_cannot_be_read_leaves_the_job_answered(monkeypatch, service):
    # A Firestore nobody answers (a closed port): the estimate gives way, not the GET.
    monkeypatch.setenv("FIRESTORE_EMULATOR_HOST", "127.0.0.1:9")
    unreachable = firestore.Client(project=service.settings.project)
    estimates = QueueEstimates(
        JobStore(unreachable, timeout=1.0), WorkerRegistry(unreachable, timeout=1.0), 60
    )
    job = new_job(
        job_id="q" * 26,
        request={"model": "tiny-random"},
        request_hash="x",
        api_key_id="default",
    )
    assert estimates.for_job(job) == {
        "position": None,
        "estimated_start_at": None,
        "estimated_finish_at": None,
        "basis": "no estimate: the queue cannot be read right now",
    }
