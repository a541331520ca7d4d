"""Publishing jobs to the jobs topic, where each model's GPU workers pull their own.

A message carries the job id (data and attribute) and the job's model (attribute). Each
model's worker pool pulls a subscription filtered on that attribute, so a worker only ever
receives jobs recorded for the model it has loaded.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

import google.cloud.pubsub_v1 as pubsub_v1
from google.api_core.retry import Retry
from google.cloud.pubsub_v1.types import BatchSettings

JOB_ID_ATTRIBUTE = "job_id"
MODEL_ATTRIBUTE = "model"


def make_publisher() -> pubsub_v1.PublisherClient:
    # Intake publishes one message per request and waits for it: a long batching
    # window would only add latency to every submit.
    return pubsub_v1.PublisherClient(batch_settings=BatchSettings(max_latency=0.001))


class Dispatcher:
    def __init__(
        self, publisher: pubsub_v1.PublisherClient, topic_path: str, timeout: float = 10.0
    ) -> None:
        self.publisher = publisher
        self.topic_path = topic_path
        self.timeout = timeout
        self.retry = Retry(initial=0.1, maximum=1.0, multiplier=2.0, timeout=timeout)

    def publish(self, jobs: Iterable[Mapping[str, Any]]) -> list[str]:
        """Publish a message per job (`job_id` and `model` of each) and wait until Pub/Sub
        has them all; the message ids."""
        futures = [
            self.publisher.publish(
                self.topic_path,
                json.dumps({"job_id": job["job_id"]}).encode(),
                retry=self.retry,
                timeout=self.timeout,
                **{JOB_ID_ATTRIBUTE: job["job_id"], MODEL_ATTRIBUTE: job["model"]},
            )
            for job in jobs
        ]
        return [future.result(timeout=self.timeout * 2) for future in futures]


def subscription_filter(model: str, default_model: str) -> str:
    """The filter of `model`'s worker subscription (terraform spells the same).

    The default model's pool also takes messages that name no model, published before
    messages carried one, so that an upgrade strands nothing."""
    own = f'attributes.{MODEL_ATTRIBUTE} = "{model}"'
    return f"{own} OR NOT attributes:{MODEL_ATTRIBUTE}" if model == default_model else own


def passes_filter(message_model: str | None, model: str, default_model: str) -> bool:
    """Whether `subscription_filter(model, default_model)` lets through a message whose
    model attribute is `message_model` (None: it has none).

    Pub/Sub applies the filter and never delivers the rest; the emulator stores a filter
    but delivers everything, so a worker checks again and acknowledges what its
    subscription would not have received (as Pub/Sub acknowledges filtered-out messages)."""
    # An empty attribute is still an attribute (`attributes:model` holds), as in Pub/Sub.
    return message_model == model if message_model is not None else model == default_model


def parse_job_id(data: bytes, attributes: Mapping[str, str]) -> str | None:
    """The job a message names (attribute, else data), or None for a message naming none."""
    job_id = attributes.get(JOB_ID_ATTRIBUTE)
    if not job_id:
        try:
            body = json.loads(data)
            job_id = body.get("job_id") if isinstance(body, dict) else None
        except (ValueError, UnicodeDecodeError):
            return None
    return job_id if isinstance(job_id, str) and 0 < len(job_id) <= 64 else None
