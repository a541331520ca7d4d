"""Publishing jobs to the jobs topic, where each model's GPU workers pull their own.

A message carries the job id (data and attribute), the job's model and its lane (the
request's priority) as attributes. Each model's worker pool pulls one subscription per lane,
filtered on both, so a worker only ever receives jobs recorded for the model it has loaded,
and can take a higher lane's job first.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from concurrent.futures import Future
from typing import Any

import google.cloud.pubsub_v1 as pubsub_v1
from google.api_core.retry import Retry
from google.cloud.pubsub_v1.types import BatchSettings

from ltxv.core.resources import worker_lanes

JOB_ID_ATTRIBUTE = "job_id"
MODEL_ATTRIBUTE = "model"
LANE_ATTRIBUTE = "lane"


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
        """Publish a message per job (`job_id`, `model` and lane of each) and wait until
        Pub/Sub has them all; the message ids."""
        return self.wait(self.start(jobs))

    def start(self, jobs: Iterable[Mapping[str, Any]]) -> list[Future[str]]:
        """Hand a message per job to the publisher, without waiting for Pub/Sub."""
        return [
            self.publisher.publish(
                self.topic_path,
                json.dumps({"job_id": job["job_id"]}).encode(),
                retry=self.retry,
                timeout=self.timeout,
                **{
                    JOB_ID_ATTRIBUTE: job["job_id"],
                    MODEL_ATTRIBUTE: job["model"],
                    LANE_ATTRIBUTE: job_lane(job),
                },
            )
            for job in jobs
        ]

    def wait(self, started: list[Future[str]]) -> list[str]:
        """The message ids of `start`ed messages, once Pub/Sub has them all."""
        return [future.result(timeout=self.timeout * 2) for future in started]


def job_lane(job: Mapping[str, Any]) -> str:
    """The lane a job's message goes to: its priority (jobs stored before lanes have none)."""
    lane = job.get("priority")
    return lane if lane in worker_lanes().order else worker_lanes().default


def subscription_filter(model: str, default_model: str, lane: str | None = None) -> str:
    """The filter of `model`'s worker subscription for `lane` (terraform spells the same).

    The default model's pool also takes messages that name no model, and the default lane
    messages that name no lane, both published before messages carried them, so that an
    upgrade strands nothing."""
    lane = lane or worker_lanes().default
    own = f'attributes.{MODEL_ATTRIBUTE} = "{model}"'
    if model == default_model:
        own = f"({own} OR NOT attributes:{MODEL_ATTRIBUTE})"
    in_lane = f'attributes.{LANE_ATTRIBUTE} = "{lane}"'
    if lane == worker_lanes().default:
        in_lane = f"({in_lane} OR NOT attributes:{LANE_ATTRIBUTE})"
    return f"{own} AND {in_lane}"


def passes_filter(
    message_model: str | None,
    model: str,
    default_model: str,
    message_lane: str | None = None,
    lane: str | None = None,
) -> bool:
    """Whether `subscription_filter(model, default_model, lane)` lets through a message
    whose model and lane attributes are `message_model` and `message_lane` (None: absent).

    Pub/Sub applies the filter and never delivers the rest; the emulator stores a filter
    but delivers everything, so a worker checks again and acknowledges what its
    subscription would not have received (as Pub/Sub acknowledges filtered-out messages)."""
    lane = lane or worker_lanes().default
    # An empty attribute is still an attribute (`attributes:model` holds), as in Pub/Sub.
    own = message_model == model if message_model is not None else model == default_model
    default_lane = worker_lanes().default
    in_lane = message_lane == lane if message_lane is not None else lane == default_lane
    return own and in_lane


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
