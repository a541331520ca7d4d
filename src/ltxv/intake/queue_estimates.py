"""Where a job stands: `queue: {position, estimated_start_at, estimated_finish_at, basis}` in
GET /v1/jobs/{id}.

A queued job's position is how many queued jobs of its model and lane were created before
it: one count aggregation, whatever the queue holds. Its estimates come from the jobs ahead
of it (that count, plus a second one of the higher lanes' queued jobs, which workers take
first) and from the model's live workers (one query of their heartbeats, ltxv.core.workers):
how many there are, when each will be free, and the median of their recent render times.
A running job's finish comes from its own step rate and needs no read at all. Without a
basis (no live worker, no render yet, no step done) an estimate is null and `basis` says
why. Pub/Sub promises no order, so these are estimates, not promises.
"""

from __future__ import annotations

import logging
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, cast

from google.cloud import firestore

from ltxv.core import schemas
from ltxv.core.errors import BACKEND_ERRORS
from ltxv.core.jobs import Job, State, to_json, utcnow
from ltxv.core.store import JobStore
from ltxv.core.workers import BUSY, WorkerBeat, WorkerRegistry

if TYPE_CHECKING:
    from google.cloud.firestore_v1.aggregation import AggregationQuery
    from google.cloud.firestore_v1.base_aggregation import AggregationResult

log = logging.getLogger(__name__)

# Lanes, the one workers take first first (the request schema's order).
LANES: tuple[str, ...] = tuple(
    lane for lane in schemas.load("job-request")["properties"]["priority"]["enum"] if lane
)
DEFAULT_LANE = "normal"  # also of jobs stored before lanes existed


def lane_of(job: Job) -> str:
    return job.get("priority") or DEFAULT_LANE


@dataclass(frozen=True)
class Pool:
    """A model's live workers as their heartbeats describe them."""

    workers: int
    render_seconds: float | None  # the median of their recent renders; None: no render yet
    renders: int  # how many renders that median is over
    free_in: list[float]  # seconds until each worker is free, soonest first


def pool_of(beats: list[WorkerBeat], now: datetime) -> Pool:
    renders = [s for beat in beats for s in beat.get("render_seconds") or []]
    median = statistics.median(renders) if renders else None
    free_in = []
    for beat in beats:
        started = beat.get("job_started_at")
        if beat["state"] != BUSY:
            free_in.append(0.0)
        elif median is None or started is None:
            free_in.append(median or 0.0)
        else:  # its job is as long as the median: past that, it ends any moment
            free_in.append(max(0.0, median - (now - started).total_seconds()))
    return Pool(len(beats), median, len(renders), sorted(free_in))


def queued_estimate(
    model: str, position: int, higher_ahead: int, pool: Pool, now: datetime
) -> dict[str, Any]:
    """Workers take the jobs ahead one at a time, each as long as the median render, in
    the order they come free: the job ahead of this one in turn k (0-based) of worker i
    (soonest free first) is the (k * workers + i)th; this job is the next turn after all."""
    ahead = position + higher_ahead
    jobs = f"{ahead} job{'' if ahead == 1 else 's'} ahead"
    if higher_ahead:
        jobs += f" ({position} in its lane, {higher_ahead} in higher lanes)"
    start = finish = None
    if not pool.workers:
        basis = f"{jobs}; no live worker for model {model}"
    elif pool.render_seconds is None:
        basis = f"{jobs}; {_workers(pool)}, no render times yet"
    else:
        turns, worker = divmod(ahead, pool.workers)
        wait = pool.free_in[worker] + turns * pool.render_seconds
        start = now + timedelta(seconds=wait)
        finish = start + timedelta(seconds=pool.render_seconds)
        basis = (
            f"{jobs}; {_workers(pool)}, median render {pool.render_seconds:.0f} s over the "
            f"last {pool.renders} render{'' if pool.renders == 1 else 's'}"
        )
    return _queue(position, start, finish, basis)


def running_estimate(job: Job) -> dict[str, Any]:
    """From the job's own step rate: steps done since it started running, as of its last
    progress write (`updated_at`), extended to the last step. No read needed."""
    started = (job.get("state_times") or {}).get(State.RUNNING.value)
    progress = job.get("progress")
    step, total = (progress["step"], progress["total"]) if progress else (0, 0)
    written = job.get("updated_at")
    elapsed = (written - started).total_seconds() if started and written else 0.0
    if not step or elapsed <= 0:
        return _queue(0, started, None, "running; no denoising step done yet")
    rate = step / elapsed
    finish = written + timedelta(seconds=max(0, total - step) / rate)
    basis = f"running; step {step} of {total} after {elapsed:.0f} s ({rate:.2f} steps/s)"
    return _queue(0, started, finish, basis)


def _workers(pool: Pool) -> str:
    return f"{pool.workers} live worker{'' if pool.workers == 1 else 's'}"


def _queue(
    position: int | None, start: datetime | None, finish: datetime | None, basis: str
) -> dict[str, Any]:
    return {
        "position": position,
        "estimated_start_at": to_json(start),
        "estimated_finish_at": to_json(finish),
        "basis": basis,
    }


class QueueEstimates:
    """`queue` for a job: two count aggregations and one worker query for a queued job,
    nothing for a running one, None for a settled one."""

    def __init__(
        self,
        store: JobStore,
        workers: WorkerRegistry,
        live_seconds: float,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.store = store
        self.workers = workers
        self.live_seconds = live_seconds
        self.clock = clock

    def for_job(self, job: Job) -> dict[str, Any] | None:
        if job["state"] == State.RUNNING:
            return running_estimate(job)
        if job["state"] != State.QUEUED:
            return None
        try:
            return self._queued_estimate(job)
        except BACKEND_ERRORS as exc:
            # An estimate is a courtesy: the job itself is still answered (a missing index
            # is FailedPrecondition, an outage a retryable error; both are in the log).
            log.warning(
                "queue estimate unavailable", extra={"job_id": job["job_id"], "error": str(exc)}
            )
            return _queue(None, None, None, "no estimate: the queue cannot be read right now")

    def _queued_estimate(self, job: Job) -> dict[str, Any]:
        now = self.clock()
        position = self._count(self.ahead_in_lane_query(job))
        higher = self.higher_lanes_query(job)
        higher_ahead = self._count(higher) if higher is not None else 0
        since = now - timedelta(seconds=self.live_seconds)
        pool = pool_of(self.workers.live(job["model"], since), now)
        return queued_estimate(job["model"], position, higher_ahead, pool, now)

    def _queued(self, model: str) -> Any:
        jobs = self.store.collection
        return jobs.where(filter=firestore.FieldFilter("model", "==", model)).where(
            filter=firestore.FieldFilter("state", "==", State.QUEUED.value)
        )

    def ahead_in_lane_query(self, job: Job) -> Any:
        """Queued jobs of the job's model and lane created before it (terraform's index
        for it: tests/terraform)."""
        return (
            self._queued(job["model"])
            .where(filter=firestore.FieldFilter("priority", "==", lane_of(job)))
            .where(filter=firestore.FieldFilter("created_at", "<", job["created_at"]))
        )

    def higher_lanes_query(self, job: Job) -> Any:
        """Queued jobs of the job's model in the lanes workers take first; None in the top
        lane."""
        higher = list(LANES[: LANES.index(lane_of(job))])
        if not higher:
            return None
        return self._queued(job["model"]).where(
            filter=firestore.FieldFilter("priority", "in", higher)
        )

    def _count(self, query: Any) -> int:
        # As in JobStore.count_in_flight: count() returns an instance, get() one list of
        # results per aggregation query.
        counting = cast("AggregationQuery", query.count())
        rows = cast(
            "list[list[AggregationResult]]",
            counting.get(retry=self.store.retry, timeout=self.store.timeout),
        )
        (result,) = rows[0]
        return int(result.value)
