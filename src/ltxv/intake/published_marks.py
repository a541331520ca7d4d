"""`published` marks written after the answer, a few requests' worth in one batch write.

The mark only tells the redispatch sweep to leave a job alone (`submission`), so it need
not hold up the client, nor take a write of its own: under load, the marks of the jobs
accepted within `linger` seconds share one batched commit, and Firestore does one write's
round trip for them all. A mark lost with its process costs one more message, which the
worker's claim ignores.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from google.api_core import exceptions as gexc

from ltxv.core.errors import BACKEND_ERRORS

log = logging.getLogger(__name__)

# Firestore's limit of writes in one batch.
MAX_BATCH = 500


class PublishedMarks:
    def __init__(self, mark: Callable[[list[str]], None], linger: float = 0.02) -> None:
        self._mark = mark  # JobStore.mark_published
        self.linger = linger
        self._pending: list[str] = []
        self._wake = threading.Condition()
        self._writer: threading.Thread | None = None
        self._busy = False  # a batch taken off `_pending` is being written

    def add(self, job_id: str) -> None:
        with self._wake:
            self._pending.append(job_id)
            if self._writer is None or not self._writer.is_alive():
                self._writer = threading.Thread(
                    target=self._write_forever, name="published-marks", daemon=True
                )
                self._writer.start()
            self._wake.notify()

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every mark added so far is written (or given up on); for tests and
        a clean shutdown. False if they were not done within `timeout`."""
        with self._wake:
            return self._wake.wait_for(lambda: not self._pending and not self._busy, timeout)

    def _write_forever(self) -> None:
        while True:
            with self._wake:
                self._wake.wait_for(lambda: bool(self._pending))
                self._busy = True
            # The requests arriving meanwhile join this batch.
            threading.Event().wait(self.linger)
            with self._wake:
                batch, self._pending = self._pending[:MAX_BATCH], self._pending[MAX_BATCH:]
            self._write(batch)
            with self._wake:
                self._busy = False
                self._wake.notify_all()

    def _write(self, job_ids: list[str]) -> None:
        try:
            self._mark(job_ids)
            return
        except gexc.NotFound:
            pass  # one of them is gone (undone, expired): the batch fails whole
        except BACKEND_ERRORS as exc:
            log.warning("could not mark jobs published", extra={"error": str(exc)})
            return
        for job_id in job_ids:
            try:
                self._mark([job_id])
            except gexc.NotFound:
                continue
            except BACKEND_ERRORS as exc:
                log.warning(
                    "could not mark job published", extra={"job_id": job_id, "error": str(exc)}
                )
