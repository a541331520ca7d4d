"""The order a worker pulls its lanes in (gpu_worker/lanes.py): highest first, and a lane
left unserved for the aging period first, once, so a low job is never starved."""

from __future__ import annotations

import itertools

from gpu_worker.lanes import LaneOrder

from .conftest import Clock

LANES = ("high", "normal", "low")


def simulate(order: LaneOrder, clock: Clock, waiting: dict[str, int], render: float) -> list:
    """A worker's pulls against queues that always hold `waiting` jobs per lane (a steady
    stream refills what it takes): which lane each render came from."""
    taken = []
    for _ in range(200):
        for lane in order.order():
            order.served(lane)
            if waiting[lane]:
                taken.append((clock.now, lane))
                break
        clock.now += render
    return taken


def test_a_fresh_worker_pulls_the_highest_lane_first(clock):
    assert LaneOrder(LANES, 60, clock).order() == ["high", "normal", "low"]


def test_a_lane_unserved_for_the_aging_period_goes_first_once(clock):
    order = LaneOrder(LANES, 60, clock)
    order.served("high")
    clock.now += 59.9
    order.served("high")
    assert order.order() == ["high", "normal", "low"]
    clock.now += 0.1  # normal and low: 60 s unserved; both were served at the same time
    assert order.order()[0] in {"normal", "low"}
    first = order.order()[0]
    order.served(first)
    assert order.order()[0] == ({"normal", "low"} - {first}).pop()
    order.served(order.order()[0])
    assert order.order() == ["high", "normal", "low"]  # back to priority order


def test_the_lane_served_longest_ago_goes_first(clock):
    order = LaneOrder(LANES, 10, clock)
    clock.now += 5
    order.served("normal")
    clock.now += 20
    order.served("high")
    assert order.order() == ["low", "normal", "high"]


def test_an_empty_lane_is_not_starving(clock):
    # Found empty counts as served: a lane with nothing waiting never jumps the queue.
    order = LaneOrder(LANES, 10, clock)
    taken = simulate(order, clock, {"high": 1, "normal": 0, "low": 0}, render=3)
    assert {lane for _, lane in taken} == {"high"}


def test_behind_a_steady_stream_of_high_jobs_low_is_served_within_the_bound(clock):
    aging, render = 30.0, 4.0
    order = LaneOrder(LANES, aging, clock)
    taken = simulate(order, clock, {"high": 1, "normal": 0, "low": 1}, render)
    lows = [at for at, lane in taken if lane == "low"]
    assert len(lows) >= 2
    # The bound: the aging period plus the render under way when the lane came of age.
    start = taken[0][0]
    gaps = [b - a for a, b in zip([start, *lows], lows, strict=False)]
    assert max(gaps) <= aging + render
    # And high still gets nearly everything.
    highs = sum(1 for _, lane in taken if lane == "high")
    assert highs >= len(taken) * (aging / (aging + render)) - 1


def test_every_lane_is_served_when_all_are_busy(clock):
    aging, render = 20.0, 3.0
    order = LaneOrder(LANES, aging, clock)
    taken = simulate(order, clock, {"high": 1, "normal": 1, "low": 1}, render)
    for lane in ("normal", "low"):
        times = [at for at, taken_lane in taken if taken_lane == lane]
        gaps = [b - a for a, b in itertools.pairwise(times)]
        # Two lanes share the aged slot, so each waits at most two aging periods.
        assert times and max(gaps) <= 2 * (aging + render), (lane, gaps)
    assert [lane for _, lane in taken[:6]] == ["high"] * 6
