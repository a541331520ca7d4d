"""GET /v1/jobs/{id}/events over real HTTP: the submit function under functions-framework
(gunicorn, as deployed) against the emulators, read by a raw HTTP reader and by the
project's Client; the GPU worker on tiny-random where a real render is needed."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import queue
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ltxv.client import Client
from ltxv.client.job_stream import follow_events
from ltxv.core.jobs import utcnow
from ltxv.local.executables import venv_tool
from ltxv.local.processes import free_ports

from ..bodies import SLOW, SMALL
from . import test_worker
from .conftest import API_KEY, OTHER_KEY, SUBMIT_SOURCE, settle

pytestmark = pytest.mark.emulators

# The worker fixtures, shared with test_worker (as test_routing does).
tiny_model_dir = test_worker.tiny_model_dir
start_worker = test_worker.start_worker

# Small intervals so that a test sees each behaviour within a second or two.
FAST = {
    "LTXV_EVENTS_POLL_SECONDS": "0.1",
    "LTXV_EVENTS_HEARTBEAT_SECONDS": "0.5",
    "LTXV_EVENTS_LIFETIME_SECONDS": "60",
    "LTXV_EVENTS_RETRY_SECONDS": "0.2",
    "THREADS": "16",
}


@dataclass
class ApiServer:
    url: str
    log: Path
    proc: subprocess.Popen[bytes]

    def requests(self) -> list[tuple[str, int]]:
        """(path, status) of every request the function logged."""
        seen = []
        for line in self.log.read_text().splitlines():
            with contextlib.suppress(ValueError):
                entry = json.loads(line)
                if entry.get("message") == "request":
                    http = entry["httpRequest"]
                    seen.append((http["requestUrl"], http["status"]))
        return seen


@pytest.fixture
def start_api(env, tmp_path) -> Iterator:
    """The api entry point of functions/submit/main.py under functions-framework, with the
    test's LTXV_* environment plus FAST and `overrides`."""
    started: list[ApiServer] = []

    def start(**overrides: str) -> ApiServer:
        (port,) = free_ports(1)
        log = tmp_path / f"api-{len(started)}.log"
        with log.open("ab") as out:
            proc = subprocess.Popen(
                [
                    str(venv_tool("functions-framework")),
                    *("--source", SUBMIT_SOURCE, "--target", "api"),
                    *("--host", "127.0.0.1", "--port", str(port)),
                ],
                env={**os.environ, **FAST, **overrides},
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        server = ApiServer(f"http://127.0.0.1:{port}", log, proc)
        started.append(server)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with contextlib.suppress(requests.ConnectionError):
                if requests.get(f"{server.url}/healthz", timeout=2).ok:
                    return server
            assert proc.poll() is None, log.read_text()
            time.sleep(0.1)
        raise AssertionError(f"the API did not start:\n{log.read_text()}")

    yield start
    for server in started:
        server.proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            server.proc.wait(10)
        if server.proc.poll() is None:
            server.proc.kill()


@dataclass
class Block:
    """One blank-line-terminated block of the stream, fields as sent."""

    fields: list[tuple[str, str]] = field(default_factory=list)

    def get(self, name: str) -> str | None:
        return next((value for key, value in self.fields if key == name), None)

    @property
    def comment(self) -> str | None:
        return self.get("")

    @property
    def job(self) -> dict[str, Any]:
        return json.loads(self.get("data") or "null")


class RawStream:
    """A stream read with http.client, line by line, without the client's parser. A thread
    reads the lines (a socket that timed out once cannot be read again), so that a test
    can look at what arrived within some seconds and go on reading later."""

    def __init__(self, url: str, job_id: str, key: str = API_KEY, **headers: str) -> None:
        host = url.removeprefix("http://")
        self.conn = http.client.HTTPConnection(host, timeout=60)
        all_headers = {"X-API-Key": key, "Accept": "text/event-stream", **headers}
        self.conn.request("GET", f"/v1/jobs/{job_id}/events", headers=all_headers)
        self.response = self.conn.getresponse()
        self.status = self.response.status
        self.lines: queue.Queue[str | None] = queue.Queue()
        if self.status == 200:
            threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        try:
            while raw := self.response.readline():
                self.lines.put(raw.decode("utf-8").rstrip("\r\n"))
        except (OSError, ValueError, AttributeError, http.client.HTTPException):
            pass  # closed by the test
        finally:
            self.lines.put(None)

    def blocks(self, seconds: float | None = None) -> Iterator[Block]:
        """Blocks until the stream ends (or `seconds` have passed)."""
        deadline = None if seconds is None else time.monotonic() + seconds
        block = Block()
        while True:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return
            try:
                line = self.lines.get(timeout=left)
            except queue.Empty:
                return
            if line is None:
                self.lines.put(None)  # stays ended for the next call
                return
            if not line:
                yield block
                block = Block()
                continue
            name, _, value = line.partition(":")
            block.fields.append((name, value.removeprefix(" ")))

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.conn.sock and self.conn.sock.shutdown(socket.SHUT_RDWR)
        self.conn.close()


def events(blocks: list[Block]) -> list[Block]:
    return [b for b in blocks if b.get("event")]


def submit(server: ApiServer, body: dict, key: str = API_KEY) -> dict:
    response = requests.post(
        f"{server.url}/v1/jobs", json=body, headers={"X-API-Key": key}, timeout=10
    )
    assert response.status_code == 202, response.text
    return response.json()


def write(service, job_id: str, **changes) -> None:
    """A worker's write, straight to Firestore."""
    service.firestore.collection("jobs").document(job_id).update(
        {"updated_at": utcnow(), **changes}
    )


def run(service, job_id: str, step: int, total: int = 4) -> None:
    write(service, job_id, state="running", attempts=1, progress={"step": step, "total": total})


def numeric(event_id: str) -> int:
    return int(event_id.split("-")[0])


# --- a real render, read by a raw reader and by the Client at once --------------------------


def test_a_render_streams_queued_running_progress_succeeded_then_ends(
    start_api, start_worker, service
):
    server = start_api(LTXV_EVENTS_LIFETIME_SECONDS="600")  # one connection, however slow
    job = submit(server, SLOW)
    raw = RawStream(server.url, job["job_id"])
    assert raw.status == 200
    assert raw.response.getheader("Content-Type").startswith("text/event-stream")
    assert raw.response.getheader("Cache-Control") == "no-cache"
    assert raw.response.getheader("X-Accel-Buffering") == "no"
    read: list[Block] = []
    reader = threading.Thread(target=lambda: read.extend(raw.blocks()))
    reader.start()
    seen: list[dict] = []
    waited: list[dict] = []
    waiter = threading.Thread(
        target=lambda: waited.append(
            Client(server.url, API_KEY).wait(job["job_id"], timeout=400, on_progress=seen.append)
        )
    )
    waiter.start()
    time.sleep(1.0)  # both streams are open on a queued job before the worker starts
    start_worker(LTXV_PROGRESS_INTERVAL_SECONDS="0.3")
    reader.join(400)
    waiter.join(400)
    raw.close()

    assert read[0].get("retry") == "200"  # first, the reconnection delay
    stream = events(read)
    assert stream[0].get("event") == "state"
    states = [e.job["state"] for e in stream]
    assert states[0] == "queued" and states[-1] == "succeeded"
    assert "running" in states
    progress = [e.job["progress"]["step"] for e in stream if e.get("event") == "progress"]
    assert len(progress) >= 2 and progress == sorted(progress)
    assert stream[-1].job["video_url"]  # the job as GET /v1/jobs/{id} answers it
    ids = [e.get("id") for e in stream]
    assert len(set(ids)) == len(ids) and [numeric(i) for i in ids] == sorted(map(numeric, ids))
    # The Client saw the same life through the stream, not by polling.
    assert waited and waited[0]["state"] == "succeeded" and waited[0]["video_url"]
    assert seen[0]["state"] == "queued" and seen[-1]["state"] == "succeeded"
    assert sum(1 for j in seen if j["state"] == "running") >= 2
    paths = [path for path, _ in server.requests()]
    assert paths.count(f"/v1/jobs/{job['job_id']}/events") == 2
    assert f"/v1/jobs/{job['job_id']}" not in paths


# --- resuming --------------------------------------------------------------------------------


def test_last_event_id_resumes_with_only_what_changed_since(start_api, service):
    server = start_api()
    job_id = submit(server, SMALL)["job_id"]
    first = RawStream(server.url, job_id)
    queued = next(b for b in first.blocks(5) if b.get("event"))
    first.close()
    assert queued.job["state"] == "queued"

    # Nothing changed since: no event, only keep-alives, until the worker writes.
    again = RawStream(server.url, job_id, **{"Last-Event-ID": queued.get("id")})
    quiet = list(again.blocks(1.2))
    assert not events(quiet) and sum(b.comment == "keep-alive" for b in quiet) >= 2
    run(service, job_id, step=1)
    running = next(b for b in again.blocks(5) if b.get("event"))
    again.close()
    assert running.job["progress"] == {"step": 1, "total": 4}
    assert numeric(running.get("id")) > numeric(queued.get("id"))

    # A write nobody sees (the lease) is no event; the next step is.
    resumed = RawStream(server.url, job_id, **{"Last-Event-ID": running.get("id")})
    write(service, job_id, lease={"owner": "w", "expires_at": utcnow()})
    assert not events(list(resumed.blocks(0.8)))
    run(service, job_id, step=2)
    run_events = []
    for block in resumed.blocks(10):
        if block.get("event"):
            run_events.append(block)
            if len(run_events) == 1:
                run(service, job_id, step=3)
            elif len(run_events) == 2:
                settle(service, job_id).join()
    resumed.close()
    assert [(e.get("event"), e.job["state"]) for e in run_events] == [
        ("state", "running"),
        ("progress", "running"),
        ("state", "succeeded"),
    ]
    assert [e.job["progress"]["step"] for e in run_events[:2]] == [2, 3]

    # The client has the settled job's last event: 204, nothing to reconnect for.
    done = requests.get(
        f"{server.url}/v1/jobs/{job_id}/events",
        headers={"X-API-Key": API_KEY, "Last-Event-ID": run_events[-1].get("id")},
        timeout=5,
    )
    assert done.status_code == 204 and not done.content
    # An older id gets the settled job at once, and the end.
    stale = RawStream(server.url, job_id, **{"Last-Event-ID": queued.get("id")})
    assert [e.job["state"] for e in events(list(stale.blocks(5)))] == ["succeeded"]
    stale.close()


# --- lifetime and heartbeat -----------------------------------------------------------------


def test_the_lifetime_ends_a_stream_with_a_retry_and_the_client_reconnects(start_api, service):
    server = start_api(LTXV_EVENTS_LIFETIME_SECONDS="1")
    job_id = submit(server, SMALL)["job_id"]
    raw = RawStream(server.url, job_id)
    started = time.monotonic()
    blocks = list(raw.blocks(10))  # returns when the server ends the stream
    raw.close()
    assert 0.9 <= time.monotonic() - started < 5
    assert [e.job["state"] for e in events(blocks)] == ["queued"]
    assert blocks[-1].get("retry") == "200"
    assert "lifetime reached" in (blocks[-1].comment or "")

    settle(service, job_id, delay=3.5)
    states: list[str] = []
    job = Client(server.url, API_KEY).wait(
        job_id, timeout=30, on_progress=lambda j: states.append(j["state"])
    )
    assert job["state"] == "succeeded" and states == ["queued", "succeeded"]
    paths = [path for path, _ in server.requests()]
    assert paths.count(f"/v1/jobs/{job_id}/events") >= 4  # the raw one, then reconnects
    assert f"/v1/jobs/{job_id}" not in paths  # never fell back to polling


def test_heartbeat_comments_keep_a_quiet_stream_open(start_api):
    server = start_api(LTXV_EVENTS_HEARTBEAT_SECONDS="0.3")
    job_id = submit(server, SMALL)["job_id"]
    raw = RawStream(server.url, job_id)
    blocks = list(raw.blocks(1.6))
    raw.close()
    assert len(events(blocks)) == 1
    assert sum(b.comment == "keep-alive" for b in blocks) >= 4


# --- who may read, and bad input -------------------------------------------------------------


def test_only_the_owner_may_stream_and_bad_ids_are_refused(start_api):
    server = start_api()
    job_id = submit(server, SMALL)["job_id"]
    url = f"{server.url}/v1/jobs/{job_id}/events"
    other = requests.get(url, headers={"X-API-Key": OTHER_KEY}, timeout=5)
    unknown = requests.get(
        f"{server.url}/v1/jobs/{'a' * 26}/events", headers={"X-API-Key": API_KEY}, timeout=5
    )
    for response in (other, unknown):
        assert response.status_code == 404
        assert response.json()["error"]["code"] == "not_found"
    assert requests.get(url, timeout=5).status_code == 401
    bad = requests.get(url, headers={"X-API-Key": API_KEY, "Last-Event-ID": "yesterday"}, timeout=5)
    assert bad.status_code == 400
    assert bad.json()["error"]["details"][0]["path"] == "header.Last-Event-ID"
    assert requests.post(url, headers={"X-API-Key": API_KEY}, timeout=5).status_code == 405


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    last_event_id=st.one_of(
        # HTTP strips a header value's surrounding whitespace, and requests refuses to
        # send a value that has any: values as they can arrive.
        st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=60).map(str.strip),
        st.from_regex(r"[0-9]{1,22}-[0-9a-f]{15,17}", fullmatch=True),
    )
)
def test_fuzzed_last_event_ids_never_break_the_stream(settled_server, last_event_id):
    server, job_id = settled_server
    response = requests.get(
        f"{server.url}/v1/jobs/{job_id}/events",
        headers={"X-API-Key": API_KEY, "Last-Event-ID": last_event_id},
        timeout=10,
    )
    assert response.status_code in (200, 204, 400), response.text
    if response.status_code == 200:
        assert response.text.rstrip().endswith("}")  # the settled job's event, then the end
        assert "event: state" in response.text
    if response.status_code == 400:
        assert response.json()["error"]["details"][0]["path"] == "header.Last-Event-ID"


@pytest.fixture
def settled_server(start_api, service):
    server = start_api()
    job_id = submit(server, SMALL)["job_id"]
    settle(service, job_id).join()
    return server, job_id


# --- the caps: streams cannot starve the instance ---------------------------------------------


def test_stream_caps_per_key_and_per_instance_leave_threads_for_other_requests(start_api):
    # 6 threads: at most 3 streams; at most 2 per key.
    server = start_api(THREADS="6", LTXV_EVENTS_MAX_STREAMS_PER_KEY="2")
    mine = submit(server, SMALL)["job_id"]
    theirs = submit(server, SMALL, key=OTHER_KEY)["job_id"]
    open_streams = [RawStream(server.url, mine), RawStream(server.url, mine)]
    assert [s.status for s in open_streams] == [200, 200]
    third = requests.get(
        f"{server.url}/v1/jobs/{mine}/events", headers={"X-API-Key": API_KEY}, timeout=5
    )
    assert third.status_code == 429 and third.json()["error"]["code"] == "too_many_streams"
    assert third.headers["Retry-After"]
    open_streams.append(RawStream(server.url, theirs, key=OTHER_KEY))
    assert open_streams[-1].status == 200
    full = requests.get(
        f"{server.url}/v1/jobs/{theirs}/events", headers={"X-API-Key": OTHER_KEY}, timeout=5
    )
    assert full.status_code == 503 and full.json()["error"]["retryable"] is True

    # A flood of stream requests is turned away at once, and everything else still answers.
    def knock(_: int) -> int:
        url = f"{server.url}/v1/jobs/{mine}/events"
        return requests.get(url, headers={"X-API-Key": API_KEY}, timeout=10).status_code

    with ThreadPoolExecutor(20) as pool:
        statuses = list(pool.map(knock, range(60)))
    assert set(statuses) == {429}
    started = time.monotonic()
    assert requests.get(f"{server.url}/healthz", timeout=5).ok
    got = requests.get(f"{server.url}/v1/jobs/{mine}", headers={"X-API-Key": API_KEY}, timeout=5)
    assert got.ok and time.monotonic() - started < 2

    # A closed stream gives its place back (noticed at its next write, a keep-alive).
    open_streams.pop(0).close()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        again = RawStream(server.url, mine)
        if again.status == 200:
            open_streams.append(again)
            break
        again.close()
        time.sleep(0.2)
    else:
        raise AssertionError("the closed stream's place was never given back")
    for stream in open_streams:
        stream.close()


# --- falling back to polling ------------------------------------------------------------------


def test_the_client_polls_when_its_key_has_no_stream_left(start_api, service):
    server = start_api(LTXV_EVENTS_MAX_STREAMS_PER_KEY="1")
    job_id = submit(server, SMALL)["job_id"]
    holder = RawStream(server.url, job_id)  # the key's one stream
    assert holder.status == 200
    settle(service, job_id, delay=1.5)
    job = Client(server.url, API_KEY).wait(job_id, timeout=30, poll_interval=0.2)
    holder.close()
    assert job["state"] == "succeeded"
    requests_seen = server.requests()
    assert (f"/v1/jobs/{job_id}/events", 429) in requests_seen
    assert (f"/v1/jobs/{job_id}", 200) in requests_seen


class _WithoutEvents(BaseHTTPRequestHandler):
    """An API from before the events route: 404 for it, everything else passed through."""

    upstream = ""

    def do_GET(self) -> None:
        if self.path.endswith("/events"):
            status, body = 404, b'{"error":{"code":"not_found","message":"no route"}}'
        else:
            answer = requests.get(
                self.upstream + self.path,
                headers={"X-API-Key": self.headers["X-API-Key"]},
                timeout=10,
            )
            status, body = answer.status_code, answer.content
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


def test_the_client_polls_a_server_without_the_events_route(start_api, service):
    server = start_api()
    job_id = submit(server, SMALL)["job_id"]
    handler = type("Handler", (_WithoutEvents,), {"upstream": server.url})
    old = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=old.serve_forever, daemon=True).start()
    try:
        settle(service, job_id, delay=1.0)
        url = f"http://127.0.0.1:{old.server_address[1]}"
        job = Client(url, API_KEY).wait(job_id, timeout=30, poll_interval=0.2)
    finally:
        old.shutdown()
    assert job["state"] == "succeeded"


def test_no_connection_to_the_stream_means_polling():
    (port,) = free_ports(1)
    outcome = follow_events(
        requests.Session(), f"http://127.0.0.1:{port}/v1/jobs/x/events", 2, None, print
    )
    assert outcome == ("unavailable", None)
