"""The local stand-in for Eventarc and Cloud Scheduler: `python -m ltxv.local.bridge`.

In the cloud, Eventarc turns Cloud Storage notifications and Pub/Sub messages into
CloudEvents and POSTs them to functions, retrying until a function answers 2xx; Cloud
Scheduler publishes a periodic tick that reaches the redispatch function the same way.
Locally, fake-gcs-server publishes GCS-format notifications to a topic in the Pub/Sub
emulator, and this bridge pulls them and delivers the same CloudEvents (shaped in
`ltxv.local.eventarc`), in binary content mode, to the functions-framework processes. It
acks a message only after a 2xx so that Pub/Sub redelivers it otherwise, which is
Eventarc's retry.

Configuration (environment, set by `ltxv.local.stack`):

- `LTXV_BRIDGE_ROUTES`: JSON list of storage routes `{"bucket", "prefix", "suffix", "url"}`
  (`prefix` and `suffix` optional; `suffix` a string or a list of strings). A finalized
  object is delivered to every route it matches.
- `LTXV_BRIDGE_PUBSUB_ROUTES`: JSON list of `{"subscription", "url"}` (optional `topic`,
  looked up from the subscription otherwise); each message becomes a
  `messagePublished` CloudEvent.
- `LTXV_BRIDGE_SWEEP_URL`, `LTXV_BRIDGE_SWEEP_SECONDS` (default 30): the scheduler tick.
- `LTXV_BRIDGE_TIMEOUT_SECONDS` (default 540, an event function's longest run).
- `LTXV_BRIDGE_READY_FILE`: written with this process's pid once it is pulling.
- The usual `LTXV_PROJECT`, `LTXV_PREFIX` and `PUBSUB_EMULATOR_HOST`.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
import uuid
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import google.cloud.pubsub_v1 as pubsub_v1
import requests
from cloudevents.conversion import to_binary
from cloudevents.http import CloudEvent
from google.api_core import exceptions as gexc

from ltxv.core import logs
from ltxv.core.settings import Settings
from ltxv.local.eventarc import pubsub_event, storage_event

log = logging.getLogger("ltxv.local.bridge")
# Deprecated for real Pub/Sub, where waiting Pulls are fine; kept on purpose here (Bridge).
warnings.filterwarnings("ignore", "The return_immediately flag is deprecated")


def storage_events_subscription(settings: Settings) -> str:
    """The pull subscription the bridge reads storage notifications from."""
    return f"{settings.storage_events_topic}-bridge"


# --- routes and configuration -------------------------------------------------------------


@dataclass(frozen=True)
class StorageRoute:
    """Deliver finalized objects in `bucket` whose name has `prefix` (and one `suffix`)."""

    bucket: str
    url: str
    prefix: str = ""
    suffixes: tuple[str, ...] = ()

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> StorageRoute:
        suffix = raw.get("suffix") or ()
        return cls(
            bucket=raw["bucket"],
            url=raw["url"],
            prefix=raw.get("prefix") or "",
            suffixes=(suffix,) if isinstance(suffix, str) else tuple(suffix),
        )

    def matches(self, bucket: str, name: str) -> bool:
        return (
            bucket == self.bucket
            and name.startswith(self.prefix)
            and (not self.suffixes or name.endswith(self.suffixes))
        )


@dataclass(frozen=True)
class PubSubRoute:
    """Deliver every message of a pull subscription as a `messagePublished` event."""

    subscription: str
    url: str
    topic: str | None = None

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> PubSubRoute:
        return cls(subscription=raw["subscription"], url=raw["url"], topic=raw.get("topic"))


@dataclass(frozen=True)
class BridgeConfig:
    settings: Settings
    storage_routes: tuple[StorageRoute, ...] = ()
    pubsub_routes: tuple[PubSubRoute, ...] = ()
    sweep_url: str | None = None
    sweep_seconds: float = 30.0
    delivery_timeout: float = 540.0
    ready_file: Path | None = None

    @classmethod
    def from_env(cls) -> BridgeConfig:
        env = os.environ
        ready = env.get("LTXV_BRIDGE_READY_FILE")
        return cls(
            settings=Settings.from_env(),
            storage_routes=tuple(
                StorageRoute.from_dict(r) for r in json.loads(env.get("LTXV_BRIDGE_ROUTES", "[]"))
            ),
            pubsub_routes=tuple(
                PubSubRoute.from_dict(r)
                for r in json.loads(env.get("LTXV_BRIDGE_PUBSUB_ROUTES", "[]"))
            ),
            sweep_url=env.get("LTXV_BRIDGE_SWEEP_URL") or None,
            sweep_seconds=float(env.get("LTXV_BRIDGE_SWEEP_SECONDS") or 30),
            delivery_timeout=float(env.get("LTXV_BRIDGE_TIMEOUT_SECONDS") or 540),
            ready_file=Path(ready) if ready else None,
        )


# --- delivery ------------------------------------------------------------------------------


def deliver(url: str, event: CloudEvent, timeout: float) -> bool:
    """POST the event in binary content mode; True when the receiver answered 2xx."""
    headers, body = to_binary(event)
    headers["Content-Type"] = "application/json"
    fields = {"url": url, "ce_id": event["id"], "ce_type": event["type"]}
    if event.get("subject"):
        fields["ce_subject"] = event["subject"]
    try:
        response = requests.post(url, data=body, headers=headers, timeout=timeout)
    except requests.RequestException as exc:
        _log(logging.WARNING, "delivery failed", **fields, error=str(exc))
        return False
    ok = 200 <= response.status_code < 300
    level = logging.INFO if ok else logging.WARNING
    _log(level, "delivered" if ok else "delivery rejected", **fields, status=response.status_code)
    return ok


# --- the bridge ---------------------------------------------------------------------------


class Bridge:
    """Pulls the routed subscriptions, one loop each, and runs the scheduler tick until stopped.

    Plain unary Pulls that return at once, rather than StreamingPull or waiting Pulls: the
    Pub/Sub emulator keeps handing messages to a stream or Pull of a subscriber that has
    gone (the bridge restarted with the stack), where they sit until their lease runs
    out. A Pull that asks only when the bridge is ready leaves nothing to misdeliver.
    """

    BATCH = 16  # messages per Pull; a burst of uploads is delivered in order, a batch at a time
    IDLE = 0.1  # seconds between Pulls that found nothing

    def __init__(
        self,
        config: BridgeConfig,
        subscriber: pubsub_v1.SubscriberClient | None = None,
        post: Callable[[str, CloudEvent, float], bool] = deliver,
    ) -> None:
        self.config = config
        self.settings = config.settings
        self._subscriber = subscriber or pubsub_v1.SubscriberClient()
        self._post = post
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._failed = threading.Event()

    def _path(self, subscription: str) -> str:
        return self._subscriber.subscription_path(self.settings.project, subscription)

    def start(self) -> None:
        if self.config.storage_routes:
            path = self._path(storage_events_subscription(self.settings))
            self._subscriber.get_subscription(subscription=path)  # fail fast when missing
            self._spawn(f"pull:{path}", self._pull_loop, path, self._on_storage_message)
        for route in self.config.pubsub_routes:
            path = self._path(route.subscription)
            sub = self._subscriber.get_subscription(subscription=path)
            topic = route.topic or sub.topic.rsplit("/", 1)[-1]
            self._spawn(f"pull:{path}", self._pull_loop, path, self._pubsub_handler(route, topic))
        if self.config.sweep_url:
            self._spawn("sweep", self._sweep_loop, self.config.sweep_url)
        _log(
            logging.INFO,
            "bridge started",
            storage_routes=[r.__dict__ for r in self.config.storage_routes],
            pubsub_routes=[r.__dict__ for r in self.config.pubsub_routes],
            sweep_url=self.config.sweep_url,
            sweep_seconds=self.config.sweep_seconds,
        )
        if self.config.ready_file:
            self.config.ready_file.write_text(str(os.getpid()))

    def _spawn(self, name: str, target: Callable[..., None], *args: Any) -> None:
        thread = threading.Thread(target=target, args=args, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    def request_stop(self) -> None:
        """Make `wait` return; safe to call from a signal handler."""
        self._stop.set()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=15)
        self._subscriber.close()

    def wait(self) -> int:
        """Block until stopped (0) or until a pull loop died for good (1)."""
        while not self._stop.wait(0.5):
            if self._failed.is_set():
                return 1
        return 0

    def _pull_loop(self, path: str, handle: Callable[[Any, int], bool]) -> None:
        """Pull, hand each message to `handle`, ack what it took and nack the rest."""
        errors = 0
        while not self._stop.is_set():
            try:
                response = self._subscriber.pull(
                    request={
                        "subscription": path,
                        "max_messages": self.BATCH,
                        # Never leave a Pull waiting in the emulator: one still open when
                        # the bridge stops would be handed the next message anyway.
                        "return_immediately": True,
                    },
                    timeout=10,
                )
                errors = 0
            except gexc.NotFound:
                _log(logging.ERROR, "subscription gone", subscription=path)
                self._failed.set()
                return
            except gexc.GoogleAPIError as exc:
                # The emulator restarting, or a slow moment: keep trying, a little slower.
                errors += 1
                _log(logging.WARNING, "pull failed", subscription=path, error=str(exc))
                self._stop.wait(min(0.2 * 2**errors, 5.0))
                continue
            if not response.received_messages:
                self._stop.wait(self.IDLE)
                continue
            for received in response.received_messages:
                taken = handle(received.message, received.delivery_attempt)
                if taken:
                    self._subscriber.acknowledge(subscription=path, ack_ids=[received.ack_id])
                else:  # a nack: the subscription's retry policy spaces out redelivery
                    self._subscriber.modify_ack_deadline(
                        subscription=path, ack_ids=[received.ack_id], ack_deadline_seconds=0
                    )

    def _on_storage_message(self, message: Any, attempt: int) -> bool:
        try:
            parsed = storage_event(message.message_id, dict(message.attributes), message.data)
        except (ValueError, KeyError) as exc:
            # A notification that cannot be parsed never will be: retrying would loop forever.
            _log(logging.ERROR, "malformed notification dropped", error=str(exc))
            return True
        if parsed is None:
            return True
        bucket, name, event = parsed
        urls = [r.url for r in self.config.storage_routes if r.matches(bucket, name)]
        fields = {"bucket": bucket, "object": name, "ce_id": event["id"]}
        if not urls:
            _log(logging.INFO, "no route", **fields)
            return True
        # One subscription stands in for one trigger per route: ack only when every routed
        # receiver took it, so a failed one gets it again (the others may see it twice,
        # which Eventarc's at-least-once delivery allows too).
        results = [self._post(url, event, self.config.delivery_timeout) for url in urls]
        if all(results):
            return True
        _log(logging.INFO, "will redeliver", **fields, attempt=attempt)
        return False

    def _pubsub_handler(self, route: PubSubRoute, topic: str) -> Callable[[Any, int], bool]:
        def handle(message: Any, _attempt: int) -> bool:
            event = pubsub_event(
                project=self.settings.project,
                topic=topic,
                subscription=route.subscription,
                message_id=message.message_id,
                data=message.data,
                attributes=dict(message.attributes),
                publish_time=message.publish_time,
            )
            return self._post(route.url, event, self.config.delivery_timeout)

        return handle

    def _sweep_loop(self, url: str) -> None:
        topic = self.settings.sweep_topic
        while not self._stop.wait(self.config.sweep_seconds):
            event = pubsub_event(
                project=self.settings.project,
                topic=topic,
                subscription=f"eventarc-local-{topic}",
                message_id=str(uuid.uuid4().int >> 64),
                data=b"",
            )
            # Cloud Scheduler does not retry a missed tick here either: the next one comes.
            self._post(url, event, self.config.delivery_timeout)


# --- logging ------------------------------------------------------------------------------


def _log(level: int, message: str, **fields: Any) -> None:
    # ltxv.core.logs turns `extra` into top-level JSON fields.
    log.log(level, message, extra=fields)


def main() -> int:
    config = BridgeConfig.from_env()
    logs.setup("bridge", config.settings.log_level)
    # The client libraries log every stream reconnect at INFO; keep the bridge's own lines.
    logging.getLogger("google").setLevel(logging.WARNING)
    bridge = Bridge(config)
    signal.signal(signal.SIGTERM, lambda *_: bridge.request_stop())
    signal.signal(signal.SIGINT, lambda *_: bridge.request_stop())
    bridge.start()
    code = bridge.wait()
    bridge.stop()
    _log(logging.INFO, "bridge stopped")
    return code


if __name__ == "__main__":
    sys.exit(main())
