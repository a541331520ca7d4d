"""What terraform creates, created in the emulators: the topics, the subscriptions (each
model's worker subscription per priority lane, with the deployment's delivery policy, and
the pull subscriptions the bridge reads in place of Eventarc's) and the buckets.

`EmulatorResources` holds the `LocalStack` methods that do it, with real clients bound to
the stack's emulators; each creation is idempotent, as it runs on every `up`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import google.cloud.pubsub_v1 as pubsub_v1
import google.cloud.storage as storage
import grpc
from google.api_core import exceptions as gexc
from google.auth.credentials import AnonymousCredentials
from google.protobuf import duration_pb2
from google.pubsub_v1.services.publisher.transports import PublisherGrpcTransport
from google.pubsub_v1.services.subscriber.transports import SubscriberGrpcTransport

from ltxv.core.dispatch import subscription_filter
from ltxv.core.resources import worker_delivery, worker_lanes
from ltxv.local.bridge import storage_events_subscription
from ltxv.local.layout import StackLayout


class EmulatorResources(StackLayout):
    """The `LocalStack` methods that reach its emulators and create what the code expects."""

    @contextlib.contextmanager
    def pubsub_clients(
        self,
    ) -> Iterator[tuple[pubsub_v1.PublisherClient, pubsub_v1.SubscriberClient]]:
        """Publisher and subscriber bound to this stack's emulator, whatever the env says."""
        channel = grpc.insecure_channel(self.pubsub_host)
        try:
            yield (
                pubsub_v1.PublisherClient(transport=PublisherGrpcTransport(channel=channel)),
                pubsub_v1.SubscriberClient(transport=SubscriberGrpcTransport(channel=channel)),
            )
        finally:
            channel.close()

    def storage_client(self) -> storage.Client:
        return storage.Client(
            project=self.project,
            credentials=AnonymousCredentials(),
            client_options={"api_endpoint": self.storage_emulator_host},
        )

    def create_pubsub_resources(self) -> None:
        s = self.settings
        # How the deployment's worker subscriptions deliver (schemas/resources.json, which
        # terraform reads too). The worker extends the deadline while it renders.
        delivery = worker_delivery()
        with self.pubsub_clients() as (publisher, subscriber):
            topic = lambda name: publisher.topic_path(self.project, name)  # noqa: E731
            for name in (s.topic, s.dead_letter_topic, s.storage_events_topic):
                _ignore_exists(publisher.create_topic, name=topic(name))
            subscriptions = [
                {
                    "name": s.subscription_for(model, lane),
                    "topic": topic(s.topic),
                    # As terraform filters each model's lane subscriptions. The emulator
                    # keeps the filter but delivers every message anyway: workers re-check.
                    "filter": subscription_filter(model, s.default_model, lane),
                    "ack_deadline_seconds": delivery.ack_deadline_seconds,
                    "dead_letter_policy": {
                        "dead_letter_topic": topic(s.dead_letter_topic),
                        "max_delivery_attempts": delivery.max_delivery_attempts,
                    },
                    "retry_policy": _retry_policy(
                        delivery.minimum_backoff_seconds, delivery.maximum_backoff_seconds
                    ),
                    "enable_exactly_once_delivery": delivery.enable_exactly_once_delivery,
                }
                for model in s.models
                for lane in worker_lanes().order
            ]
            subscriptions += [
                # The bridge pulls these and holds each message while a function runs (up
                # to 540 s), as Eventarc's push subscriptions do with a 600 s deadline.
                {
                    "name": s.dead_letter_subscription,
                    "topic": topic(s.dead_letter_topic),
                    "ack_deadline_seconds": 600,
                },
                {
                    "name": storage_events_subscription(s),
                    "topic": topic(s.storage_events_topic),
                    "ack_deadline_seconds": 600,
                    # Eventarc retries with backoff; without it a failing function is hammered.
                    "retry_policy": _retry_policy(1, 60),
                },
            ]
            for request in subscriptions:
                request["name"] = subscriber.subscription_path(self.project, request["name"])
                _ignore_exists(subscriber.create_subscription, request=request)

    def create_buckets(self) -> None:
        client = self.storage_client()
        settings = self.settings
        for bucket in (settings.prompts, settings.outputs, settings.inputs, settings.model_cache):
            with contextlib.suppress(gexc.Conflict):
                client.create_bucket(bucket)


def _retry_policy(minimum: int, maximum: int) -> dict[str, duration_pb2.Duration]:
    return {
        "minimum_backoff": duration_pb2.Duration(seconds=minimum),
        "maximum_backoff": duration_pb2.Duration(seconds=maximum),
    }


def _ignore_exists(create: Callable[..., object], **kwargs: Any) -> None:
    with contextlib.suppress(gexc.AlreadyExists):
        create(**kwargs)
