"""When a submit counts its key's jobs in flight (ltxv.intake.in_flight)."""

from __future__ import annotations

from ltxv.intake.in_flight import InFlightGauge


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def aged(counted: int, age: float) -> InFlightGauge:
    """A gauge (fresh 1 s, stale 30 s, limit 100) whose count found `counted`, `age` ago."""
    clock = Clock()
    gauge = InFlightGauge(100, fresh_seconds=1.0, stale_seconds=30.0, clock=clock)
    gauge.counted("k", counted)
    clock.now = age
    return gauge


def test_a_key_never_counted_is_counted():
    assert InFlightGauge(100).needs_count("k")


def test_far_below_the_limit_submits_go_uncounted_until_half_of_it():
    gauge = InFlightGauge(100, clock=Clock())
    gauge.counted("k", 10)  # 10 found, and the job created beside the count
    uncounted = 0
    while not gauge.needs_count("k"):
        uncounted += 1
    # 10 counted + 1 beside + 39 uncounted = 50, half the limit: the next one counts.
    assert uncounted == 39
    assert gauge.needs_count("k")  # and every one after it, until a count comes back


def test_an_aged_count_is_taken_again_in_the_background_once():
    clock = Clock()
    gauge = InFlightGauge(100, fresh_seconds=1.0, stale_seconds=30.0, clock=clock)
    gauge.counted("k", 0)
    assert not gauge.needs_count("k") and not gauge.refresh_due("k")
    clock.now = 1.5
    # Far below the limit: this submit goes ahead, and starts the one count in the background.
    assert not gauge.needs_count("k") and gauge.refresh_due("k")
    assert not gauge.needs_count("k") and not gauge.refresh_due("k")
    gauge.counted("k", 3, admitted=0)  # it came back
    clock.now = 3.0
    assert not gauge.needs_count("k") and gauge.refresh_due("k")


def test_a_failed_background_count_is_tried_again_by_the_next_submit():
    gauge = aged(0, 2.0)
    assert gauge.refresh_due("k")
    gauge.refresh_failed("k")
    assert gauge.refresh_due("k")


def test_a_count_older_than_stale_is_waited_for():
    assert aged(0, 31.0).needs_count("k")


def test_an_aged_count_near_the_limit_is_waited_for():
    assert aged(49, 2.0).needs_count("k")


def test_near_the_limit_every_submit_counts():
    gauge = InFlightGauge(3, clock=Clock())
    gauge.counted("k", 0)
    assert gauge.needs_count("k")  # 0 + 1 beside + this one = 2 > 3 / 2


def test_keys_are_counted_apart():
    gauge = InFlightGauge(100, clock=Clock())
    gauge.counted("busy", 60)
    gauge.counted("quiet", 0)
    assert gauge.needs_count("busy")
    assert not gauge.needs_count("quiet")


def test_a_count_is_as_old_as_its_start():
    clock = Clock()
    gauge = InFlightGauge(100, fresh_seconds=1.0, clock=clock)
    clock.now = 10.0
    gauge.counted("k", 0, at=8.5)  # started 1.5 s ago, throttled on its way
    assert not gauge.needs_count("k") and gauge.refresh_due("k")


def test_media_requests_go_by_an_aged_count_too():
    assert aged(0, 10.0).has_room("k")
    assert not aged(0, 31.0).has_room("k")


def test_a_count_that_started_before_the_one_in_hand_is_dropped():
    clock = Clock()
    gauge = InFlightGauge(100, fresh_seconds=1.0, clock=clock)
    clock.now = 5.0
    gauge.counted("k", 60, at=4.0)  # a count waited for, near the limit
    gauge.counted("k", 0, at=2.0, admitted=0)  # a background one, started earlier
    assert gauge.needs_count("k")  # still goes by 60
