"""Queue deadlines against the emulators: the sweep (the `redispatch` entry point) fails a
job nobody started in time and its webhook says `job.failed`; a claim past the deadline
fails it instead of starting it; a claim and the sweep at the same moment never both win;
and such a job can be retried."""

from __future__ import annotations

import json
import random
import secrets
import threading
import time
from collections import Counter
from datetime import timedelta

import pytest
from functions_framework import create_app

from gpu_worker.lifecycle import ClaimOutcome, JobLifecycle
from ltxv.core import schemas
from ltxv.core.deadlines import QUEUE_DEADLINE_EXCEEDED
from ltxv.core.jobs import to_json, utcnow
from ltxv.core.store import JobStore
from ltxv.intake.queue_deadlines import QueueDeadlines

from .conftest import SUBMIT_SOURCE
from .test_notify import notifier, notify_settings, read_result, receiver, result_object

pytestmark = pytest.mark.emulators
__all__ = ["notifier", "notify_settings", "receiver"]  # fixtures, used by name

MODEL = "tiny-random"


def _submit(service, **fields) -> str:
    body = {"prompt": "a clock tower at noon", **fields}
    return service.intake.submit_http(body, api_key_id="default").job["job_id"]


def _deadline_now(service, job_id: str, seconds: float = -0.001) -> None:
    """Move a job's queue deadline (a data seam: max_queue_seconds is at least 10 s)."""
    at = utcnow() + timedelta(seconds=seconds)
    service.store.transact(job_id, lambda job, now: {"queue_deadline_at": at})


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("max_queue_seconds", 5),
        ("max_queue_seconds", 604801),
        ("max_queue_seconds", 12.5),
        ("max_run_seconds", 9),
        ("max_run_seconds", 86401),
        ("max_run_seconds", "60"),
    ],
)
def test_a_limit_out_of_range_is_422_naming_the_field(client, auth, field, value):
    response = client.post("/v1/jobs", json={"prompt": "x", field: value}, headers=auth)
    assert response.status_code == 422
    error = response.get_json()["error"]
    assert [d["path"] for d in error["details"]] == [f"$.{field}"]


def test_limits_in_range_are_stored_and_the_queue_deadline_counts_from_acceptance(
    client, auth, service
):
    body = {"prompt": "x", "max_queue_seconds": 10, "max_run_seconds": 86400}
    response = client.post("/v1/jobs", json=body, headers=auth)
    assert response.status_code == 202
    shown = response.get_json()
    assert shown["request"]["max_queue_seconds"] == 10
    assert shown["request"]["max_run_seconds"] == 86400
    job = service.store.get(shown["job_id"])
    assert job["queue_deadline_at"] - job["created_at"] == timedelta(seconds=10)
    schemas.validator("job").validate(shown)


def _sweep(env) -> int:
    """The scheduled sweep, as Cloud Scheduler's tick reaches the function."""
    app = create_app(target="redispatch", source=SUBMIT_SOURCE, signature_type="cloudevent")
    headers = {
        "ce-specversion": "1.0",
        "ce-id": secrets.token_hex(8),
        "ce-source": "//pubsub.googleapis.com/projects/p/topics/ltxv-sweep",
        "ce-type": "google.cloud.pubsub.topic.v1.messagePublished",
        "Content-Type": "application/json",
    }
    body = {"message": {"data": "", "messageId": "1"}}
    return app.test_client().post("/", data=json.dumps(body), headers=headers).status_code


def test_the_sweep_fails_a_job_no_worker_takes_and_its_webhook_says_job_failed(
    env, service, notifier, receiver
):
    job_id = _submit(service, max_queue_seconds=10, webhook_url=receiver.url)
    unlimited = _submit(service)
    assert _sweep(env) == 200
    assert service.store.get(job_id)["state"] == "queued"  # not before its time

    # No worker runs: the job waits out its 10 s, then the next tick fails it.
    deadline = service.store.get(job_id)["queue_deadline_at"]
    time.sleep(max(0.0, (deadline - utcnow()).total_seconds()) + 0.2)
    assert _sweep(env) == 200
    job = service.store.get(job_id)
    assert job["state"] == "failed" and job["attempts"] == 0 and job.get("usage") is None
    assert job["error"]["code"] == QUEUE_DEADLINE_EXCEEDED and not job["error"]["retryable"]
    assert "max_queue_seconds (10 s" in job["error"]["message"]
    assert service.store.get(unlimited)["state"] == "queued"
    schemas.validator("job").validate(to_json(job))

    result = read_result(service, job_id)
    schemas.validator("result").validate(result)
    assert result["state"] == "failed" and result["error"]["code"] == QUEUE_DEADLINE_EXCEEDED
    assert notifier.on_object(*result_object(service, job_id)) == "delivered"
    (delivery,) = receiver.deliveries
    assert delivery.event["type"] == "job.failed"
    assert delivery.event["data"]["error"]["code"] == QUEUE_DEADLINE_EXCEEDED

    assert _sweep(env) == 200  # the next tick finds nothing more to do
    assert read_result(service, job_id) == result


def test_a_claim_past_the_deadline_fails_the_job_without_starting_it(service):
    job_id = _submit(service, max_queue_seconds=60)
    _deadline_now(service, job_id)
    claim = JobLifecycle(service.store, "worker-1", model=MODEL).claim(job_id)
    assert claim.outcome is ClaimOutcome.SETTLED  # the worker writes result.json and acks
    job = claim.found
    assert job["state"] == "failed" and job["attempts"] == 0 and job["lease"] is None
    assert job["error"]["code"] == QUEUE_DEADLINE_EXCEEDED
    assert service.store.get(job_id)["state"] == "failed"


def test_a_job_started_in_time_is_not_failed_by_a_later_requeue(service):
    job_id = _submit(service, max_queue_seconds=60)
    lifecycle = JobLifecycle(service.store, "worker-1", model=MODEL)
    assert lifecycle.claim(job_id).outcome is ClaimOutcome.CLAIMED
    assert service.store.get(job_id)["queue_deadline_at"] is None  # met
    lifecycle.requeue(job_id, "worker_shutdown", "preempted")
    sweep = QueueDeadlines(service.store, service.storage, service.settings.outputs)
    assert sweep.expire(now=utcnow() + timedelta(days=1)) == []
    assert lifecycle.claim(job_id).outcome is ClaimOutcome.CLAIMED
    assert service.store.get(job_id)["attempts"] == 2


def test_a_claim_and_the_sweep_at_the_deadline_never_both_win(service):
    """Workers claim each job just before its deadline while sweeps fail it just after:
    whichever conditional write lands first stands, the other finds it decided."""
    sweep = QueueDeadlines(service.store, service.storage, service.settings.outputs)
    workers = [JobLifecycle(service.store, f"worker-{n}", model=MODEL) for n in range(3)]
    job_ids = [_submit(service, max_queue_seconds=600) for _ in range(12)]
    start = utcnow() + timedelta(seconds=1.5)
    deadlines = {
        job_id: start + timedelta(milliseconds=150 * n) for n, job_id in enumerate(job_ids)
    }
    for job_id, at in deadlines.items():
        service.store.transact(job_id, lambda job, now, at=at: {"queue_deadline_at": at})

    claimed: Counter[str] = Counter()
    swept: Counter[str] = Counter()
    lock = threading.Lock()

    def at(moment, jitter_ms: tuple[int, int]) -> None:
        offset = timedelta(milliseconds=random.uniform(*jitter_ms))
        time.sleep(max(0.0, (moment + offset - utcnow()).total_seconds()))

    def claimer(worker: JobLifecycle) -> None:
        for job_id in job_ids:
            at(deadlines[job_id], (-60, 0))
            if worker.claim(job_id).outcome is ClaimOutcome.CLAIMED:
                with lock:
                    claimed[job_id] += 1

    def sweeper() -> None:
        for job_id in job_ids:
            at(deadlines[job_id], (-10, 30))
            if sweep.fail_if_past(job_id) is not None:
                with lock:
                    swept[job_id] += 1
            with lock:
                swept.update(sweep.expire())  # the query's way in, too

    threads = [threading.Thread(target=claimer, args=(w,)) for w in workers]
    threads += [threading.Thread(target=sweeper) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    sweep.expire(now=utcnow() + timedelta(hours=1))  # anything left over

    outcomes = Counter()
    for job_id in job_ids:
        job = service.store.get(job_id)
        assert claimed[job_id] <= 1 and swept[job_id] <= 1, (claimed, swept)
        assert not (claimed[job_id] and swept[job_id]), job_id
        if claimed[job_id]:
            assert job["state"] == "running" and job["attempts"] == 1 and job["error"] is None
        else:
            # Failed by a sweep, or by a claim that came too late: never started.
            assert job["state"] == "failed" and job["attempts"] == 0, job
            assert job["error"]["code"] == QUEUE_DEADLINE_EXCEEDED
        outcomes[job["state"]] += 1
    assert sum(outcomes.values()) == len(job_ids)


class Interleaved(JobStore):
    """The job store, with `between` run once after the first read-and-decide and before
    its write (another writer getting in), and each decision taken `shift` earlier (a claim
    that read the job just before its deadline)."""

    def __init__(self, base: JobStore, between=None, shift: float = 0.0) -> None:
        super().__init__(base.client, base.collection.id, base.timeout)
        self.between, self.shift = between, timedelta(seconds=shift)

    def decide(self, job_id, decide):
        def hooked(job, now):
            decision = decide(job, now + self.shift)
            run, self.between = self.between, None
            if run:
                run()
            return decision

        return super().decide(job_id, hooked)


def test_a_claim_that_wrote_first_stands_and_the_sweep_leaves_it(service):
    job_id = _submit(service, max_queue_seconds=60)
    _deadline_now(service, job_id, seconds=-0.5)
    early = JobLifecycle(Interleaved(service.store, shift=-1.0), "worker-1", model=MODEL)
    claims = []
    store = Interleaved(service.store, between=lambda: claims.append(early.claim(job_id)))
    sweep = QueueDeadlines(store, service.storage, service.settings.outputs)
    assert sweep.fail_if_past(job_id) is None  # decided "fail", but the claim wrote first
    assert [c.outcome for c in claims] == [ClaimOutcome.CLAIMED]
    job = service.store.get(job_id)
    assert job["state"] == "running" and job["attempts"] == 1 and job["error"] is None


def test_a_sweep_that_wrote_first_stands_and_the_claim_does_not_start_the_job(service):
    job_id = _submit(service, max_queue_seconds=60)
    _deadline_now(service, job_id, seconds=-0.5)
    sweep = QueueDeadlines(service.store, service.storage, service.settings.outputs)
    failed = []
    # The claim read the job just before its deadline; the sweep fails it before the
    # claim's write.
    store = Interleaved(
        service.store, between=lambda: failed.append(sweep.fail_if_past(job_id)), shift=-1.0
    )
    claim = JobLifecycle(store, "worker-1", model=MODEL)
    assert claim.claim(job_id).outcome is ClaimOutcome.SETTLED  # decided "run", then lost
    assert failed and failed[0]["state"] == "failed"
    job = service.store.get(job_id)
    assert job["state"] == "failed" and job["attempts"] == 0 and job["lease"] is None
    assert job["error"]["code"] == QUEUE_DEADLINE_EXCEEDED


def test_a_job_failed_past_its_queue_deadline_can_be_retried(client, auth, service):
    job_id = _submit(service, max_queue_seconds=10)
    _deadline_now(service, job_id)
    QueueDeadlines(service.store, service.storage, service.settings.outputs).expire()
    assert service.store.get(job_id)["state"] == "failed"
    response = client.post(f"/v1/jobs/{job_id}/retry", headers=auth)
    assert response.status_code == 202, response.get_json()
    again = response.get_json()
    assert again["parent_job_id"] == job_id and again["state"] == "queued"
    new = service.store.get(again["job_id"])
    # Its own wait starts with its own acceptance.
    assert new["queue_deadline_at"] - new["created_at"] == timedelta(seconds=10)
