"""Which priority lane a worker pulls first: the highest, unless a lower one has waited
too long.

Every pull tries the lanes highest first (high, normal, low) and takes the first job it
finds, so a higher lane's job always goes before a lower lane's. A lane counts as served
when a pull took a job from it or found it empty (nothing waits there, so nothing starves).
A lane not served for `aging_seconds` is pulled first, once: behind a steady stream of
high jobs, each worker still takes a low job at least every `aging_seconds` plus the render
that was under way when the lane came of age. When several lanes are that old, they go
first, the one served longest ago first: it takes its one job, and the next goes first on
the next pull.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence


class LaneOrder:
    def __init__(
        self,
        lanes: Sequence[str],
        aging_seconds: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.lanes = tuple(lanes)  # highest first
        self.aging_seconds = aging_seconds
        self.clock = clock
        # A fresh worker starts with every lane just served: the highest lane goes first.
        started = clock()
        self._served = dict.fromkeys(self.lanes, started)

    def order(self) -> list[str]:
        """The lanes in the order to pull them now."""
        now = self.clock()
        aged = [lane for lane in self.lanes if now - self._served[lane] >= self.aging_seconds]
        # Aged lanes first, the one served longest ago first (a stable sort keeps the
        # priority order among equals): an aged lane found empty passes to the next one.
        aged.sort(key=lambda lane: self._served[lane])
        return [*aged, *(lane for lane in self.lanes if lane not in aged)]

    def served(self, lane: str) -> None:
        """A pull took a job from `lane`, or found nothing waiting there."""
        self._served[lane] = self.clock()

    def unserved_seconds(self, lane: str) -> float:
        return self.clock() - self._served[lane]
