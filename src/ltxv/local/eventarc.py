"""CloudEvents as Eventarc shapes them, for the local bridge to deliver.

A finalized object becomes a `google.cloud.storage.object.v1.finalized` event with the
object's metadata as its data; a Pub/Sub message becomes a `messagePublished` event
wrapping the message (Eventarc writes its fields in both spellings). The functions read
these with the same code as in the cloud.
"""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime
from typing import Any

from cloudevents.http import CloudEvent

STORAGE_FINALIZED = "google.cloud.storage.object.v1.finalized"
PUBSUB_PUBLISHED = "google.cloud.pubsub.topic.v1.messagePublished"


def _rfc3339(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def storage_event(
    message_id: str, attributes: dict[str, str], data: bytes
) -> tuple[str, str, CloudEvent] | None:
    """The `finalized` CloudEvent for a GCS notification, or None if it is another event."""
    if attributes.get("eventType") != "OBJECT_FINALIZE":
        return None
    obj = json.loads(data) if data else {}
    bucket = obj.get("bucket") or attributes["bucketId"]
    name = obj.get("name") or attributes["objectId"]
    # fake-gcs-server's payload is thinner than GCS's: make sure the fields functions
    # rely on are there, the way GCS always sends them.
    obj.setdefault("bucket", bucket)
    obj.setdefault("name", name)
    if "objectGeneration" in attributes:
        obj.setdefault("generation", attributes["objectGeneration"])
    obj.setdefault("metageneration", "1")
    event = CloudEvent(
        {
            "specversion": "1.0",
            "id": message_id,
            "source": f"//storage.googleapis.com/projects/_/buckets/{bucket}",
            "type": STORAGE_FINALIZED,
            "subject": f"objects/{name}",
            "time": attributes.get("eventTime")
            or obj.get("updated")
            or _rfc3339(datetime.now(UTC)),
            "datacontenttype": "application/json",
        },
        obj,
    )
    return bucket, name, event


def pubsub_event(
    *,
    project: str,
    topic: str,
    subscription: str,
    message_id: str,
    data: bytes,
    attributes: dict[str, str] | None = None,
    publish_time: datetime | None = None,
) -> CloudEvent:
    """A `messagePublished` CloudEvent; Eventarc writes the message fields in both cases."""
    published = _rfc3339(publish_time or datetime.now(UTC))
    message: dict[str, Any] = {
        "data": base64.b64encode(data).decode("ascii"),
        "messageId": message_id,
        "message_id": message_id,
        "publishTime": published,
        "publish_time": published,
    }
    if attributes:
        message["attributes"] = dict(attributes)
    return CloudEvent(
        {
            "specversion": "1.0",
            "id": message_id,
            "source": f"//pubsub.googleapis.com/projects/{project}/topics/{topic}",
            "type": PUBSUB_PUBLISHED,
            "time": published,
            "datacontenttype": "application/json",
        },
        {"message": message, "subscription": f"projects/{project}/subscriptions/{subscription}"},
    )
