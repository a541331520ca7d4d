"""How many event streams one API instance holds open at once, in all and per API key.

functions-framework serves requests with gunicorn's threaded worker: one thread per
request, and an open event stream keeps its thread for the stream's whole life. Without a
cap, a client opening streams by the thousand would hold every thread and starve all other
requests of the instance. So streams may take at most half of the server's threads (and at
most `LTXV_EVENTS_MAX_STREAMS`), and one key at most `LTXV_EVENTS_MAX_STREAMS_PER_KEY` of
them, so that one key cannot take them all from the others. The counts are per process,
which is per instance: gunicorn runs one worker process there.
"""

from __future__ import annotations

import os
import threading
from collections import Counter

from ltxv.core.settings import Settings


def server_threads(settings: Settings) -> int:
    """The request threads of this process, as functions-framework chooses them: THREADS,
    else 4 per CPU."""
    return settings.server_threads or (os.cpu_count() or 1) * 4


def stream_limit(settings: Settings) -> int:
    """Streams this instance holds at once: the setting, never more than half the threads."""
    return max(1, min(settings.events_max_streams, server_threads(settings) // 2))


class NoSlot(Exception):
    """No stream may open now; `per_key` says whether the key's share or the instance's
    capacity is used up."""

    def __init__(self, message: str, *, per_key: bool) -> None:
        super().__init__(message)
        self.per_key = per_key


class Slot:
    """One open stream's place; `release` is idempotent (a response may be closed twice)."""

    def __init__(self, slots: StreamSlots, key_id: str) -> None:
        self._slots, self.key_id = slots, key_id
        self._released = False

    def release(self) -> None:
        with self._slots.lock:
            if self._released:
                return
            self._released = True
            self._slots.by_key[self.key_id] -= 1
            if self._slots.by_key[self.key_id] <= 0:
                del self._slots.by_key[self.key_id]


class StreamSlots:
    def __init__(self, limit: int, per_key: int) -> None:
        self.limit, self.per_key = limit, per_key
        self.lock = threading.Lock()
        self.by_key: Counter[str] = Counter()

    @classmethod
    def from_settings(cls, settings: Settings) -> StreamSlots:
        return cls(stream_limit(settings), max(1, settings.events_max_streams_per_key))

    @property
    def open(self) -> int:
        with self.lock:
            return sum(self.by_key.values())

    def acquire(self, key_id: str) -> Slot:
        """A place for one more stream of `key_id`, or NoSlot."""
        with self.lock:
            if self.by_key[key_id] >= self.per_key:
                raise NoSlot(
                    f"this API key has {self.per_key} event streams open on this instance; "
                    "close one, or poll GET /v1/jobs/{id}",
                    per_key=True,
                )
            if sum(self.by_key.values()) >= self.limit:
                raise NoSlot(
                    "this instance holds as many event streams as it may; retry shortly, or "
                    "poll GET /v1/jobs/{id}",
                    per_key=False,
                )
            self.by_key[key_id] += 1
            return Slot(self, key_id)
