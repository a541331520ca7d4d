"""Priority lanes against the emulators: one subscription per lane on one jobs topic
(filtered as the local stack and terraform filter them), jobs submitted through the real
API, and a real worker process (tiny-random on the CPU) pulling them.

The emulator ignores filters (every lane subscription gets every message), so the worker's
own re-check stands in for them, as in tests/integration/test_routing.py.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator

import pytest
from google.api_core import exceptions as gexc
from google.cloud import pubsub_v1

from ltxv.core.dispatch import subscription_filter
from ltxv.core.resources import worker_lanes

from ..bodies import SMALL
from . import test_worker
from .test_worker import submit, wait_state

tiny_model_dir = test_worker.tiny_model_dir
start_worker = test_worker.start_worker

pytestmark = pytest.mark.emulators

MODEL = "tiny-random"


@pytest.fixture
def topic_names(emulators) -> Iterator[tuple[str, str]]:
    """A jobs topic with the default model's three lane subscriptions, as the local stack
    makes them; the normal lane's is the one the settings name."""
    topic = f"jobs-{uuid.uuid4().hex[:8]}"
    normal = f"{topic}-worker-{MODEL}"
    publisher, subscriber = pubsub_v1.PublisherClient(), pubsub_v1.SubscriberClient()
    topic_path = publisher.topic_path(emulators.project, topic)
    publisher.create_topic(name=topic_path)
    paths = []
    for lane in worker_lanes().order:
        name = worker_lanes().subscription(normal, lane)
        paths.append(subscriber.subscription_path(emulators.project, name))
        subscriber.create_subscription(
            request={
                "name": paths[-1],
                "topic": topic_path,
                "filter": subscription_filter(MODEL, MODEL, lane),
                "ack_deadline_seconds": 10,
                "enable_exactly_once_delivery": True,
            }
        )
    yield topic, normal
    for path in paths:
        with contextlib.suppress(gexc.NotFound):
            subscriber.delete_subscription(subscription=path)
    with contextlib.suppress(gexc.NotFound):
        publisher.delete_topic(topic=topic_path)


def started_at(service, job_id: str):
    return service.store.get(job_id)["state_times"]["running"]


def test_queued_jobs_render_high_first_and_low_last(client, auth, service, start_worker):
    # Queued lowest first, before any worker runs: submission order would be the wrong one.
    jobs = {
        lane: submit(client, auth, {**SMALL, "priority": lane})
        for lane in ("low", "normal", "high")
    }
    assert {lane: service.store.get(job)["priority"] for lane, job in jobs.items()} == {
        lane: lane for lane in jobs
    }
    worker = start_worker(LTXV_LANE_AGING_SECONDS="600")
    for job in jobs.values():
        assert wait_state(service, job, {"succeeded", "failed"})["state"] == "succeeded"
    order = sorted(jobs, key=lambda lane: started_at(service, jobs[lane]))
    assert order == ["high", "normal", "low"]
    # Each came from its own lane's subscription.
    for lane, job in jobs.items():
        assert worker.wait_for("rendering", job_id=job)["lane"] == lane


def test_a_low_job_behind_a_stream_of_high_jobs_is_rendered_within_the_aging_bound(
    client, auth, service, start_worker
):
    aging = 3.0
    low = submit(client, auth, {**SMALL, "priority": "low"})
    # More high jobs than the worker renders in several aging periods: from the worker's
    # side a stream that never runs dry while the low job waits.
    highs = [submit(client, auth, {**SMALL, "priority": "high", "seed": n}) for n in range(40)]
    worker = start_worker(LTXV_LANE_AGING_SECONDS=str(aging))
    assert wait_state(service, low, {"succeeded", "failed"}, timeout=120)["state"] == "succeeded"
    first = worker.wait_for("rendering")
    assert first["job_id"] in highs  # high goes first

    low_started = started_at(service, low)
    high_starts = sorted(
        job["state_times"]["running"]
        for job in (service.store.get(h) for h in highs)
        if "running" in job.get("state_times", {})
    )
    # High jobs were taken before it, and high jobs were still waiting when it was taken.
    assert high_starts[0] < low_started
    still_queued = [h for h in highs if started_at_or_none(service, h) is None]
    assert still_queued or high_starts[-1] > low_started
    # Within the bound: aging, plus the render under way when it came of age (a few
    # hundred milliseconds each here), with room for a slow machine.
    waited = (low_started - high_starts[0]).total_seconds()
    render = max(
        (service.store.get(h)["timings"].get("generate_seconds", 0) for h in highs[:3]),
        default=0,
    )
    assert waited <= aging + render + 3.0, (waited, render)
    for job in highs:
        wait_state(service, job, {"succeeded", "failed"}, timeout=180)


def started_at_or_none(service, job_id: str):
    return service.store.get(job_id).get("state_times", {}).get("running")
