"""Concurrency over real HTTP on the local stack: what many clients, triggers and slow
peers doing things at once must never break.

The stack here runs the API (threaded under functions-framework, as Cloud Run serves it),
the notify function (`result_ready`), the GPU worker on tiny-random and the Eventarc bridge
next to the session's emulators. Nothing may answer 5xx, no job may be lost, and none may be
published, rendered or announced twice.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import secrets
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
from google.cloud import pubsub_v1

from ltxv import compose_submit
from ltxv.local.stack import LocalStack
from ltxv.webhooks import verify_webhook

from ..bodies import SLOW, SMALL
from ..raw_http import RawServer
from .conftest import key_session, running_stack

pytestmark = [pytest.mark.emulators, pytest.mark.timeout(300)]

COMPONENTS = ["api", "result_ready", "worker", "bridge"]
WEBHOOK_TIMEOUT = 2.0  # each attempt's whole deadline, on this stack


@pytest.fixture(scope="module")
def stack(emulators) -> Iterator[LocalStack]:
    settings = dataclasses.replace(
        emulators.settings,
        webhook_timeout_seconds=WEBHOOK_TIMEOUT,
        webhook_retry_base_seconds=0.5,
        webhook_retry_max_seconds=2.0,
    )
    with running_stack(emulators, COMPONENTS, settings) as running:
        yield running


@pytest.fixture
def api(stack, clean_firestore) -> Iterator[requests.Session]:
    with key_session(stack, connections=64) as session:
        yield session


def job(stack, api, job_id) -> dict:
    response = api.get(f"{stack.api_url}/v1/jobs/{job_id}")
    assert response.status_code == 200, response.text
    return response.json()


@pytest.fixture
def parked_topic(stack) -> Iterator[str]:
    """A jobs topic no worker pulls: its jobs stay queued until canceled."""
    publisher = pubsub_v1.PublisherClient()
    topic = f"jobs-{uuid.uuid4().hex[:8]}"
    publisher.create_topic(name=publisher.topic_path(stack.project, topic))
    yield topic
    publisher.delete_topic(topic=publisher.topic_path(stack.project, topic))


def parked_job(stack, topic: str, body: dict) -> str:
    """A job accepted as the API would (by the stack's `default` key), on `topic`."""
    settings = dataclasses.replace(
        stack.settings, topic_name=topic, allow_http_loopback_webhooks=True
    )
    intake = compose_submit.parts(settings).intake
    return intake.submit_http(body, api_key_id="default").job["job_id"]


# --- a slow webhook receiver ------------------------------------------------------------------


class TricklingReceiver:
    """A raw HTTP receiver that answers its first `slow` deliveries one byte every `every`
    seconds (all within any per-read timeout), the rest at once with 200. It verifies each
    delivery's signature and keeps, per connection, when it was open; `most_at_once` is
    the most deliveries it ever had open together."""

    ANSWER = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"

    def __init__(self, secret: str, slow: int, every: float = 0.4) -> None:
        self.secret, self.slow, self.every = secret, slow, every
        self.lock = threading.Lock()
        self.deliveries: list[dict] = []
        self.open_now = self.most_at_once = 0
        self.server = RawServer(self._serve)
        self.stop = self.server.stop
        self.url = f"http://127.0.0.1:{self.server.port}/hook"

    def _serve(self, server: RawServer, conn: socket.socket) -> None:
        conn.settimeout(10)
        request = server.read_request(conn)
        if request is None:
            return
        headers, body = request
        with self.lock:
            number = len(self.deliveries) + 1
            delivery = {"opened": time.monotonic(), "closed": None, "verified": False}
            self.deliveries.append(delivery)
            self.open_now += 1
            self.most_at_once = max(self.most_at_once, self.open_now)
        try:
            delivery["verified"] = bool(verify_webhook(self.secret, headers, body))
            if number > self.slow:
                conn.sendall(self.ANSWER)
                return
            for i in range(len(self.ANSWER)):
                if self._client_gone(conn):
                    return
                conn.sendall(self.ANSWER[i : i + 1])
                if self.stop.wait(self.every):
                    return
        except OSError:
            pass  # cut by the sender: what the test wants
        finally:
            with self.lock:
                delivery["closed"] = time.monotonic()
                self.open_now -= 1

    @staticmethod
    def _client_gone(conn: socket.socket) -> bool:
        conn.setblocking(False)
        try:
            return conn.recv(1) == b""
        except BlockingIOError:
            return False
        finally:
            conn.setblocking(True)
            conn.settimeout(10)

    def close(self) -> None:
        self.server.close()


def _result_ready_event(stack, job_id: str) -> tuple[dict[str, str], str]:
    """The CloudEvent Eventarc would deliver (again) for the job's result.json."""
    headers = {
        "ce-specversion": "1.0",
        "ce-id": secrets.token_hex(8),
        "ce-source": f"//storage.googleapis.com/projects/_/buckets/{stack.settings.outputs}",
        "ce-type": "google.cloud.storage.object.v1.finalized",
        "ce-subject": f"objects/jobs/{job_id}/result.json",
        "Content-Type": "application/json",
    }
    data = {"bucket": stack.settings.outputs, "name": f"jobs/{job_id}/result.json"}
    return headers, json.dumps(data)


def test_a_slow_receiver_is_cut_at_each_deadline_retried_and_never_sent_twice_at_once(
    stack, api, parked_topic
):
    receiver = TricklingReceiver(stack.webhook_secret, slow=2)
    try:
        job_id = parked_job(
            stack, parked_topic, {"prompt": "a slow pond", "webhook_url": receiver.url}
        )
        # Canceled in the queue: the API writes result.json, the bridge hands it to notify.
        assert api.post(f"{stack.api_url}/v1/jobs/{job_id}/cancel").status_code == 200

        # While the first attempt trickles, Eventarc "redelivers" the event five times at
        # once: each trigger must see the attempt in flight and send nothing.
        deadline = time.monotonic() + 60
        while not receiver.deliveries and time.monotonic() < deadline:
            time.sleep(0.05)
        assert receiver.deliveries, "the first attempt never arrived"
        headers, body = _result_ready_event(stack, job_id)
        with ThreadPoolExecutor(5) as pool:
            answers = list(
                pool.map(
                    lambda _: requests.post(
                        stack.url("result_ready"), data=body, headers=headers, timeout=30
                    ),
                    range(5),
                )
            )
        assert [a.status_code for a in answers] == [503] * 5
        assert {a.json()["reason"] for a in answers} == {"another attempt is in flight"}

        while time.monotonic() < deadline:
            record = job(stack, api, job_id)["webhook"]
            if record["state"] in ("delivered", "failed"):
                break
            time.sleep(0.2)
        time.sleep(1.0)  # room for a stray send, were there one
    finally:
        receiver.close()

    assert record["state"] == "delivered", record
    attempts = record["attempts"]
    assert [(a["status_code"], a["error"]) for a in attempts] == [
        (None, "timed out"),
        (None, "timed out"),
        (200, None),
    ]
    for cut in attempts[:2]:  # cut at the deadline, not after the 7 s the answer takes
        assert WEBHOOK_TIMEOUT - 0.2 <= cut["duration_seconds"] < WEBHOOK_TIMEOUT + 1.5, cut
    assert not any(a.get("in_flight") for a in attempts)
    # Exactly one connection per recorded attempt, each signed, and never two at once.
    assert len(receiver.deliveries) == len(attempts)
    assert all(d["verified"] for d in receiver.deliveries)
    assert receiver.most_at_once == 1
    spans = sorted((d["opened"], d["closed"]) for d in receiver.deliveries)
    assert all(later[0] >= earlier[1] for earlier, later in itertools.pairwise(spans))


# --- many clients on one job --------------------------------------------------------


def burst(count: int, call) -> list[requests.Response]:
    with ThreadPoolExecutor(count) as pool:
        return list(pool.map(lambda _: call(), range(count)))


def wait_job(stack, api, job_id, states, timeout=120.0) -> dict:
    deadline = time.monotonic() + timeout
    body: dict = {}
    while time.monotonic() < deadline:
        body = api.get(f"{stack.api_url}/v1/jobs/{job_id}").json()
        if body.get("state") in states:
            return body
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} never reached {states}: {body}")


def worker_lines(stack, message: str, job_id: str) -> list[dict]:
    found = []
    for line in stack.log_file("worker").read_text(errors="replace").splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if entry.get("message") == message and entry.get("job_id") == job_id:
            found.append(entry)
    return found


def test_parallel_cancels_of_a_running_job_all_answer_and_stop_the_render(stack, api):
    job_id = api.post(f"{stack.api_url}/v1/jobs", json=SLOW).json()["job_id"]
    wait_job(stack, api, job_id, {"running"})

    answers = burst(8, lambda: api.post(f"{stack.api_url}/v1/jobs/{job_id}/cancel"))

    statuses = [a.status_code for a in answers]
    assert all(status in (200, 202) for status in statuses), [a.text for a in answers]
    job = wait_job(stack, api, job_id, {"canceled", "succeeded", "failed"})
    assert job["state"] == "canceled", job  # the cancel reached the render
    assert job["progress"]["step"] < SLOW["num_inference_steps"]
    assert len(worker_lines(stack, "rendering", job_id)) == 1
    assert not worker_lines(stack, "lease not renewed", job_id)
    # Asked again once it is settled: the same answer, cheaply.
    again = api.post(f"{stack.api_url}/v1/jobs/{job_id}/cancel")
    assert again.status_code == 200 and again.json()["state"] == "canceled"


def _pull_all(stack, job_id: str, quiet_seconds: float = 3.0) -> list[str]:
    """The ids of every message for `job_id` in the worker subscription (all acknowledged)."""
    subscriber = pubsub_v1.SubscriberClient()
    path = subscriber.subscription_path(stack.project, stack.settings.subscription)
    seen: list[str] = []
    ack_ids: list[str] = []
    deadline = time.monotonic() + quiet_seconds
    while time.monotonic() < deadline:
        response = subscriber.pull(subscription=path, max_messages=100, timeout=2)
        for received in response.received_messages:
            ack_ids.append(received.ack_id)
            if received.message.attributes.get("job_id") == job_id:
                seen.append(received.message.message_id)
    if ack_ids:
        subscriber.acknowledge(subscription=path, ack_ids=ack_ids)
    subscriber.close()
    return seen


def test_parallel_identical_submits_make_one_job_published_once(stack, api):
    stack.down(["worker"])  # nothing takes the message: what was published stays countable
    try:
        key = f"burst-{uuid.uuid4().hex}"
        answers = burst(
            40,
            lambda: api.post(
                f"{stack.api_url}/v1/jobs", json=SMALL, headers={"Idempotency-Key": key}
            ),
        )
        statuses = sorted({a.status_code for a in answers})
        assert statuses == [202], [a.text for a in answers if a.status_code != 202]
        ids = {a.json()["job_id"] for a in answers}
        assert len(ids) == 1
        (job_id,) = ids
        fresh = [a for a in answers if "Idempotent-Replayed" not in a.headers]
        assert len(fresh) == 1
        assert len(_pull_all(stack, job_id)) == 1
        assert api.get(f"{stack.api_url}/v1/jobs/{job_id}").json()["state"] == "queued"
    finally:
        stack.up(["worker"])
