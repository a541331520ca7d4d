"""Creates and `published` marks of concurrent requests share BatchWrites
(ltxv.intake.grouped_writes), against the Firestore emulator: what each request gets back
is what a write of its own would have given it."""

from __future__ import annotations

import logging
import threading
import time

import pytest
from google.api_core import exceptions as gexc

from ltxv.core import schemas
from ltxv.core.jobs import new_job, new_job_id
from ltxv.core.store import JobExists
from ltxv.intake.grouped_writes import GroupedWrites

pytestmark = pytest.mark.emulators

LOGGER = "ltxv.intake.grouped_writes"


def a_job(service, request_hash="h", job_id=None):
    request = service.intake.validate(schemas.old_predict_example(), api_key_id="k")
    return new_job(
        job_id=job_id or new_job_id(), request=request, request_hash=request_hash, api_key_id="k"
    )


class Recorded:
    """JobStore.write_together, recording each batch (the jobs created, the jobs marked,
    the thread that wrote it), and holding the first one back while `hold` is set."""

    def __init__(self, store, hold: threading.Event | None = None) -> None:
        self.store, self.write = store, store.write_together
        self.batches: list[tuple[list[str], list[str], str]] = []
        self.hold = hold
        self.lock = threading.Lock()
        store.write_together = self

    def __call__(self, creates, marks):
        with self.lock:
            first = not self.batches
            self.batches.append(
                ([j["job_id"] for j in creates], list(marks), threading.current_thread().name)
            )
        if first and self.hold is not None:
            self.hold.wait(5)
        return self.write(creates, marks)


def until(condition, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def waiting(writes: GroupedWrites, count: int) -> None:
    """Until `count` creates wait for a batch."""
    until(lambda: len(writes._creates) == count)


def joined(threads) -> None:
    for thread in threads:
        thread.join(10)
        assert not thread.is_alive()


def behind_a_held_batch(service, jobs, meanwhile=None, **options):
    """Creates each of `jobs` (name -> job) on a thread of its own while a first batch is
    held, so that all of them wait and go together in the next (`options`: GroupedWrites'
    besides writers=1; `meanwhile(writes)` runs while the first batch is held). What each
    create ended with ("created", or the exception), and the batches written."""
    hold = threading.Event()
    recorded = Recorded(service.store, hold)
    writes = GroupedWrites(service.store, writers=1, **options)
    outcomes: dict[str, object] = {}

    def create(name, job):
        try:
            writes.create(job)
            outcomes[name] = "created"
        except Exception as exc:
            outcomes[name] = exc

    first = threading.Thread(target=create, args=("first", a_job(service)))
    first.start()
    until(lambda: recorded.batches)
    if meanwhile is not None:
        meanwhile(writes)
    rest = [threading.Thread(target=create, args=item) for item in jobs.items()]
    for thread in rest:
        thread.start()
    waiting(writes, len(rest))  # all of them wait behind the first batch
    hold.set()
    joined([first, *rest])
    return outcomes, [(ids, marks) for ids, marks, _ in recorded.batches]


def published(service, job_id: str) -> bool:
    return bool((service.store.get(job_id) or {}).get("published"))


def test_a_lone_create_is_written_at_once_in_the_callers_thread(service):
    recorded = Recorded(service.store)
    writes = GroupedWrites(service.store)
    job = a_job(service)
    started = time.monotonic()
    writes.create(job)
    assert time.monotonic() - started < 1.0
    assert recorded.batches == [([job["job_id"]], [], threading.current_thread().name)]
    assert service.store.get(job["job_id"])["job_id"] == job["job_id"]


def test_creates_arriving_while_every_writer_is_busy_share_the_next_batch(service):
    jobs = {f"job{i}": a_job(service) for i in range(7)}
    outcomes, batches = behind_a_held_batch(service, jobs)
    assert set(outcomes.values()) == {"created"}
    assert len(batches) == 2 and len(batches[0][0]) == 1
    assert sorted(batches[1][0]) == sorted(job["job_id"] for job in jobs.values())
    assert all(service.store.get(job["job_id"]) for job in jobs.values())


def test_an_id_taken_by_another_job_fails_only_its_own_request(service):
    taken = a_job(service, request_hash="theirs")
    service.store.create(taken)
    mine, other = a_job(service, job_id=taken["job_id"]), a_job(service)
    outcomes, batches = behind_a_held_batch(service, {"mine": mine, "other": other})
    assert isinstance(outcomes["mine"], JobExists)
    assert outcomes["mine"].job["request_hash"] == "theirs"
    assert outcomes["other"] == outcomes["first"] == "created"
    assert sorted(batches[1][0]) == sorted([mine["job_id"], other["job_id"]])


def test_a_write_that_had_landed_before_its_retry_counts_as_done(service):
    writes = GroupedWrites(service.store)
    job = a_job(service)
    writes.create(job)
    writes.create(job)  # the same document again: this request's own, not a conflict
    with pytest.raises(JobExists):
        writes.create({**a_job(service), "job_id": job["job_id"], "request_hash": "other"})


def test_a_mark_rides_along_with_the_next_create(service):
    recorded = Recorded(service.store)
    writes = GroupedWrites(service.store, linger=5.0)
    answered, following = a_job(service), a_job(service)
    service.store.create(answered)
    writes.mark_published(answered["job_id"])
    writes.create(following)
    assert recorded.batches[0][:2] == ([following["job_id"]], [answered["job_id"]])
    assert published(service, answered["job_id"])


def test_a_mark_with_no_create_to_ride_along_is_written_after_the_linger(service):
    recorded = Recorded(service.store)
    writes = GroupedWrites(service.store, linger=0.05)
    job = a_job(service)
    service.store.create(job)
    writes.mark_published(job["job_id"])
    assert writes.flush()
    assert recorded.batches[0][:2] == ([], [job["job_id"]])
    assert published(service, job["job_id"])


def test_a_vanished_jobs_mark_is_dropped_quietly_and_the_rest_are_written(service, caplog):
    writes = GroupedWrites(service.store, linger=0.05)
    kept = a_job(service)
    service.store.create(kept)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        writes.mark_published("vanished")
        writes.mark_published(kept["job_id"])
        assert writes.flush()
    assert published(service, kept["job_id"])
    assert "could not mark" not in caplog.text


def test_a_document_firestore_refuses_fails_only_its_own_request(service):
    """Found out by writing each on its own, whether Firestore refuses the write alone
    or the whole request."""
    good, bad = a_job(service), {**a_job(service), "__reserved__": 1}
    outcomes, batches = behind_a_held_batch(service, {"good": good, "bad": bad})
    assert outcomes["first"] == outcomes["good"] == "created"
    assert isinstance(outcomes["bad"], gexc.InvalidArgument)
    assert service.store.get(good["job_id"]) and service.store.get(bad["job_id"]) is None
    # Refused together, then written one by one.
    together, *alone = [ids for ids, _ in batches[1:]]
    assert sorted(together) == sorted([good["job_id"], bad["job_id"]])
    assert sorted(alone) == sorted([[good["job_id"]], [bad["job_id"]]])


def test_an_outage_fails_the_creates_it_carried_and_the_writer_goes_on(service, caplog):
    writes = GroupedWrites(service.store, linger=0.0)
    real = service.store.write_together

    def down(creates, marks):
        raise gexc.ServiceUnavailable("firestore is down")

    service.store.write_together = down
    with pytest.raises(gexc.ServiceUnavailable):
        writes.create(a_job(service))
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        writes.mark_published("some-job")
        assert writes.flush()
    assert "could not mark job published" in caplog.text
    service.store.write_together = real
    job = a_job(service)
    writes.create(job)
    assert service.store.get(job["job_id"])


def test_two_creates_of_one_id_never_share_a_batch(service):
    """Two requests with one Idempotency-Key: BatchWrite refuses a request that writes a
    document twice, so the second waits for the next batch and finds the first's job."""
    second = a_job(service)
    again = {**a_job(service), "job_id": second["job_id"]}
    outcomes, batches = behind_a_held_batch(service, {"second": second, "again": again})
    assert list(outcomes.values()).count("created") == 2
    assert [type(o) for o in outcomes.values()].count(JobExists) == 1
    assert [ids for ids, _ in batches[1:]] == [[second["job_id"]], [second["job_id"]]]


def test_a_mark_waits_while_its_own_job_is_being_created(service):
    """A client's quick retry of a job just answered: its create and the job's mark may
    be waiting at once, and may not share a batch."""
    recorded = Recorded(service.store)
    writes = GroupedWrites(service.store, linger=5.0)
    job = a_job(service)
    service.store.create(job)
    writes.mark_published(job["job_id"])
    writes.create(job)  # the same job again: its own document, so done
    assert recorded.batches[0][:2] == ([job["job_id"]], [])
    assert writes.flush(timeout=0.1) is False  # the mark still waits for a batch
    writes.create(a_job(service))
    assert recorded.batches[1][1] == [job["job_id"]] and published(service, job["job_id"])


def test_a_full_batch_keeps_places_for_marks(service):
    marked = [a_job(service) for _ in range(2)]
    for job in marked:
        service.store.create(job)

    def mark(writes):
        for job in marked:
            writes.mark_published(job["job_id"])

    jobs = {f"job{i}": a_job(service) for i in range(5)}
    _, batches = behind_a_held_batch(service, jobs, mark, max_batch=4, linger=5.0)
    assert [(len(ids), len(marks)) for ids, marks in batches[1:]] == [(2, 2), (3, 0)]
    assert all(published(service, job["job_id"]) for job in marked)


def test_a_store_that_answers_for_other_writes_fails_the_batch_not_the_process(service):
    writes = GroupedWrites(service.store, writers=1)
    real = service.store.write_together
    service.store.write_together = lambda creates, marks: []
    with pytest.raises(RuntimeError):
        writes.create(a_job(service))
    service.store.write_together = real
    job = a_job(service)
    writes.create(job)  # the writer's place was given back
    assert service.store.get(job["job_id"])


def test_a_write_answered_with_a_passing_error_is_tried_again(service, monkeypatch):
    """Firestore may answer one write of a BatchWrite UNAVAILABLE; the emulator never
    does, so its first answer is doctored (the narrowest seam: the RPC's response)."""
    from google.cloud.firestore_v1.bulk_batch import BulkWriteBatch

    commit = BulkWriteBatch.commit
    sizes: list[int] = []

    def first_unavailable(batch, **kwargs):
        sizes.append(len(batch._write_pbs))
        answer = commit(batch, **kwargs)
        if len(sizes) == 1:
            # Undo the first write, and say it did not happen.
            service.store.ref(jobs[0]["job_id"]).delete()
            answer.status[0].code, answer.status[0].message = 14, "try again"
        return answer

    monkeypatch.setattr(BulkWriteBatch, "commit", first_unavailable)
    jobs = [a_job(service), a_job(service)]
    assert service.store.write_together(jobs, []) == [None, None]
    assert sizes == [2, 1]
    assert all(service.store.get(job["job_id"]) for job in jobs)
