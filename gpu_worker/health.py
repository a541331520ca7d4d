"""The worker's health endpoint: `GET /healthz` answers 200 when the worker is ready, else 503.

A managed instance group's auto-healing probes it on the VM's first worker (GPU 0, port
`LTXV_HEALTH_PORT`, 8080 on a VM) and recreates a VM whose worker stays unready; the boot
script waits for it before calling a boot done; the local stack waits for it instead of
reading logs. The worker on GPU N listens on `LTXV_HEALTH_PORT + LTXV_HEALTH_PORT_OFFSET`
(the systemd unit sets the offset to N), so each worker of a multi-GPU VM has its own port.

Ready means all of:
  - the model is loaded;
  - the device is usable: for a CUDA profile torch saw the GPU and a small operation on it
    succeeded right after the load (a CPU profile such as tiny-random is usable as such);
  - the loop is alive: busy with a job and showing progress (a render step, a job taken or
    handed on) within `busy_seconds`, or pulling, with its last pull having returned (with
    messages, none or an error) within `stall_seconds`;
  - pulls work: they have not all failed for `failing_seconds` or longer, so a worker that
    cannot reach its subscription for that long says so.

The body is JSON: {"status": "ready" | "unready", "reason": ..., "state": "loading" |
"pulling" | "busy", "model": ..., "device": ..., "since_activity_seconds": ...}.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from ltxv.core.jobs import utcnow
from ltxv.core.workers import BUSY, IDLE, LOADING, RECENT_RENDERS

log = logging.getLogger(__name__)

PATH = "/healthz"


@dataclass(frozen=True)
class Snapshot:
    """What the worker's heartbeat document says (gpu_worker/heartbeat.py)."""

    state: str  # ltxv.core.workers: LOADING, IDLE or BUSY
    ready: bool
    job_id: str | None
    job_started_at: datetime | None
    render_seconds: list[float]


class Health:
    """What the worker's loop reports and what the endpoint reads; thread safe."""

    def __init__(
        self,
        *,
        model: str,
        stall_seconds: float = 120.0,
        busy_seconds: float = 900.0,
        failing_seconds: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.model = model
        self.stall_seconds = stall_seconds
        self.busy_seconds = busy_seconds
        self.failing_seconds = failing_seconds
        self._clock = clock
        self._wall_clock = wall_clock
        self._lock = threading.Lock()
        self._loaded = False
        self._device: str | None = None
        self._device_problem: str | None = None
        self._busy = False
        self._job_id: str | None = None
        now = clock()
        self._activity = now  # the loop's last sign of life
        self._failing_since: float | None = None  # the first failed pull of a streak
        self._pull_error: str | None = None
        # The current job: when it was taken (both clocks), and its last step of how many.
        self._job_since: tuple[float, datetime] | None = None
        self._steps: tuple[int, int] = (0, 0)
        self._renders: deque[float] = deque(maxlen=RECENT_RENDERS)
        self.changed = threading.Event()  # a job taken or ended: the heartbeat says so now

    # --- what the worker reports ----------------------------------------------------------

    def loaded(self, device: str, problem: str | None = None) -> None:
        """The model is loaded on `device`; `problem` says why that device is unusable."""
        with self._lock:
            self._loaded, self._device, self._device_problem = True, device, problem
            self._activity = self._clock()

    def pulled(self, error: str | None = None) -> None:
        """A pull returned: with messages or none (error None), or failed with `error`."""
        with self._lock:
            self._activity = self._clock()
            self._pull_error = error
            if error is None:
                self._failing_since = None
            elif self._failing_since is None:
                self._failing_since = self._activity

    def job_started(self, job_id: str | None) -> None:
        with self._lock:
            self._busy, self._job_id, self._activity = True, job_id, self._clock()
            self._job_since, self._steps = (self._activity, self._wall_clock()), (0, 0)
        self.changed.set()

    def progress(self, step: int = 0, total: int = 0) -> None:
        """A sign of life during a job (a render step: `step` of `total` done)."""
        with self._lock:
            self._activity = self._clock()
            self._steps = (step, total)

    def job_done(self) -> None:
        """The loop is back to pulling (the job is handed to the finisher, or settled)."""
        with self._lock:
            self._busy, self._job_id, self._activity = False, None, self._clock()
            step, total = self._steps
            # Only a render that ran to its last step is a render time: a message for a
            # job that was settled or leased elsewhere, or a canceled render, is not.
            if self._job_since is not None and total and step >= total:
                self._renders.append(self._activity - self._job_since[0])
            self._job_since = None
        self.changed.set()

    def snapshot(self) -> Snapshot:
        ready, body = self.status()
        with self._lock:
            return Snapshot(
                state={"loading": LOADING, "pulling": IDLE, "busy": BUSY}[body["state"]],
                ready=ready,
                job_id=self._job_id,
                job_started_at=self._job_since[1] if self._job_since else None,
                render_seconds=list(self._renders),
            )

    # --- what the endpoint answers --------------------------------------------------------

    def status(self) -> tuple[bool, dict[str, Any]]:
        with self._lock:
            now = self._clock()
            idle = now - self._activity
            state = "loading" if not self._loaded else "busy" if self._busy else "pulling"
            body: dict[str, Any] = {
                "model": self.model,
                "state": state,
                "device": self._device,
                "since_activity_seconds": round(idle, 1),
            }
            if self._job_id:
                body["job_id"] = self._job_id
            if not self._loaded:
                reason = "loading the model"
            elif self._device_problem:
                reason = f"device not usable: {self._device_problem}"
            elif self._busy and idle > self.busy_seconds:
                reason = f"no progress on the current job for {idle:.0f}s"
            elif not self._busy and idle > self.stall_seconds:
                reason = f"the loop has not pulled for {idle:.0f}s"
            elif self._failing_since is not None and (
                now - self._failing_since >= self.failing_seconds
            ):
                reason = (
                    f"pulls failing for {now - self._failing_since:.0f}s"
                    f" (last error: {self._pull_error})"
                )
            else:
                reason = None
        body["status"] = "unready" if reason else "ready"
        if reason:
            body["reason"] = reason
        return reason is None, body


def device_problem(device: str) -> str | None:
    """None when `device` works: for CUDA, torch sees it and a small operation on it runs."""
    if device != "cuda":
        return None
    try:
        import torch

        if not torch.cuda.is_available():
            return "torch sees no CUDA device"
        value = (torch.arange(8, device="cuda", dtype=torch.float32) * 2).sum().item()
        torch.cuda.synchronize()
    except Exception as exc:  # a broken driver raises anything
        return f"{type(exc).__name__}: {exc}"
    return None if value == 56.0 else f"a test operation on the GPU gave {value}, not 56"


class _Handler(BaseHTTPRequestHandler):
    health: Health  # set on the subclass serve() makes

    def do_GET(self) -> None:
        if self.path.split("?", 1)[0] != PATH:
            self._reply(404, {"error": f"only GET {PATH} here"})
            return
        ready, body = self.health.status()
        self._reply(200 if ready else 503, body)

    def _reply(self, code: int, body: dict[str, Any]) -> None:
        data = (json.dumps(body) + "\n").encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # a probe every few seconds is not news


def serve(health: Health, host: str, port: int) -> ThreadingHTTPServer:
    """Answer GET /healthz on host:port from a daemon thread; returns the server."""
    handler = type("HealthHandler", (_Handler,), {"health": health})
    server = ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name="health", daemon=True)
    thread.start()
    log.info("health endpoint listening", extra={"address": f"{host}:{server.server_port}"})
    return server
