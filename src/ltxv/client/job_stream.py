"""Following a job through GET /v1/jobs/{id}/events, for `Client.wait`.

Each connection lives until the job settles or the server ends it (its lifetime, a backend
hiccup); then the follower waits the `retry:` the server asked for and reconnects with
`Last-Event-ID`, so it gets only what changed meanwhile. Where the stream cannot be had at
all (a server without the route: 404 or 405; the stream caps: 429 or 503; no connection;
an answer that is not an event stream), `follow` says so and the caller polls instead.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from typing import Any

import requests
import urllib3
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from ltxv.core.jobs import State

from .server_events import EventParser

log = logging.getLogger(__name__)

# Socket read timeout: the server sends a keep-alive comment every 15 s by default, so a
# connection silent for this long is dead.
READ_TIMEOUT = 60.0
# Only connection failures are retried here: a 429/503 means "poll instead", now.
STREAM_RETRY = Retry(total=2, connect=2, read=0, status=0, other=0, backoff_factor=0.2)


class StreamUnavailable(Exception):
    """The event stream cannot be used; poll."""


class Settled(Exception):
    def __init__(self, job: dict[str, Any]) -> None:
        super().__init__(job["job_id"])
        self.job = job


class JobStream:
    def __init__(self, base_session: requests.Session, url: str, connect_timeout: float) -> None:
        self.url = url
        self.connect_timeout = connect_timeout
        self.session = requests.Session()
        self.session.headers.update(base_session.headers)
        self.session.mount("http://", HTTPAdapter(max_retries=STREAM_RETRY))
        self.session.mount("https://", HTTPAdapter(max_retries=STREAM_RETRY))
        self.last_id: str | None = None
        self.retry_seconds = 1.0
        self.job: dict[str, Any] | None = None  # the latest the stream showed
        self.connections = 0

    def close(self) -> None:
        self.session.close()

    def follow(self, deadline: float | None, on_job: Callable[[dict[str, Any]], None]) -> None:
        """Read events into `on_job` until the job settles (raises Settled), the deadline
        passes (returns), or the stream is unavailable (raises StreamUnavailable)."""
        while deadline is None or time.monotonic() < deadline:
            self._connection(deadline, on_job)
            pause = self.retry_seconds
            if deadline is not None:
                pause = min(pause, max(0.0, deadline - time.monotonic()))
            time.sleep(pause)

    def _connection(self, deadline: float | None, on_job: Callable[[dict[str, Any]], None]) -> None:
        read_timeout = READ_TIMEOUT
        if deadline is not None:
            read_timeout = max(0.1, min(READ_TIMEOUT, deadline - time.monotonic()))
        headers = {"Accept": "text/event-stream", "Cache-Control": "no-cache"}
        if self.last_id:
            headers["Last-Event-ID"] = self.last_id
        try:
            response = self.session.get(
                self.url,
                headers=headers,
                stream=True,
                timeout=(self.connect_timeout, read_timeout),
            )
        except requests.RequestException as exc:
            raise StreamUnavailable(f"no connection: {exc}") from exc
        self.connections += 1
        with response:
            if response.status_code == 204 and self.job is not None:
                raise Settled(self.job)
            content_type = response.headers.get("Content-Type", "")
            if response.status_code != 200 or not content_type.startswith("text/event-stream"):
                raise StreamUnavailable(f"HTTP {response.status_code} {content_type}".strip())
            parser = EventParser()
            try:
                for chunk in response.raw.stream(4096, decode_content=True):
                    for event in parser.feed(chunk):
                        self._on_event(event.event, event.data, event.id, on_job)
                    if parser.retry_ms is not None:
                        self.retry_seconds = parser.retry_ms / 1000
            except (requests.RequestException, urllib3.exceptions.HTTPError, OSError) as exc:
                # A read timeout or a dropped connection: reconnect with Last-Event-ID.
                log.debug("event stream interrupted", extra={"error": str(exc)})

    def _on_event(
        self, name: str, data: str, event_id: str | None, on_job: Callable[[dict[str, Any]], None]
    ) -> None:
        if name not in ("state", "progress"):
            return
        try:
            job = json.loads(data)
        except ValueError as exc:
            raise StreamUnavailable("an event's data is not JSON") from exc
        self.last_id = event_id
        self.job = job
        on_job(job)
        if State(job["state"]).terminal:
            raise Settled(job)


def follow_events(
    session: requests.Session,
    url: str,
    connect_timeout: float,
    deadline: float | None,
    on_job: Callable[[dict[str, Any]], None],
) -> tuple[str, dict[str, Any] | None]:
    """("settled", job), ("timed_out", the latest job seen or None), or ("unavailable",
    None): poll then."""
    stream = JobStream(session, url, connect_timeout)
    try:
        stream.follow(deadline, on_job)
        return "timed_out", stream.job
    except Settled as settled:
        return "settled", settled.job
    except StreamUnavailable as exc:
        log.info("event stream unavailable; polling", extra={"reason": str(exc)})
        return "unavailable", None
    finally:
        stream.close()


def changes_only(
    on_progress: Callable[[dict[str, Any]], None] | None,
) -> Callable[[dict[str, Any]], None]:
    """`on_progress`, called only for a job whose state or denoising step changed (the
    stream and polling may both show the same job)."""
    seen: tuple[Any, Any] | None = None

    def report(job: dict[str, Any]) -> None:
        nonlocal seen
        mark = (job["state"], (job.get("progress") or {}).get("step"))
        if on_progress and mark != seen:
            on_progress(job)
        seen = mark

    return report
