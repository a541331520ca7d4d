"""The worker's side of the jobs subscription: pull one message, keep it, ack or nack it.

Unary Pull with `return_immediately`, one message at a time, rather than the client
library's StreamingPull: the worker takes a job only when its GPU is free, and nothing is
left waiting in Pub/Sub for a process that may be killed (the emulator, and Pub/Sub after
a crash, hand a waiting Pull's messages to a client that is gone, where they sit until
the ack deadline passes). While a job is held its ack deadline is extended in the
background, so a render may take as long as it takes.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass

import google.cloud.pubsub_v1 as pubsub_v1
from google.api_core import exceptions as gexc

from ltxv.core.dispatch import MODEL_ATTRIBUTE, parse_job_id

from .keeper import Keeper

log = logging.getLogger(__name__)
warnings.filterwarnings("ignore", "The return_immediately flag is deprecated")


@dataclass(frozen=True)
class Received:
    ack_id: str
    message_id: str
    job_id: str | None  # None: the message names no job (poison)
    delivery_attempt: int
    model: str | None = None  # the model attribute, the pool it is for (None: it has none)


class JobMessages:
    def __init__(
        self,
        subscriber: pubsub_v1.SubscriberClient,
        subscription_path: str,
        ack_extension_seconds: int = 60,
    ) -> None:
        self.subscriber = subscriber
        self.path = subscription_path
        self.extension = ack_extension_seconds

    def pull_one(self) -> Received | None:
        response = self.subscriber.pull(
            request={"subscription": self.path, "max_messages": 1, "return_immediately": True},
            timeout=30,
        )
        if not response.received_messages:
            return None
        received = response.received_messages[0]
        message = received.message
        attributes = dict(message.attributes)
        return Received(
            ack_id=received.ack_id,
            message_id=message.message_id,
            job_id=parse_job_id(message.data, attributes),
            delivery_attempt=received.delivery_attempt,
            model=attributes.get(MODEL_ATTRIBUTE),
        )

    def extend(self, received: Received, seconds: int | None = None) -> None:
        self.subscriber.modify_ack_deadline(
            subscription=self.path,
            ack_ids=[received.ack_id],
            ack_deadline_seconds=min(600, seconds or self.extension),
        )

    def ack(self, received: Received) -> bool:
        """Acknowledge; False when Pub/Sub refused (the lease had lapsed, exactly-once)."""
        try:
            self.subscriber.acknowledge(subscription=self.path, ack_ids=[received.ack_id])
        except gexc.GoogleAPICallError as exc:
            log.warning("ack refused", extra={"message_id": received.message_id, "error": str(exc)})
            return False
        return True

    def nack(self, received: Received, delay_seconds: int = 0) -> None:
        """Hand the message back: now (the subscription's retry backoff applies) or later."""
        try:
            self.subscriber.modify_ack_deadline(
                subscription=self.path,
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
