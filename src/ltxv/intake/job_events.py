"""GET /v1/jobs/{id}/events: a job's state changes and progress as Server-Sent Events,
until it settles.

How the stream learns of changes: it reads the job document every
`LTXV_EVENTS_POLL_SECONDS` (1 s: 60 reads a minute per open stream, about 18,000 over the
5-minute life of one connection, bounded by the stream cap). A Firestore listener
(`on_snapshot`) would read less, but each one is a gRPC stream with its own thread and
reconnection logic in every instance, against a document the worker writes at most every
2 s anyway; one read a second is simple, bounded and the same against the emulator and
in the cloud.

What it sends (docs/api.md has the whole contract):
- first `retry: <ms>`, the reconnection delay the client should use;
- `event: state` (the first event of each connection, and whenever the state, attempts,
  cancel request or error changed) or `event: progress` (only the denoising step moved);
  `data` is the job exactly as GET /v1/jobs/{id} answers it, on one line;
- `: keep-alive` after `LTXV_EVENTS_HEARTBEAT_SECONDS` without anything else, so that
  proxies keep the connection;
- after the event of a settled job, the end of the stream; after
  `LTXV_EVENTS_LIFETIME_SECONDS` (well under the function's request timeout), a last
  `retry:` and the end: the client reconnects with `Last-Event-ID`.

Event ids are `<update time in µs>-<digest>`: Firestore's update time of the version the
event shows (it grows with every write of the document) and a digest of what the event
shows (job id, state, attempts, progress, cancel request, error). Resuming, the server
sends the current job at once if its digest differs from the one in `Last-Event-ID`,
and otherwise waits for the next change: nothing the client has is sent again, and the
latest state is never skipped (states a job passed through between two reads are folded
into the next event, as the document keeps no history). A client that already has a
settled job's last event gets `204 No Content`, which also stops an EventSource from
reconnecting.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Callable, Generator, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

from flask import Response

from ltxv.core.errors import BACKEND_ERRORS
from ltxv.core.jobs import Job, State
from ltxv.core.settings import Settings
from ltxv.core.store import JobStore
from ltxv.intake.job_views import JobViews
from ltxv.intake.responses import HttpError, unavailable
from ltxv.intake.routes import JOB_ID
from ltxv.intake.stream_slots import NoSlot, Slot, StreamSlots

log = logging.getLogger(__name__)

LAST_EVENT_ID = re.compile(r"([0-9]{1,20})-([0-9a-f]{16})", re.ASCII)
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
KEEP_ALIVE = b": keep-alive\n\n"
HEADERS = {
    # no-cache as the SSE spec asks; X-Accel-Buffering: no tells nginx-style proxies not to
    # hold the stream back until it ends.
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",
    "X-Content-Type-Options": "nosniff",
}


def visible(job: Job) -> dict[str, Any]:
    """What an event is about: a change here is an event, any other write is not."""
    error = job.get("error") or None
    return {
        "state": job["state"],
        "attempts": job.get("attempts", 0),
        "cancel_requested": bool(job.get("cancel_requested")),
        "error": error and {"code": error.get("code"), "message": error.get("message")},
        "progress": job.get("progress") or None,
    }


def digest(job: Job) -> str:
    shown = json.dumps([job["job_id"], visible(job)], sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(shown.encode("utf-8")).hexdigest()[:16]


def event_id(version: datetime, job_digest: str) -> str:
    return f"{(version - EPOCH) // timedelta(microseconds=1)}-{job_digest}"


def last_digest(header: str | None) -> str | None:
    """The digest in a Last-Event-ID this API sent; 400 for anything else."""
    if header is None or not header.strip():
        return None
    match = LAST_EVENT_ID.fullmatch(header.strip())
    if not match:
        raise HttpError(
            400,
            "invalid_argument",
            "Last-Event-ID must be the id of an event this stream sent",
            [{"path": "header.Last-Event-ID", "message": "expected <digits>-<16 hex digits>"}],
        )
    return match.group(2)


class JobEvents:
    """Opens event streams: the checks that answer before a stream starts (404, 204, the
    stream caps), then the stream itself."""

    def __init__(
        self,
        settings: Settings,
        store: JobStore,
        views: JobViews,
        *,
        sleep: Callable[[float], None],
        clock: Callable[[], float],
    ) -> None:
        self.settings, self.store, self.views = settings, store, views
        self.sleep, self.clock = sleep, clock
        self.slots = StreamSlots.from_settings(settings)

    def open(self, job_id: str, key_id: str, last_event_id: str | None) -> Response:
        seen = last_digest(last_event_id)
        read = self.store.get_versioned(job_id) if JOB_ID.match(job_id) else None
        if read is None or read[0]["api_key_id"] != key_id:
            raise HttpError(404, "not_found", f"job {job_id} not found")
        job, version = read
        if State(job["state"]).terminal and digest(job) == seen:
            # The client has the settled job's last event: nothing will ever follow.
            response = Response(status=204)
            response.headers.update(HEADERS)
            return response
        try:
            slot = self.slots.acquire(key_id)
        except NoSlot as exc:
            if exc.per_key:
                raise HttpError(
                    429, "too_many_streams", str(exc), headers={"Retry-After": "30"}
                ) from exc
            raise unavailable(str(exc)) from exc
        stream = EventStream(self, job, version, seen, slot)
        response = Response(stream, mimetype="text/event-stream")
        response.headers.update(HEADERS)
        return response

    def job_json(self, job: Job) -> str:
        # ASCII only: a parser that splits lines at U+2028 (Python's str.splitlines does)
        # must not cut an event in two.
        return json.dumps(self.views.job(job), separators=(",", ":"), allow_nan=False)


class EventStream:
    """The body of one stream: an iterable whose `close` (called by the server when the
    response ends or the client goes away, started or not) gives its slot back."""

    def __init__(
        self, events: JobEvents, job: Job, version: datetime, seen: str | None, slot: Slot
    ) -> None:
        self.events, self.job, self.version, self.seen, self.slot = events, job, version, seen, slot
        self._running: Generator[bytes, None, None] | None = None

    def __iter__(self) -> Iterator[bytes]:
        self._running = self._run()
        return self._running

    def close(self) -> None:
        try:
            if self._running is not None:
                self._running.close()
        finally:
            self.slot.release()

    def _run(self) -> Generator[bytes, None, None]:
        settings, clock = self.events.settings, self.events.clock
        retry = f"retry: {round(settings.events_retry_seconds * 1000)}\n".encode()
        started = last_write = clock()
        job, version, shown = self.job, self.version, None
        sent, ended = 0, "client went away"
        try:
            yield retry + b"\n"
            while True:
                now_digest = digest(job)
                if now_digest != self.seen:
                    yield self._event(job, version, now_digest, shown)
                    self.seen, shown, last_write, sent = now_digest, visible(job), clock(), sent + 1
                if State(job["state"]).terminal:
                    ended = "settled"
                    return
                elapsed = clock() - started
                if elapsed >= settings.events_lifetime_seconds:
                    ended = "lifetime"
                    yield b": lifetime reached; reconnect with Last-Event-ID\n" + retry + b"\n"
                    return
                if clock() - last_write >= settings.events_heartbeat_seconds:
                    yield KEEP_ALIVE
                    last_write = clock()
                self.events.sleep(
                    max(
                        0.0,
                        min(
                            settings.events_poll_seconds,
                            settings.events_lifetime_seconds - elapsed,
                            settings.events_heartbeat_seconds - (clock() - last_write),
                        ),
                    )
                )
                try:
                    read = self.events.store.get_versioned(job["job_id"])
                except BACKEND_ERRORS as exc:
                    ended = f"backend unavailable: {exc}"
                    yield b": the job cannot be read right now; reconnect\n" + retry + b"\n"
                    return
                if read is None:
                    ended = "job gone"
                    return
                job, version = read
        finally:
            log.info(
                "event stream ended",
                extra={"job_id": job["job_id"], "reason": ended, "events": sent},
            )

    def _event(
        self, job: Job, version: datetime, job_digest: str, shown: dict[str, Any] | None
    ) -> bytes:
        now = visible(job)
        only_progress = shown is not None and {**shown, "progress": None} == {
            **now,
            "progress": None,
        }
        name = "progress" if only_progress else "state"
        data = self.events.job_json(job)
        return f"event: {name}\nid: {event_id(version, job_digest)}\ndata: {data}\n\n".encode()
