"""Races on one job against the Firestore and Pub/Sub emulators: many writers at once, and
replays of an Idempotency-Key while the request that created the job is still publishing.
The publish step is held at the narrowest seam (the dispatcher) to open the window."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from gpu_worker.lifecycle import JobLifecycle
from ltxv.core.store import TransactionContended
from ltxv.intake.field_errors import RequestInvalid
from ltxv.intake.refusals import Unavailable

from .conftest import pull_job_ids

pytestmark = pytest.mark.emulators

BODY = {"prompt": "a lighthouse at dawn"}


def test_many_writers_on_one_job_all_get_their_turn(service):
    job_id = service.intake.submit_http(BODY, api_key_id="default").job["job_id"]
    lifecycle = JobLifecycle(service.store, "worker-1", lease_seconds=60, model="tiny-random")
    lifecycle.claim(job_id)
    stop = threading.Event()

    def renew_lease() -> None:  # the worker's lease keeper, writing progress meanwhile
        step = 0
        while not stop.is_set():
            step += 1
            lifecycle.renew(job_id, (step, 50))

    def count(_: int) -> str:
        try:
            service.store.transact(job_id, lambda job, now: {"attempts": job["attempts"] + 1})
        except TransactionContended:
            return "contended"
        return "ok"

    keeper = threading.Thread(target=renew_lease)
    keeper.start()
    try:
        with ThreadPoolExecutor(8) as pool:
            outcomes = list(pool.map(count, range(16)))
    finally:
        stop.set()
        keeper.join()
    # Every write is applied once, none lost to another: a read-decide-write either
    # lands on what it read or decides again.
    assert outcomes.count("ok") == service.store.get(job_id)["attempts"] - 1
    assert outcomes.count("ok") >= 12, outcomes


def test_parallel_cancels_are_idempotent_and_cheap(service):
    job_id = service.intake.submit_http(BODY, api_key_id="default").job["job_id"]
    JobLifecycle(service.store, "worker-1", lease_seconds=60, model="tiny-random").claim(job_id)
    with ThreadPoolExecutor(8) as pool:
        answers = list(
            pool.map(lambda _: service.store.request_cancel(job_id, "default"), range(8))
        )
    assert all(job["cancel_requested"] and job["state"] == "running" for job, _ in answers)
    assert [changed for _, changed in answers].count(True) == 1  # one of them requested it
    first = service.store.get(job_id)
    again, changed = service.store.request_cancel(job_id, "default")
    assert changed is False
    # Once requested, another cancel changes nothing (not even updated_at).
    assert again["updated_at"] == first["updated_at"] == service.store.get(job_id)["updated_at"]


class HeldDispatcher:
    """The real dispatcher, whose first publish waits for `release` and then fails if
    `fail` is set: the window in which a creating request has not published yet."""

    def __init__(self, real, fail: bool = False) -> None:
        self.real = real
        self.timeout = real.timeout
        self.release = threading.Event()
        self.entered = threading.Event()
        self.fail = fail
        self.calls = 0

    def start(self, jobs):
        self.calls += 1
        if self.calls == 1:
            self.entered.set()
            assert self.release.wait(10)
            if self.fail:
                raise TimeoutError("Pub/Sub did not answer")
        return self.real.start(jobs)

    def wait(self, started):
        return self.real.wait(started)

    def publish(self, jobs):
        return self.wait(self.start(jobs))


def _race(service, dispatcher: HeldDispatcher) -> tuple[object, object]:
    service.intake.dispatcher = dispatcher
    outcomes: dict[str, object] = {}

    def attempt(name: str) -> None:
        try:
            outcomes[name] = service.intake.submit_http(
                BODY, api_key_id="default", idempotency_key="burst-1"
            )
        except Unavailable as exc:
            outcomes[name] = exc

    creator = threading.Thread(target=attempt, args=("creator",))
    creator.start()
    assert dispatcher.entered.wait(10)  # created, publishing
    replay = threading.Thread(target=attempt, args=("replay",))
    replay.start()
    time.sleep(0.5)  # the replay found the job unpublished and is waiting on the claim
    dispatcher.release.set()
    creator.join(15)
    replay.join(15)
    return outcomes["creator"], outcomes["replay"]


def test_a_replay_during_the_creators_publish_waits_for_it_instead_of_publishing(service, settings):
    dispatcher = HeldDispatcher(service.dispatcher)
    creator, replay = _race(service, dispatcher)
    assert creator.created and not replay.created
    assert replay.job["job_id"] == creator.job["job_id"] and replay.job["published"]
    assert dispatcher.calls == 1
    assert pull_job_ids(settings) == [creator.job["job_id"]]


def test_a_replay_is_not_accepted_when_the_creators_publish_failed_and_undid_the_job(
    service, settings
):
    dispatcher = HeldDispatcher(service.dispatcher, fail=True)
    creator, replay = _race(service, dispatcher)
    assert isinstance(creator, Unavailable) and isinstance(replay, Unavailable)
    assert list(service.firestore.collection("jobs").stream()) == []
    assert pull_job_ids(settings, timeout=0.5) == []


def test_a_write_whose_answer_was_lost_is_not_mistaken_for_someone_elses(service, monkeypatch):
    """The client library retries a write whose answer it lost; the retry then fails its
    own precondition. Deciding again would read the job as another worker's."""
    from google.api_core import exceptions as gexc
    from google.cloud.firestore_v1.document import DocumentReference

    job_id = service.intake.submit_http(BODY, api_key_id="default").job["job_id"]
    real_update = DocumentReference.update
    lost = []

    def update_answer_lost(self, *args, **kwargs):
        result = real_update(self, *args, **kwargs)  # it lands ...
        if not lost:
            lost.append(1)
            raise gexc.FailedPrecondition("the retried commit found its own write")  # ... then
        return result

    monkeypatch.setattr(DocumentReference, "update", update_answer_lost)
    lifecycle = JobLifecycle(service.store, "worker-1", lease_seconds=60, model="tiny-random")
    claim = lifecycle.claim(job_id)
    assert claim.outcome.value == "claimed" and lost == [1]
    assert claim.job["lease"]["owner"] == "worker-1" and claim.job["attempts"] == 1


def test_a_webhook_host_that_does_not_resolve_in_time_is_retryable_not_invalid(service):
    """A name server that does not answer says nothing about the URL: the client is told
    to retry (503), not that its request is wrong (422); nothing is stored."""
    import dataclasses

    from ltxv.core.urlsafety import ResolveTimeout

    def stuck(host, port):  # the seam: system_resolver giving up after its timeout
        raise ResolveTimeout(host)

    service.intake.policy = dataclasses.replace(service.intake.policy, resolver=stuck)
    body = {**BODY, "webhook_url": "https://hooks.example.com/x"}
    with pytest.raises(Unavailable, match="did not resolve in time"):
        service.intake.submit_http(body, api_key_id="default")
    assert list(service.firestore.collection("jobs").stream()) == []
    # A request wrong for other reasons too is told so (its mistakes need fixing anyway).
    with pytest.raises(RequestInvalid) as caught:
        service.intake.submit_http({**body, "height": 100}, api_key_id="default")
    assert [e.path for e in caught.value.errors] == ["$.height"]


def test_the_in_flight_count_stops_at_the_limit(service):
    """What the per-submit count reads is bounded by the limit, not by the key's backlog."""
    for _ in range(6):
        service.intake.submit_http(BODY, api_key_id="default")
    service.intake.submit_http(BODY, api_key_id="other")
    assert service.store.count_in_flight("default") == 6
    assert service.store.count_in_flight("default", up_to=4) == 4
    assert service.store.count_in_flight("other", up_to=4) == 1
