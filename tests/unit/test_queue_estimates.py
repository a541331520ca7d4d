"""The queue estimate's arithmetic (ltxv.intake.queue_estimates), without Firestore: the
closed form against a turn-by-turn simulation, and null rather than invented estimates."""

from __future__ import annotations

import heapq
import random
from datetime import UTC, datetime, timedelta

import pytest

from ltxv.core.workers import BUSY, IDLE, worker_beat
from ltxv.intake.queue_estimates import (
    LANES,
    Pool,
    pool_of,
    queued_estimate,
    running_estimate,
)

NOW = datetime(2025, 5, 1, 12, 0, tzinfo=UTC)


def at(seconds: float) -> str:
    return (NOW + timedelta(seconds=seconds)).isoformat().replace("+00:00", "Z")


def beat(state=IDLE, started_ago=None, renders=(40.0,)):
    return worker_beat(
        worker_id=f"w{random.random()}",
        model="m",
        state=state,
        ready=True,
        now=NOW,
        job_id="j" if state == BUSY else None,
        job_started_at=NOW - timedelta(seconds=started_ago) if started_ago is not None else None,
        render_seconds=list(renders),
    )


def test_lanes_are_the_request_schemas_highest_first():
    assert LANES == ("high", "normal", "low")


def test_the_pool_takes_the_median_over_every_live_workers_recent_renders():
    pool = pool_of([beat(renders=[10, 20]), beat(BUSY, started_ago=25, renders=[30, 100, 40])], NOW)
    assert pool.workers == 2 and pool.renders == 5
    assert pool.render_seconds == 30  # median of 10, 20, 30, 40, 100
    assert pool.free_in == [0.0, 5.0]  # idle now; busy for 30 - 25 more seconds


def test_a_busy_worker_past_the_median_is_free_any_moment():
    assert pool_of([beat(BUSY, started_ago=500, renders=[40])], NOW).free_in == [0.0]


def test_an_idle_worker_means_the_first_job_starts_now():
    queue = queued_estimate("m", 0, 0, pool_of([beat(renders=[40])], NOW), NOW)
    assert queue == {
        "position": 0,
        "estimated_start_at": at(0),
        "estimated_finish_at": at(40),
        "basis": "0 jobs ahead; 1 live worker, median render 40 s over the last 1 render",
    }


def test_jobs_ahead_in_higher_lanes_delay_the_start_and_are_named():
    pool = Pool(workers=2, render_seconds=60.0, renders=20, free_in=[0.0, 30.0])
    queue = queued_estimate("m", 3, 2, pool, NOW)
    # 5 ahead over 2 workers: two turns each and the first one's third (free at 180 s);
    # the second worker is free first, after its own two (30 + 2 * 60 s).
    assert queue["position"] == 3
    assert queue["estimated_start_at"] == at(30 + 2 * 60)
    assert queue["estimated_finish_at"] == at(30 + 2 * 60 + 60)
    assert queue["basis"] == (
        "5 jobs ahead (3 in its lane, 2 in higher lanes); 2 live workers, "
        "median render 60 s over the last 20 renders"
    )


def simulated_start(ahead: int, pool: Pool) -> float:
    """Turn by turn: each job ahead goes to the worker free soonest."""
    free = list(pool.free_in)
    heapq.heapify(free)
    for _ in range(ahead):
        heapq.heappush(free, heapq.heappop(free) + (pool.render_seconds or 0))
    return free[0]


@pytest.mark.parametrize("seed", range(30))
def test_the_closed_form_matches_a_simulation(seed):
    rng = random.Random(seed)
    median = rng.uniform(5, 300)
    workers = rng.randint(1, 12)
    free_in = sorted(rng.uniform(0, median) for _ in range(workers))
    pool = Pool(workers, median, 20, free_in)
    position, higher = rng.randint(0, 500), rng.randint(0, 50)
    queue = queued_estimate("m", position, higher, pool, NOW)
    start = datetime.fromisoformat(queue["estimated_start_at"])
    expected = NOW + timedelta(seconds=simulated_start(position + higher, pool))
    assert abs((start - expected).total_seconds()) < 1e-3


def test_no_live_worker_means_no_estimate():
    queue = queued_estimate("tiny-random", 4, 0, pool_of([], NOW), NOW)
    assert queue == {
        "position": 4,
        "estimated_start_at": None,
        "estimated_finish_at": None,
        "basis": "4 jobs ahead; no live worker for model tiny-random",
    }


def test_workers_without_a_render_yet_give_no_estimate():
    queue = queued_estimate("m", 1, 0, pool_of([beat(renders=[]), beat(renders=[])], NOW), NOW)
    assert queue["estimated_start_at"] is None and queue["estimated_finish_at"] is None
    assert queue["basis"] == "1 job ahead; 2 live workers, no render times yet"


def running(step, total, started_ago=30.0, written_ago=0.0):
    return {
        "state": "running",
        "state_times": {"running": NOW - timedelta(seconds=started_ago)},
        "updated_at": NOW - timedelta(seconds=written_ago),
        "progress": {"step": step, "total": total} if total else None,
    }


def test_a_running_job_finishes_at_its_own_step_rate():
    queue = running_estimate(running(10, 40, started_ago=25, written_ago=5))  # 10 in 20 s
    assert queue == {
        "position": 0,
        "estimated_start_at": at(-25),
        "estimated_finish_at": at(-5 + 30 / 0.5),
        "basis": "running; step 10 of 40 after 20 s (0.50 steps/s)",
    }


@pytest.mark.parametrize("job", [running(0, 40), running(0, 0), running(3, 40, 0, 0)])
def test_a_running_job_without_a_step_rate_has_no_finish(job):
    queue = running_estimate(job)
    assert queue["estimated_finish_at"] is None and queue["position"] == 0
    assert queue["basis"] == "running; no denoising step done yet"
