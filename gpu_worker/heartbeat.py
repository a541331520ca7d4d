"""The worker's heartbeat: its `workers/{worker_id}` document (ltxv.core.workers), written
every `LTXV_HEARTBEAT_SECONDS` and at once when it takes or ends a job, deleted when it
stops. Queue estimates (GET /v1/jobs/{id}) count the live workers of a model from these and
read their recent render times; a worker that dies stops beating and soon stops counting.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from datetime import datetime

from ltxv.core.errors import BACKEND_ERRORS
from ltxv.core.jobs import utcnow
from ltxv.core.workers import WorkerRegistry, worker_beat

from .health import Health
from .keeper import Keeper

log = logging.getLogger(__name__)


class Heartbeat(Keeper):
    thread_name = "heartbeat"
    join_seconds = 15.0  # a beat in flight has the RPC timeout (10 s) to end

    def __init__(
        self,
        registry: WorkerRegistry,
        health: Health,
        worker_id: str,
        interval: float,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        super().__init__()
        self.registry = registry
        self.health = health
        self.worker_id = worker_id
        self.interval = interval
        self.clock = clock

    def beat(self) -> None:
        """One heartbeat now (raises what Firestore raises)."""
        snapshot = self.health.snapshot()
        self.registry.beat(
            worker_beat(
                worker_id=self.worker_id,
                model=self.health.model,
                state=snapshot.state,
                ready=snapshot.ready,
                now=self.clock(),
                job_id=snapshot.job_id,
                job_started_at=snapshot.job_started_at,
                render_seconds=snapshot.render_seconds,
            )
        )

    def _run(self) -> None:
        while not self._stop.is_set():
            self.health.changed.clear()
            try:
                self.beat()
            except Exception as exc:
                # Never the worker's end: a missed beat only makes estimates more careful.
                log.warning(
                    "heartbeat not written",
                    extra={"worker_id": self.worker_id, "error": repr(exc)},
                    exc_info=not isinstance(exc, BACKEND_ERRORS),
                )
            self.health.changed.wait(self.interval)

    def stop(self) -> None:
        """Stop beating and remove the document: a worker that left is not live."""
        self._stop.set()
        self.health.changed.set()  # wakes the wait between beats
        super().stop()
        with contextlib.suppress(*BACKEND_ERRORS):
            self.registry.remove(self.worker_id)
