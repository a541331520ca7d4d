"""Deadlines and usage, the parts that need no backend: when a job is past its queue
deadline, when a render is out of time, what an attempt adds to a job's usage, a page's
total, and how `ltxv list` shows them."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import pytest

from gpu_worker.lease import JobControl
from ltxv.cli.job_text import list_table
from ltxv.core import schemas
from ltxv.core.deadlines import (
    QUEUE_DEADLINE_EXCEEDED,
    RUN_DEADLINE_EXCEEDED,
    fail_past_queue_deadline,
    past_queue_deadline,
    run_deadline_error,
)
from ltxv.core.jobs import new_job, to_json
from ltxv.core.usage import add_attempt, page_total

from .test_jobs import REQUEST

NOW = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)


def _job(**request):
    return new_job(
        job_id="a" * 26,
        request={**REQUEST, **request},
        request_hash="h",
        api_key_id="default",
        now=NOW,
    )


def test_the_queue_deadline_is_counted_from_acceptance_and_stored():
    job = _job(max_queue_seconds=30)
    assert job["queue_deadline_at"] == NOW + timedelta(seconds=30)
    assert job["usage"] is None
    schemas.validator("job").validate(to_json(job))
    assert _job()["queue_deadline_at"] is None  # no limit asked for
    assert _job(max_queue_seconds=None)["queue_deadline_at"] is None


def test_past_the_queue_deadline_only_while_still_waiting_for_a_first_start():
    job = _job(max_queue_seconds=30)
    assert not past_queue_deadline(job, NOW + timedelta(seconds=29.999))
    assert past_queue_deadline(job, NOW + timedelta(seconds=30))
    assert not past_queue_deadline({**job, "state": "running"}, NOW + timedelta(hours=1))
    # A claim clears it: a job requeued after it started in time is not failed.
    assert not past_queue_deadline({**job, "queue_deadline_at": None}, NOW + timedelta(hours=1))
    # Jobs stored before deadlines existed have no such field.
    old = {k: v for k, v in job.items() if k != "queue_deadline_at"}
    assert not past_queue_deadline(old, NOW + timedelta(days=1))  # type: ignore[arg-type]


def test_failing_past_the_queue_deadline_says_the_limit_and_is_not_retryable():
    job = _job(max_queue_seconds=45)
    changes = fail_past_queue_deadline(job, NOW + timedelta(seconds=46))
    assert changes["state"] == "failed" and changes["lease"] is None
    error = changes["error"]
    assert error["code"] == QUEUE_DEADLINE_EXCEEDED and error["retryable"] is False
    assert "max_queue_seconds (45 s" in error["message"]
    error = run_deadline_error(600)
    assert error["code"] == RUN_DEADLINE_EXCEEDED and "max_run_seconds (600 s)" in error["message"]


def test_a_render_is_out_of_time_after_max_run_seconds_from_its_claim():
    job = _job(max_run_seconds=10)
    control = JobControl.for_job(job)
    assert control.max_run_seconds == 10 and not control.overdue() and not control.should_stop()
    control.started = time.monotonic() - 10.5  # claimed 10.5 s ago
    assert control.overdue() and control.should_stop()
    unlimited = JobControl.for_job(_job())
    unlimited.started = time.monotonic() - 86400 * 7
    assert not unlimited.overdue() and not unlimited.should_stop()
    unlimited.cancel.set()
    assert unlimited.should_stop()


def test_each_attempt_adds_its_gpu_seconds_at_its_workers_price():
    first = add_attempt(None, 90.0, 0.85)
    assert first == {"gpu_seconds": 90.0, "cost_usd": round(90 / 3600 * 0.85, 6)}
    # A second attempt (after a requeue), on a worker with another price.
    second = add_attempt(first, 30.0, 3.6)
    assert second == {"gpu_seconds": 120.0, "cost_usd": round(0.02125 + 0.03, 6)}
    assert add_attempt(None, -1.0, 1.0) == {"gpu_seconds": 0.0, "cost_usd": 0.0}


def test_a_page_total_sums_the_jobs_that_used_a_gpu():
    jobs = [
        {"usage": {"gpu_seconds": 10.5, "cost_usd": 0.002479}},
        {"usage": None},  # never reached a GPU
        {},  # stored before usage existed
        {"usage": {"gpu_seconds": 2.25, "cost_usd": 0.000531}},
    ]
    assert page_total(jobs) == {"gpu_seconds": 12.75, "cost_usd": 0.00301, "jobs": 2}
    assert page_total([]) == {"gpu_seconds": 0.0, "cost_usd": 0.0, "jobs": 0}
    # The shape the job schema's usage_total describes (the list response's).
    total_schema = schemas.load("job")["$defs"]["usage_total"]
    assert set(total_schema["required"]) == set(page_total(jobs))


@pytest.mark.parametrize("usage", [None, {"gpu_seconds": 75.25, "cost_usd": 0.017768}])
def test_ltxv_list_shows_each_jobs_gpu_seconds_cost_and_the_total(usage):
    job = to_json({**_job(), "usage": usage})
    other = to_json(
        {**_job(), "job_id": "b" * 26, "usage": {"gpu_seconds": 4.75, "cost_usd": 0.001}}
    )
    head, first, second, total = list_table([job, other])
    assert head.split()[4:8] == ["GPU", "S", "COST", "$"]
    # job, state, progress, created (date and time), GPU seconds, cost, prompt
    assert first.split()[5:] == (["75.2", "0.0178"] if usage else ["-", "-"]) + ["a", "cat"]
    assert second.split()[5:7] == ["4.8", "0.0010"]
    if usage:
        assert total.split()[:3] == ["total", "80.0", "0.0188"] and "2 of 2 job(s)" in total
    else:
        assert total.split()[:3] == ["total", "4.8", "0.0010"] and "1 of 2 job(s)" in total
