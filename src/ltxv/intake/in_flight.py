"""When a submit must count its key's jobs in flight, and what the last count said.

The per-key limit guards the queue against one client flooding it; it is soft (requests
counted at the same moment all see room). A count is one aggregation query, as costly as
the create it would slow, so a key far below its limit is not counted on every request:
while its last count plus what this process admitted since stays within half the limit
and the count is younger than `fresh_seconds`, a submit goes ahead uncounted. Near the
limit, and whenever the count has aged, every submit counts.

Except that a count aged less than `stale_seconds` which found the key far below its
limit still lets a submit go ahead uncounted: that submit starts a fresh count in the
background (one at a time per key), as a cache serves a stale entry while it revalidates.
A key that sends one job every few seconds would otherwise wait for a count on each.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class _Reading:
    counted: int  # what the last count found
    at: float  # when, by the gauge's clock
    admitted: int  # jobs this process admitted since, uncounted
    refreshing: bool = False  # a count is being taken in the background


class InFlightGauge:
    def __init__(
        self,
        limit: int,
        fresh_seconds: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        stale_seconds: float = 30.0,
    ) -> None:
        self.limit = limit
        self.fresh_seconds = fresh_seconds
        self.stale_seconds = stale_seconds
        self.clock = clock
        self._readings: dict[str, _Reading] = {}
        self._lock = threading.Lock()

    def needs_count(self, api_key_id: str) -> bool:
        """Whether this submit must count; when it need not, it is recorded as admitted."""
        with self._lock:
            reading = self._far_below(api_key_id)
            if reading is None:
                return True
            reading.admitted += 1
            return False

    def _far_below(self, api_key_id: str) -> _Reading | None:
        """The key's reading, if it is under `stale_seconds` old and says one more job
        keeps the key within half its limit."""
        reading = self._readings.get(api_key_id)
        if reading is None or self.clock() - reading.at > self.stale_seconds:
            return None
        return reading if (reading.counted + reading.admitted + 1) * 2 <= self.limit else None

    def refresh_due(self, api_key_id: str) -> bool:
        """Whether a submit that went ahead uncounted should start a count in the
        background: its key's count has aged past `fresh_seconds`, and none is being taken.
        True once per aged count (until `counted` or `refresh_failed`)."""
        with self._lock:
            reading = self._readings.get(api_key_id)
            if reading is None or reading.refreshing:
                return False
            if self.clock() - reading.at <= self.fresh_seconds:
                return False
            reading.refreshing = True
            return True

    def refresh_failed(self, api_key_id: str) -> None:
        with self._lock:
            reading = self._readings.get(api_key_id)
            if reading is not None:
                reading.refreshing = False

    def has_room(self, api_key_id: str) -> bool:
        """Whether the last count says, as needs_count would, that the key is far from
        its limit; nothing is recorded."""
        with self._lock:
            return self._far_below(api_key_id) is not None

    def counted(
        self, api_key_id: str, value: int, admitted: int = 1, at: float | None = None
    ) -> None:
        """A count just taken (started `at`, by the gauge's clock; now if not given),
        beside the create of one more job it may not include (`admitted`: 0 for a count
        taken before any create, or in the background). A count that started before
        the reading in hand is older news and is dropped."""
        with self._lock:
            when = self.clock() if at is None else at
            held = self._readings.get(api_key_id)
            if held is not None and when < held.at:
                return
            self._readings[api_key_id] = _Reading(value, when, admitted=admitted)
