"""Firestore `workers/{worker_id}`: each GPU worker's heartbeat, which queue estimates read.

A worker writes its document every few seconds (gpu_worker/heartbeat.py) and deletes it
when it stops; one that died simply stops beating, and a document whose `last_seen` is
older than the live threshold no longer counts. `expires_at` lets a Firestore TTL policy
remove what dead workers left behind. A VM the autoscaler plans but that has not loaded
its model is not a worker here: only a loaded, ready worker says `idle` or `busy`.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any, TypedDict, cast

from google.api_core.retry import Retry
from google.cloud import firestore

# What a worker does now: loading its model, waiting for a job, or on one.
LOADING, IDLE, BUSY = "loading", "idle", "busy"
# A document outlives its worker's last beat by this much before the TTL removes it.
KEEP_AFTER_LAST_BEAT = timedelta(days=1)
# Each worker reports this many of its latest render times.
RECENT_RENDERS = 20


class _WorkerBeat(TypedDict):
    worker_id: str
    model: str
    state: str  # LOADING, IDLE or BUSY
    ready: bool  # its health endpoint's verdict (a broken GPU beats but is not ready)
    last_seen: datetime
    expires_at: datetime


class WorkerBeat(_WorkerBeat, total=False):
    job_id: str | None
    job_started_at: datetime | None
    # Seconds each of its latest completed renders kept it busy, oldest first.
    render_seconds: list[float]


def worker_beat(
    *,
    worker_id: str,
    model: str,
    state: str,
    ready: bool,
    now: datetime,
    job_id: str | None = None,
    job_started_at: datetime | None = None,
    render_seconds: list[float] | None = None,
) -> WorkerBeat:
    return {
        "worker_id": worker_id,
        "model": model,
        "state": state,
        "ready": ready,
        "last_seen": now,
        "expires_at": now + KEEP_AFTER_LAST_BEAT,
        "job_id": job_id,
        "job_started_at": job_started_at,
        "render_seconds": [round(s, 3) for s in (render_seconds or [])[-RECENT_RENDERS:]],
    }


class WorkerRegistry:
    """The `workers` collection: heartbeats written, and the live workers of a model read."""

    def __init__(
        self, client: firestore.Client, collection: str = "workers", timeout: float = 10.0
    ) -> None:
        self.client = client
        self.collection = client.collection(collection)
        self.timeout = timeout
        self.retry = Retry(initial=0.1, maximum=1.0, multiplier=2.0, timeout=timeout)

    def beat(self, beat: WorkerBeat) -> None:
        self.collection.document(beat["worker_id"]).set(
            dict(beat), retry=self.retry, timeout=self.timeout
        )

    def remove(self, worker_id: str) -> None:
        self.collection.document(worker_id).delete(retry=self.retry, timeout=self.timeout)

    def live_query(self, model: str, since: datetime) -> Any:
        """The query `live` runs (terraform's index for it: tests/terraform)."""
        return self.collection.where(filter=firestore.FieldFilter("model", "==", model)).where(
            filter=firestore.FieldFilter("last_seen", ">=", since)
        )

    def live(self, model: str, since: datetime, limit: int = 500) -> list[WorkerBeat]:
        """The workers of `model` that beat at or after `since`, ready to render: one query
        whatever the queue holds (a pool has at most a few hundred VMs)."""
        stream = (
            self.live_query(model, since)
            .limit(limit)
            .stream(retry=self.retry, timeout=self.timeout)
        )
        beats = [cast(WorkerBeat, s.to_dict()) for s in stream]
        return [b for b in beats if b.get("ready") and b.get("state") in (IDLE, BUSY)]
