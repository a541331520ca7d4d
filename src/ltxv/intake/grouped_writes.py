"""Job creates and `published` marks of concurrent requests, written together.

Most of what a Firestore write costs, in the client, on the wire and in the emulator, is
the request around it, not the document (bench/submit.py prints the CPU). So the creates
of the submits in flight at one moment share one BatchWrite, and the `published` marks of
the jobs answered just before ride along with them: a submit waits for the batch that
carries its create, and never for a mark. BatchWrite is not atomic: each write succeeds
or fails on its own, so one request's conflict or refused document is nobody else's.

Group commit, as databases do it: nothing waits to fill a batch. While fewer than
`writers` batches are in flight, a request writes its create itself, at once, with what
is waiting; the creates arriving while all are in flight go out together with the next
one. So a lone request pays one round trip in its own thread, as it would alone. Marks
with no create to ride along go out on their own after `linger` seconds.

A mark only tells the redispatch sweep to leave a job alone (`submission`): one lost
with its process costs one more message, which the worker's claim ignores.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field

from google.api_core import exceptions as gexc

from ltxv.core.errors import BACKEND_ERRORS
from ltxv.core.jobs import Job
from ltxv.core.store import JobStore

log = logging.getLogger(__name__)

# Writes in one BatchWrite: far below Firestore's 500, and fewer where request bodies may be
# large (`writes_per_batch`), so that a batch stays inside its 10 MiB per request. A batch
# Firestore refuses as a whole is written again one document at a time.
MAX_BATCH = 50
BATCH_BYTES = 8 * 1024 * 1024
# What a stored job holds beside its request (state, times, hashes, the webhook record).
JOB_OVERHEAD_BYTES = 16 * 1024
# Places in every batch kept for marks, so that a steady flood of creates cannot hold the
# marks back until the sweep publishes their jobs a second time.
MARK_PLACES = 5


def writes_per_batch(max_body_bytes: int) -> int:
    """How many jobs of the largest request body fit one BatchWrite, at most MAX_BATCH."""
    return max(1, min(MAX_BATCH, BATCH_BYTES // (max_body_bytes + JOB_OVERHEAD_BYTES)))


@dataclass
class _Create:
    job: Job
    taken: bool = False  # into a batch being written
    done: threading.Event = field(default_factory=threading.Event)
    error: Exception | None = None


class GroupedWrites:
    def __init__(
        self, store: JobStore, *, writers: int = 4, linger: float = 0.02, max_batch: int = MAX_BATCH
    ) -> None:
        self.store = store
        self.writers = writers  # BatchWrites in flight at once
        self.linger = linger
        self.max_batch = max_batch
        self._creates: deque[_Create] = deque()
        self._marks: dict[str, float] = {}  # job id -> when it was added (monotonic)
        self._busy = 0  # batches taken and being written
        self._marker: threading.Thread | None = None
        self._wake = threading.Condition()

    def create(self, job: Job) -> None:
        """Create the job's document, as `JobStore.create` does (JobExists if its id is
        taken by another job, a backend error as such): in this thread, with whatever
        else is waiting, when fewer than `writers` batches are in flight; else in the
        batch of the thread that takes it next."""
        write = _Create(job)
        with self._wake:
            self._creates.append(write)
        while True:
            with self._wake:
                while not write.taken and self._busy >= self.writers:
                    self._wake.wait()
                if write.taken:  # by this thread last time round, or by another
                    break
                creates, marks = self._take()
            self._write(creates, marks)
        write.done.wait()
        if isinstance(write.error, gexc.AlreadyExists):
            self.store.taken(job)
        elif write.error is not None:
            raise write.error

    def mark_published(self, job_id: str) -> None:
        """Mark the job published with a later batch; returns at once."""
        with self._wake:
            self._marks.setdefault(job_id, time.monotonic())
            if self._marker is None or not self._marker.is_alive():
                self._marker = threading.Thread(
                    target=self._mark_forever, name="published-marks", daemon=True
                )
                self._marker.start()
            self._wake.notify_all()

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every write added so far is done (or given up on); for tests. (Marks
        that die with their process cost a second message, which the sweep sends.) False
        if they were not done within `timeout`."""
        with self._wake:
            return self._wake.wait_for(
                lambda: not self._creates and not self._marks and not self._busy, timeout
            )

    def _take(self) -> tuple[list[_Create], list[str]]:
        """The next batch: the creates waiting, oldest first, and the marks that fit beside
        them, a few places always kept for marks. BatchWrite allows one write per document,
        so a second create of the same id (two requests with one Idempotency-Key) waits
        for the next batch, and a mark whose job is being created here (a client's quick
        retry of an answered job) waits too."""
        marks_room = min(len(self._marks), MARK_PLACES, self.max_batch - 1)
        creates: list[_Create] = []
        held: list[_Create] = []
        ids: set[str] = set()
        while self._creates and len(creates) < self.max_batch - marks_room:
            write = self._creates.popleft()
            if write.job["job_id"] in ids:
                held.append(write)
                continue
            write.taken = True
            creates.append(write)
            ids.add(write.job["job_id"])
        self._creates.extendleft(reversed(held))
        marks = [job_id for job_id in self._marks if job_id not in ids]
        marks = marks[: self.max_batch - len(creates)]
        for job_id in marks:
            del self._marks[job_id]
        self._busy += 1
        return creates, marks

    def _mark_forever(self) -> None:
        """Writes the marks no create took along within `linger` seconds."""
        while True:
            with self._wake:
                while (left := self._until_marks_due()) != 0 or self._busy >= self.writers:
                    self._wake.wait(left or None)  # None: until a batch is done or a mark added
                creates, marks = self._take()
            self._write(creates, marks)

    def _until_marks_due(self) -> float | None:
        if not self._marks:
            return None
        oldest = next(iter(self._marks.values()))
        return max(0.0, oldest + self.linger - time.monotonic())

    def _write(self, creates: list[_Create], marks: list[str]) -> None:
        """Write a batch `_take` took; whatever happens, every create in it is done and
        its writer's place is given back (a create waits on nothing else)."""
        count = len(creates) + len(marks)
        outcomes: list[Exception | None] = [RuntimeError("job write failed")] * count
        try:
            outcomes = self._outcomes([write.job for write in creates], marks)
            if len(outcomes) != count:
                raise RuntimeError(f"the job store answered {len(outcomes)} of {count} writes")
        except Exception as exc:  # a bug: the requests get a 500, none waits forever
            log.exception("job write failed")
            outcomes = [RuntimeError(f"job write failed: {exc!r}")] * count
        finally:
            for write, outcome in zip(creates, outcomes[: len(creates)], strict=True):
                write.error = outcome
                write.done.set()
            self._log_marks(marks, outcomes[len(creates) :])
            with self._wake:
                self._busy -= 1
                self._wake.notify_all()

    def _outcomes(self, jobs: list[Job], marks: list[str]) -> list[Exception | None]:
        try:
            return self.store.write_together(jobs, marks)
        except gexc.InvalidArgument as exc:
            if len(jobs) + len(marks) == 1:
                return [exc]
            # One document spoilt the request: each on its own finds which.
            return [self._write_alone([job], []) for job in jobs] + [
                self._write_alone([], [job_id]) for job_id in marks
            ]
        except BACKEND_ERRORS as exc:
            return [exc] * (len(jobs) + len(marks))

    def _write_alone(self, jobs: list[Job], marks: list[str]) -> Exception | None:
        try:
            return self.store.write_together(jobs, marks)[0]
        except BACKEND_ERRORS as exc:
            return exc

    @staticmethod
    def _log_marks(marks: list[str], outcomes: list[Exception | None]) -> None:
        for job_id, outcome in zip(marks, outcomes, strict=False):
            # NotFound: the job is gone (undone, expired) and needs no mark.
            if outcome is not None and not isinstance(outcome, gexc.NotFound):
                log.warning(
                    "could not mark job published", extra={"job_id": job_id, "error": str(outcome)}
                )
