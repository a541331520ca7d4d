"""The Eventarc bridge: GCS notifications in, CloudEvents (binary mode) out, retried on error."""

from __future__ import annotations

import base64
import json
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from google.cloud import pubsub_v1, storage

from ltxv.local.bridge import Bridge, BridgeConfig, PubSubRoute, StorageRoute
from ltxv.local.eventarc import PUBSUB_PUBLISHED, STORAGE_FINALIZED, pubsub_event, storage_event
from ltxv.local.stack import LocalStack

# --- pure functions --------------------------------------------------------------------------


def test_storage_route_matches_bucket_prefix_and_suffixes():
    route = StorageRoute.from_dict(
        {"bucket": "p", "prefix": "incoming/", "suffix": [".json", ".jsonl"], "url": "u"}
    )
    assert route.matches("p", "incoming/a.json")
    assert route.matches("p", "incoming/deep/a.jsonl")
    assert not route.matches("p", "incoming/a.txt")
    assert not route.matches("p", "other/a.json")
    assert not route.matches("q", "incoming/a.json")
    assert StorageRoute.from_dict({"bucket": "p", "url": "u"}).matches("p", "anything")


def test_storage_event_is_shaped_as_eventarc_sends_it():
    attributes = {
        "eventType": "OBJECT_FINALIZE",
        "bucketId": "b",
        "objectId": "incoming/x.json",
        "objectGeneration": "17",
        "eventTime": "2026-01-02T03:04:05Z",
    }
    data = json.dumps({"name": "incoming/x.json", "bucket": "b", "size": "3"}).encode()
    bucket, name, event = storage_event("42", attributes, data)
    assert (bucket, name) == ("b", "incoming/x.json")
    assert event["id"] == "42"
    assert event["source"] == "//storage.googleapis.com/projects/_/buckets/b"
    assert event["type"] == STORAGE_FINALIZED
    assert event["subject"] == "objects/incoming/x.json"
    assert event.get_data()["generation"] == "17"
    assert storage_event("43", {**attributes, "eventType": "OBJECT_DELETE"}, data) is None


def test_pubsub_event_carries_the_message_as_eventarc_does():
    event = pubsub_event(
        project="p", topic="t", subscription="s", message_id="9", data=b"hi", attributes={"a": "1"}
    )
    assert event["type"] == PUBSUB_PUBLISHED
    assert event["source"] == "//pubsub.googleapis.com/projects/p/topics/t"
    data = event.get_data()
    assert base64.b64decode(data["message"]["data"]) == b"hi"
    assert data["message"]["messageId"] == "9" and data["message"]["attributes"] == {"a": "1"}
    assert data["subscription"] == "projects/p/subscriptions/s"


# --- the bridge process against the emulators ----------------------------------------------


@dataclass
class Receiver:
    """A tiny CloudEvent receiver: records each request, answers per `fail_first`."""

    port: int = 0
    requests: list[tuple[dict[str, str], dict]] = field(default_factory=list)
    fail_first: set[str] = field(default_factory=set)  # object names answered 500 once
    changed: threading.Condition = field(default_factory=threading.Condition)

    def record(self, headers: dict[str, str], body: dict) -> int:
        with self.changed:
            self.requests.append((headers, body))
            self.changed.notify_all()
            name = body.get("name")
            if name in self.fail_first:
                self.fail_first.discard(name)
                return 500
            return 204

    def wait_for(self, predicate, count: int = 1, timeout: float = 20.0) -> list:
        deadline = time.monotonic() + timeout
        with self.changed:
            while True:
                found = [r for r in self.requests if predicate(*r)]
                if len(found) >= count:
                    return found
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"expected {count} matching events, got {found}")
                self.changed.wait(remaining)

    def for_object(self, name: str) -> list:
        with self.changed:
            return [r for r in self.requests if r[1].get("name") == name]


def _serve(receiver: Receiver) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            status = receiver.record({k.lower(): v for k, v in self.headers.items()}, body)
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    receiver.port = server.server_address[1]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.fixture(scope="module")
def bridge(emulators) -> Iterator[tuple[LocalStack, Receiver]]:
    """The real bridge process, routing to a receiver that stands in for the functions."""
    receiver = Receiver()
    server = _serve(receiver)
    # Same state dir as the session's emulators (found running, left alone); the
    # functions' ports point at the receiver.
    stack = LocalStack(
        emulators.state_dir,
        ports={
            **emulators.stack.ports,
            **dict.fromkeys(
                ["prompt_file", "redispatch", "result_ready", "dead_letter"], receiver.port
            ),
        },
        settings=emulators.settings,
        echo=None,
    )
    with pytest.MonkeyPatch.context() as env:
        env.setenv("LTXV_BRIDGE_SWEEP_SECONDS", "1")
        stack.up(["bridge"])
    try:
        yield stack, receiver
    finally:
        stack.down(["bridge"])
        server.shutdown()


def _upload(emulators, bucket: str, name: str) -> storage.Blob:
    blob = storage.Client(project=emulators.project).bucket(bucket).blob(name)
    blob.upload_from_string(b'{"prompt": "a red fox"}\n', content_type="application/json")
    return blob


def _bridge_log(stack: LocalStack) -> list[dict]:
    lines = stack.log_file("bridge").read_text().splitlines()
    return [json.loads(line) for line in lines if line.startswith("{")]


@pytest.mark.emulators
def test_incoming_prompt_file_reaches_the_function_as_a_cloudevent(emulators, bridge):
    _, receiver = bridge
    bucket = emulators.settings.prompts
    name = f"incoming/{uuid.uuid4().hex}.jsonl"
    blob = _upload(emulators, bucket, name)

    [(headers, body)] = receiver.wait_for(lambda h, b: b.get("name") == name)

    assert headers["ce-specversion"] == "1.0"
    assert headers["ce-id"]  # the Pub/Sub message id
    assert headers["ce-source"] == f"//storage.googleapis.com/projects/_/buckets/{bucket}"
    assert headers["ce-type"] == "google.cloud.storage.object.v1.finalized"
    assert headers["ce-subject"] == f"objects/{name}"
    assert headers["content-type"] == "application/json"
    assert body["bucket"] == bucket
    assert str(body["generation"]) == str(blob.generation)


@pytest.mark.emulators
def test_objects_outside_the_route_are_not_delivered(emulators, bridge):
    stack, receiver = bridge
    elsewhere = [
        (emulators.settings.prompts, f"processed/{uuid.uuid4().hex}.json"),
        (emulators.settings.model_cache, f"incoming/{uuid.uuid4().hex}.json"),
    ]
    for bucket, name in elsewhere:
        _upload(emulators, bucket, name)

    # Wait until the bridge has seen (and dropped) both, then check nothing arrived.
    deadline = time.monotonic() + 20
    names = {name for _, name in elsewhere}
    while names - {e.get("object") for e in _bridge_log(stack) if e["message"] == "no route"}:
        assert time.monotonic() < deadline, "the bridge never saw the objects"
        time.sleep(0.1)
    assert not any(receiver.for_object(name) for name in names)


@pytest.mark.emulators
def test_every_object_in_the_outputs_bucket_reaches_result_ready(emulators, bridge):
    # As an Eventarc storage trigger (bucket filter only): the function picks result.json.
    _, receiver = bridge
    names = [f"jobs/{uuid.uuid4().hex}/video.mp4", f"jobs/{uuid.uuid4().hex}/result.json"]
    for name in names:
        _upload(emulators, emulators.settings.outputs, name)
    for name in names:
        [(headers, body)] = receiver.wait_for(lambda h, b, name=name: b.get("name") == name)
        assert headers["ce-subject"] == f"objects/{name}"
        assert body["bucket"] == emulators.settings.outputs


@pytest.mark.emulators
def test_an_event_the_function_fails_is_delivered_again(emulators, bridge):
    _, receiver = bridge
    name = f"incoming/{uuid.uuid4().hex}.json"
    receiver.fail_first.add(name)
    _upload(emulators, emulators.settings.prompts, name)

    first, second = receiver.wait_for(lambda h, b: b.get("name") == name, count=2)
    assert first[0]["ce-id"] == second[0]["ce-id"]  # the same event, as Eventarc retries it


@pytest.mark.emulators
def test_the_scheduler_tick_reaches_redispatch(emulators, bridge):
    _, receiver = bridge
    [(headers, body), *_] = receiver.wait_for(
        # The dead-letter route shares the receiver; the tick is the one from the sweep topic.
        lambda h, b: h["ce-type"] == PUBSUB_PUBLISHED and h["ce-source"].endswith("-sweep")
    )

    project, prefix = emulators.project, emulators.prefix
    assert (
        headers["ce-source"] == f"//pubsub.googleapis.com/projects/{project}/topics/{prefix}-sweep"
    )
    assert body["message"]["data"] == ""
    assert body["message"]["messageId"] == headers["ce-id"]
    assert body["subscription"].startswith(f"projects/{project}/subscriptions/")


@pytest.mark.emulators
def test_a_pubsub_route_delivers_message_published_events(emulators):
    # The shape the dead-letter route to the notify function will take.
    receiver = Receiver()
    server = _serve(receiver)
    publisher, subscriber = pubsub_v1.PublisherClient(), pubsub_v1.SubscriberClient()
    topic = f"dead-{uuid.uuid4().hex[:8]}"
    topic_path = publisher.topic_path(emulators.project, topic)
    publisher.create_topic(name=topic_path)
    subscriber.create_subscription(
        name=subscriber.subscription_path(emulators.project, f"{topic}-notify"), topic=topic_path
    )
    route = PubSubRoute(subscription=f"{topic}-notify", url=f"http://127.0.0.1:{receiver.port}")
    bridge = Bridge(BridgeConfig(settings=emulators.settings, pubsub_routes=(route,)))
    bridge.start()
    try:
        message_id = publisher.publish(topic_path, b'{"job_id": "j1"}', job_id="j1").result()
        [(headers, body)] = receiver.wait_for(lambda h, b: h["ce-id"] == message_id)
    finally:
        bridge.stop()
        server.shutdown()

    assert headers["ce-type"] == PUBSUB_PUBLISHED
    assert (
        headers["ce-source"]
        == f"//pubsub.googleapis.com/projects/{emulators.project}/topics/{topic}"
    )
    assert base64.b64decode(body["message"]["data"]) == b'{"job_id": "j1"}'
    assert body["message"]["attributes"] == {"job_id": "j1"}
    assert body["subscription"] == f"projects/{emulators.project}/subscriptions/{topic}-notify"
