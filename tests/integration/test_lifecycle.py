"""Claim decisions that no worker process is needed to show (Firestore emulator only)."""

from __future__ import annotations

from datetime import timedelta

import pytest

from gpu_worker.lifecycle import ClaimOutcome, JobLifecycle

pytestmark = pytest.mark.emulators


def _queued_job(service) -> str:
    return service.intake.submit_http({"prompt": "x"}, api_key_id="default").job["job_id"]


def test_a_job_whose_worker_died_after_a_cancel_request_is_canceled_not_rendered(service):
    job_id = _queued_job(service)
    first = JobLifecycle(service.store, "worker-1", lease_seconds=60, model="tiny-random")
    assert first.claim(job_id).outcome is ClaimOutcome.CLAIMED
    service.store.request_cancel(job_id, "default")  # running: only requested
    # worker-1 dies; its lease runs out.
    service.store.transact(
        job_id, lambda job, now: {"lease.expires_at": now - timedelta(seconds=1)}
    )

    claim = JobLifecycle(service.store, "worker-2", model="tiny-random").claim(job_id)
    assert claim.outcome is ClaimOutcome.SETTLED
    job = service.store.get(job_id)
    assert job["state"] == "canceled" and job["lease"] is None and job["attempts"] == 1


def test_a_requeued_job_with_a_cancel_request_is_canceled_at_its_next_claim(service):
    job_id = _queued_job(service)
    lifecycle = JobLifecycle(service.store, "worker-1", model="tiny-random")
    lifecycle.claim(job_id)
    service.store.request_cancel(job_id, "default")
    lifecycle.requeue(job_id, "worker_shutdown", "stopped")
    assert service.store.get(job_id)["state"] == "queued"
    assert lifecycle.claim(job_id).outcome is ClaimOutcome.SETTLED
    assert service.store.get(job_id)["state"] == "canceled"
