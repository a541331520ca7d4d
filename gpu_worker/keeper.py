"""A background thread that keeps something alive for one job until told to stop."""

from __future__ import annotations

import threading
from typing import Self


class Keeper:
    """Runs `_run` on a daemon thread from `start()`; `_run` returns once `_stop` is set."""

    thread_name = "keeper"
    join_seconds = 5.0  # how long `stop()` waits for the last round to end

    def __init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=self.thread_name, daemon=True)

    def start(self) -> Self:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout=self.join_seconds)

    def _run(self) -> None:
        raise NotImplementedError
