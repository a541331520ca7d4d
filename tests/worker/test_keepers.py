"""The worker's background keepers outlive any error: a keeper thread that dies stops
renewing a lease (another worker then takes the job over and renders it twice) or stops
extending a message (Pub/Sub hands it to another worker). Fakes stand in for Firestore and
Pub/Sub here; tests/integration runs the same threads against the emulators."""

from __future__ import annotations

import threading
import time

import pytest

from gpu_worker.lease import JobControl, LeaseKeeper
from gpu_worker.lifecycle import LeaseLost
from gpu_worker.messages import AckKeeper, Received
from gpu_worker.worker import Worker
from ltxv.core.store import TransactionContended


class FlakyLifecycle:
    lease_seconds = 0.3

    def __init__(self, failures: list[Exception]) -> None:
        self.failures = failures
        self.renewed = threading.Event()
        self.calls = 0

    def renew(self, job_id, progress):
        self.calls += 1
        if self.failures:
            raise self.failures.pop(0)
        self.renewed.set()
        return {"cancel_requested": self.calls > 4}


def test_the_lease_keeper_survives_contention_and_bugs_and_still_delivers_the_cancel():
    lifecycle = FlakyLifecycle(
        [TransactionContended("busy"), ValueError("contended, the library's way"), KeyError("x")]
    )
    control = JobControl("job-1", total_steps=10)
    keeper = LeaseKeeper(lifecycle, control, interval=0.01).start()
    try:
        assert lifecycle.renewed.wait(5)
        assert control.cancel.wait(5)  # the cancel reached the render after all
        assert not control.lost.is_set()
    finally:
        keeper.stop()


def test_the_lease_keeper_stops_only_when_the_lease_is_lost():
    lifecycle = FlakyLifecycle([RuntimeError("boom"), LeaseLost("job-1")])
    control = JobControl("job-1", total_steps=10)
    keeper = LeaseKeeper(lifecycle, control, interval=0.01).start()
    assert control.lost.wait(5)
    keeper.stop()


class FlakyMessages:
    extension = 0.02

    def __init__(self, failures: int = 2) -> None:
        self.failures = failures
        self.calls = 0
        self.nacked = 0

    def extend(self, received):
        self.calls += 1
        if self.calls <= self.failures:
            raise RuntimeError("a bug, or a transport error of another kind")

    def nack(self, received, delay_seconds=0):
        self.nacked += 1


def test_the_ack_keeper_survives_any_error():
    messages = FlakyMessages()
    keeper = AckKeeper(messages, Received("ack", "m1", "job-1", 1)).start()
    deadline = time.monotonic() + 5
    while messages.calls < 5 and time.monotonic() < deadline:
        time.sleep(0.01)
    keeper.stop()
    assert messages.calls >= 5


class BrokenLifecycle:
    model = "tiny-random"

    def claim(self, job_id, published_at=None):
        raise KeyError("a job document without a field the claim reads")


def test_an_unexpected_error_while_handling_a_message_stops_its_ack_extender(tmp_path):
    from ltxv.core.settings import Settings

    messages = FlakyMessages(failures=0)
    worker = Worker(
        Settings(),
        lifecycle=BrokenLifecycle(),
        storage_client=None,
        messages=messages,
        renderer=None,
    )
    with pytest.raises(KeyError):
        worker.handle(Received("ack", "m1", "job-1", 1, model="tiny-random"))
    extended = messages.calls
    time.sleep(0.2)  # ten extension periods
    # Left running, it would keep the message from every other worker until this exits.
    assert messages.calls == extended


def test_a_lease_that_cannot_be_renewed_stops_the_render_before_it_runs_out():
    """Firestore out of reach for a whole lease: another worker may take the job over, so
    this one stops rather than render it a second time on another GPU."""
    lifecycle = FlakyLifecycle([RuntimeError("unavailable")] * 1000)
    control = JobControl("job-1", total_steps=10)
    started = time.monotonic()
    keeper = LeaseKeeper(lifecycle, control, interval=0.01).start()
    assert control.lost.wait(5)
    assert time.monotonic() - started < lifecycle.lease_seconds
    keeper.stop()
