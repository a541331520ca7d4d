"""A fresh job's message goes out while its document is created (ltxv.intake.submission):
what a worker does with a message that overtook its job, and what a failed create leaves,
against the emulators."""

from __future__ import annotations

import threading
import time
from datetime import timedelta

import pytest
from google.api_core import exceptions as gexc

from gpu_worker.lifecycle import (
    UNRECORDED_GRACE,
    UNRECORDED_RETRY_SECONDS,
    ClaimOutcome,
    JobLifecycle,
)
from gpu_worker.messages import Received
from ltxv.core import resources, schemas
from ltxv.core.jobs import job_id_for_idempotency_key, new_job, new_job_id, utcnow
from ltxv.core.settings import Settings

from .conftest import pull_job_ids

pytestmark = pytest.mark.emulators

OLD_EXAMPLE = schemas.old_predict_example()


def a_job(service):
    request = service.intake.validate(OLD_EXAMPLE, api_key_id="k")
    return new_job(job_id=new_job_id(), request=request, request_hash="x", api_key_id="k")


def test_a_claim_that_overtook_the_create_finds_the_job_when_it_lands(service):
    job = a_job(service)
    creating = threading.Timer(0.15, service.store.create, args=(job,))
    creating.start()
    lifecycle = JobLifecycle(service.store, "worker-1", model="tiny-random")
    claim = lifecycle.claim(job["job_id"], published_at=utcnow())
    creating.join()
    assert claim.outcome is ClaimOutcome.CLAIMED


def test_a_message_older_than_any_create_names_no_job_at_once(service):
    lifecycle = JobLifecycle(service.store, "worker-1", model="tiny-random")
    started = time.monotonic()
    old = utcnow() - UNRECORDED_GRACE - timedelta(seconds=1)
    assert lifecycle.claim(new_job_id(), published_at=old).outcome is ClaimOutcome.MISSING
    assert time.monotonic() - started < 0.5  # no second look


def test_only_a_young_message_is_worth_deferring():
    def received(age: timedelta | None) -> Received:
        published = None if age is None else utcnow() - age
        return Received("ack", "m", "job", 1, published_at=published)

    assert received(timedelta(seconds=1)).young(UNRECORDED_GRACE)
    assert not received(UNRECORDED_GRACE + timedelta(seconds=1)).young(UNRECORDED_GRACE)
    assert not received(None).young(UNRECORDED_GRACE)


def test_an_orphan_message_is_dropped_before_it_could_be_dead_lettered():
    """A message whose create failed is deferred while young, each time for at least
    UNRECORDED_RETRY_SECONDS, then dropped: all within fewer deliveries than the
    subscription allows before the dead-letter topic. And no create still in flight
    outlives the grace (its retry deadline is the RPC timeout; one call may be in flight)."""
    allowed = resources.worker_delivery().max_delivery_attempts
    young_deliveries = -(-UNRECORDED_GRACE.total_seconds() // UNRECORDED_RETRY_SECONDS)
    assert young_deliveries + 1 < allowed
    assert 2 * Settings().rpc_timeout_seconds < UNRECORDED_GRACE.total_seconds()


def refuse_creates(service, monkeypatch):
    def write_together(creates, marks):
        raise gexc.ServiceUnavailable("firestore is down")

    monkeypatch.setattr(service.store, "write_together", write_together)


def test_a_fresh_job_whose_create_fails_is_refused_and_leaves_only_a_message(
    service, settings, monkeypatch
):
    # A key's first submit counts its jobs in flight, before publishing; the next ones,
    # far below the limit and within the count's freshness, publish beside the create.
    service.intake.in_flight.fresh_seconds = 60.0
    first = service.intake.submit_http(OLD_EXAMPLE, api_key_id="default").job["job_id"]
    assert pull_job_ids(settings) == [first]
    refuse_creates(service, monkeypatch)
    from ltxv.intake.refusals import Unavailable

    with pytest.raises(Unavailable):
        service.intake.submit_http(OLD_EXAMPLE, api_key_id="default")
    # Its message went out beside the create: the workers drop it once it is old.
    (orphan,) = pull_job_ids(settings)
    assert service.store.get(orphan) is None


def test_a_keyed_job_whose_create_fails_publishes_nothing(service, settings, monkeypatch):
    refuse_creates(service, monkeypatch)
    from ltxv.intake.refusals import Unavailable

    with pytest.raises(Unavailable):
        service.intake.submit_http(OLD_EXAMPLE, api_key_id="default", idempotency_key="k1")
    assert pull_job_ids(settings) == []
    assert service.store.get(job_id_for_idempotency_key("default", "k1")) is None


def test_fresh_submits_publish_each_job_once(client, auth, service, settings):
    ids = [
        client.post("/v1/jobs", json=OLD_EXAMPLE, headers=auth).get_json()["job_id"]
        for _ in range(5)
    ]
    assert sorted(pull_job_ids(settings)) == sorted(ids)
    assert all(service.store.get(job_id)["state"] == "queued" for job_id in ids)
