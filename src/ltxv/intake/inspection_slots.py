"""Turns at checking conditioning media, per process and per API key.

A download and decode of one input holds one of `total` slots (Settings.max_inspections:
the API serves 80 requests at once in 1 GiB, and 80 parallel 16-megapixel decodes
would not fit). One key holds at most one slot at a time: a key that streams big inputs
waits for its own earlier inspection, and the other slots stay free for other keys. A
request waits up to `wait_seconds` in all, then is refused with InspectionsBusy (503).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator

from ltxv.intake.refusals import InspectionsBusy


class _Turn:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.users = 0  # holders and waiters: the entry goes when none is left


class InspectionSlots:
    def __init__(self, total: int, wait_seconds: float) -> None:
        self.total = total
        self.wait_seconds = wait_seconds
        self._slots = threading.BoundedSemaphore(total)
        self._turns: dict[str, _Turn] = {}
        self._guard = threading.Lock()

    @contextlib.contextmanager
    def hold(self, api_key_id: str) -> Iterator[None]:
        deadline = time.monotonic() + self.wait_seconds
        with self._guard:
            turn = self._turns.setdefault(api_key_id, _Turn())
            turn.users += 1
        try:
            if not turn.lock.acquire(timeout=self.wait_seconds):
                raise InspectionsBusy(
                    "this API key's inputs are already being checked; retry shortly"
                )
            try:
                if not self._slots.acquire(timeout=max(0.0, deadline - time.monotonic())):
                    raise InspectionsBusy(
                        "too many inputs are being checked on this server right now; retry shortly"
                    )
                try:
                    yield
                finally:
                    self._slots.release()
            finally:
                turn.lock.release()
        finally:
            with self._guard:
                turn.users -= 1
                if not turn.users:
                    del self._turns[api_key_id]
