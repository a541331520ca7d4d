"""The worker's side of its pool's subscriptions: pull one message, keep it, ack or nack it.

A pool has one subscription per priority lane; a pull tries them in the order `LaneOrder`
gives (highest first, a lane left unserved too long first once: gpu_worker/lanes.py).

Unary Pull with `return_immediately`, one message at a time, rather than the client
library's StreamingPull: the worker takes a job only when its GPU is free, and nothing is
left waiting in Pub/Sub for a process that may be killed (the emulator, and Pub/Sub after
a crash, hand a waiting Pull's messages to a client that is gone, where they sit until
the ack deadline passes). While a job is held its ack deadline is extended in the
background, so a render may take as long as it takes.
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import cast

import google.cloud.pubsub_v1 as pubsub_v1
from google.api_core import exceptions as gexc
from google.pubsub_v1.types import ReceivedMessage

from ltxv.core.dispatch import LANE_ATTRIBUTE, MODEL_ATTRIBUTE, parse_job_id, passes_filter
from ltxv.core.resources import worker_lanes

from .keeper import Keeper
from .lanes import LaneOrder

log = logging.getLogger(__name__)
warnings.filterwarnings("ignore", "The return_immediately flag is deprecated")


@dataclass(frozen=True)
class Received:
    ack_id: str
    message_id: str
    job_id: str | None  # None: the message names no job (poison)
    delivery_attempt: int
    model: str | None = None  # the model attribute, the pool it is for (None: it has none)
    lane: str | None = None  # the lane whose subscription it came from (None: the default)
    subscription: str | None = None  # that subscription's path (None: the default lane's)
    published_at: datetime | None = None  # when Pub/Sub accepted it (None: not known)

    def young(self, within: timedelta) -> bool:
        """Whether it was published less than `within` ago (unknown: no)."""
        return self.published_at is not None and datetime.now(UTC) - self.published_at < within


# A lane whose subscription does not exist (a deployment whose lanes are not created yet)
# is tried again this much later; meanwhile its jobs are served in the default lane.
MISSING_LANE_RETRY_SECONDS = 60.0


class JobMessages:
    def __init__(
        self,
        subscriber: pubsub_v1.SubscriberClient,
        subscriptions: str | Mapping[str, str],
        ack_extension_seconds: int = 60,
        *,
        pool: tuple[str, str] | None = None,
        aging_seconds: float = 300.0,
    ) -> None:
        """`subscriptions`: lane -> subscription path (one path: the default lane's only).
        `pool`: (model, default model) whose subscription filter each message is checked
        against, since the emulator applies none; None: no check."""
        lanes = worker_lanes()
        if isinstance(subscriptions, str):
            subscriptions = {lanes.default: subscriptions}
        self.subscriber = subscriber
        self.paths = dict(subscriptions)
        self.path = self.paths[lanes.default]
        self.extension = ack_extension_seconds
        self.pool = pool
        self.order = LaneOrder([lane for lane in lanes.order if lane in self.paths], aging_seconds)
        self._missing: dict[str, float] = {}  # lane -> when to look for its subscription again

    def pull_one(self) -> Received | None:
        """The first message of the first lane that has one, in `LaneOrder`'s order."""
        for lane in self.order.order():
            if self._missing.get(lane, 0.0) > time.monotonic():
                continue
            received = self._pull_lane(lane)
            if lane not in self._missing:
                self.order.served(lane)  # a job taken, or nothing waiting: not starved
            if received is not None:
                return received
        return None

    def _pull_lane(self, lane: str) -> Received | None:
        path = self.paths[lane]
        while True:
            try:
                response = self.subscriber.pull(
                    request={"subscription": path, "max_messages": 1, "return_immediately": True},
                    timeout=30,
                )
            except gexc.NotFound:
                if lane == worker_lanes().default:
                    raise  # the pool's own subscription: the worker cannot work without it
                log.warning("lane subscription missing", extra={"lane": lane, "subscription": path})
                self._missing[lane] = time.monotonic() + MISSING_LANE_RETRY_SECONDS
                return None
            self._missing.pop(lane, None)
            if not response.received_messages:
                return None
            received = self._received(response.received_messages[0], lane, path)
            if received is not None:
                return received

    def _received(self, pulled: ReceivedMessage, lane: str, path: str) -> Received | None:
        message = pulled.message
        attributes = dict(message.attributes)
        received = Received(
            ack_id=pulled.ack_id,
            message_id=message.message_id,
            job_id=parse_job_id(message.data, attributes),
            delivery_attempt=pulled.delivery_attempt,
            model=attributes.get(MODEL_ATTRIBUTE),
            lane=lane,
            subscription=path,
            # proto-plus hands the Timestamp over as a datetime (None when unset).
            published_at=cast("datetime | None", message.publish_time),
        )
        if self.pool is None or received.job_id is None:
            return received
        model, default_model = self.pool
        message_lane = attributes.get(LANE_ATTRIBUTE)
        if passes_filter(received.model, model, default_model, message_lane, lane):
            return received
        if passes_filter(received.model, model, default_model) and self._served_here(
            message_lane, lane
        ):
            return received
        # Pub/Sub's filter keeps these away; the emulator delivers every message to every
        # subscription, and the copy for the job's own pool and lane is not this one.
        if passes_filter(received.model, model, default_model):
            what, extra = "another lane's job", {"job_lane": message_lane, "lane": lane}
        else:
            what, extra = "another model's job", {"job_model": received.model}
        log.info(
            f"{what}; acknowledged as the filter would",
            extra={"job_id": received.job_id, "worker_model": model, **extra},
        )
        self.ack(received)
        return None

    def _served_here(self, message_lane: str | None, lane: str) -> bool:
        """A job of a lane whose subscription is missing is served in the default lane."""
        return lane == worker_lanes().default and message_lane in self._missing

    def extend(self, received: Received, seconds: int | None = None) -> None:
        self.subscriber.modify_ack_deadline(
            subscription=received.subscription or self.path,
            ack_ids=[received.ack_id],
            ack_deadline_seconds=min(600, seconds or self.extension),
        )

    def ack(self, received: Received) -> bool:
        """Acknowledge; False when Pub/Sub refused (the lease had lapsed, exactly-once)."""
        try:
            self.subscriber.acknowledge(
                subscription=received.subscription or self.path, ack_ids=[received.ack_id]
            )
        except gexc.GoogleAPICallError as exc:
            log.warning("ack refused", extra={"message_id": received.message_id, "error": str(exc)})
            return False
        return True

    def nack(self, received: Received, delay_seconds: int = 0) -> None:
        """Hand the message back: now (the subscription's retry backoff applies) or later."""
        try:
            self.subscriber.modify_ack_deadline(
                subscription=received.subscription or self.path,
                ack_ids=[received.ack_id],
                ack_deadline_seconds=min(600, delay_seconds),
            )
        except gexc.GoogleAPICallError as exc:
            log.warning(
                "nack refused", extra={"message_id": received.message_id, "error": str(exc)}
            )


class AckKeeper(Keeper):
    """Sets one message's ack deadline to the extension now, then every half extension,
    until stopped; a crashed worker's message comes back within one extension."""

    thread_name = "ack-keeper"

    def __init__(self, messages: JobMessages, received: Received) -> None:
        super().__init__()
        self.messages = messages
        self.received = received

    def _run(self) -> None:
        # The first extension goes out at once: until then the message has the
        # subscription's own deadline, and a worker killed now would strand it that long.
        while True:
            try:
                self.messages.extend(self.received)
            except Exception as exc:
                # Keep going whatever happened: a message whose deadline lapses comes back
                # to another worker while this one still renders it.
                log.warning(
                    "ack deadline not extended",
                    extra={"message_id": self.received.message_id, "error": repr(exc)},
                    exc_info=not isinstance(exc, gexc.GoogleAPICallError),
                )
            if self._stop.wait(self.messages.extension / 2):
                return
