"""Publishing job ids to the jobs topic, where the GPU workers pull them."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping

from google.api_core.retry import Retry
from google.cloud import pubsub_v1
from google.cloud.pubsub_v1.types import BatchSettings


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

    def publish(self, job_ids: Iterable[str]) -> list[str]:
        """Publish each id (data and attribute) and wait until Pub/Sub has them all."""
        futures = [
            self.publisher.publish(
                self.topic_path,
                json.dumps({"job_id": job_id}).encode(),
                retry=self.retry,
                timeout=self.timeout,
                job_id=job_id,
            )
            for job_id in job_ids
        ]
        return [future.result(timeout=self.timeout * 2) for future in futures]


def parse_job_id(data: bytes, attributes: Mapping[str, str]) -> str | None:
    """The job a message names (attribute, else data), or None for a message naming none."""
    job_id = attributes.get("job_id")
    if not job_id:
        try:
            body = json.loads(data)
            job_id = body.get("job_id") if isinstance(body, dict) else None
        except (ValueError, UnicodeDecodeError):
            return None
    return job_id if isinstance(job_id, str) and 0 < len(job_id) <= 64 else None
