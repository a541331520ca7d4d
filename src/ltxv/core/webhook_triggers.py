"""Objects that ask the notify function for a webhook event other than a job's first
settled one: a redelivery of the settled event (written by the API), a `job.running`
event (written by the GPU worker that claimed the job), and the `batch.completed` event of
a prompt file none of whose lines became a job (written by the prompt-file function: no
job's result.json will ever complete that batch).

They are small JSON objects in the outputs bucket, a job's next to its result.json, so
the notify function's storage trigger (which already sees every object of that bucket)
delivers them, and only the notify function, which holds the webhook secrets, ever signs
anything. Each is created once (`if_generation_match=0`) under a name
that says which redelivery or which attempt it is for, so a repeated write is harmless.
The names end in `.webhook.json`: the API's IAM condition lets it create exactly these
and result.json (terraform/iam.tf).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

import google.cloud.storage as storage
from google.api_core import exceptions as gexc

from ltxv.core.jobs import Job, to_json
from ltxv.core.results import output_prefix

TRIGGER_SUFFIX = ".webhook.json"
REDELIVERY_OBJECT = re.compile(
    r"^jobs/([a-z0-9]{1,64})/redelivery-([1-9][0-9]{0,5})\.webhook\.json$"
)
RUNNING_OBJECT = re.compile(r"^jobs/([a-z0-9]{1,64})/running-([1-9][0-9]{0,5})\.webhook\.json$")
BATCH_COMPLETED_OBJECT = re.compile(r"^batches/([a-z2-7]{26})/completed\.webhook\.json$")
# What a request gets when it names no webhook_events (and what jobs stored before the
# field existed mean): the settled event only.
DEFAULT_EVENTS = ("settled",)


def redelivery_object(job_id: str, number: int) -> str:
    return f"{output_prefix(job_id)}redelivery-{number}{TRIGGER_SUFFIX}"


def running_object(job_id: str, attempt: int) -> str:
    return f"{output_prefix(job_id)}running-{attempt}{TRIGGER_SUFFIX}"


def batch_completed_object(batch_id: str) -> str:
    return f"batches/{batch_id}/completed{TRIGGER_SUFFIX}"


def wanted_events(job: Mapping[str, Any]) -> tuple[str, ...]:
    """The events the job's owner asked for (none without a webhook)."""
    if not job.get("webhook"):
        return ()
    events = (job.get("request") or {}).get("webhook_events")
    return tuple(events) if events else DEFAULT_EVENTS


def running_data(job: Job) -> dict[str, Any]:
    """The `data` of a job.running event: the job as its worker just claimed it."""
    return to_json(
        {
            "job_id": job["job_id"],
            "state": "running",
            "model": job["model"],
            "attempt": job["attempts"],
            "created_at": job["created_at"],
            "started_at": job["state_times"]["running"],
            "metadata": job["request"].get("metadata") or {},
        }
    )


def write_trigger_once(
    client: storage.Client, bucket: str, name: str, content: dict[str, Any], timeout: float = 30
) -> bool:
    """Create the trigger object unless it exists; True if this call created it."""
    blob = client.bucket(bucket).blob(name)
    try:
        blob.upload_from_string(
            json.dumps(content, allow_nan=False),
            content_type="application/json",
            if_generation_match=0,
            timeout=timeout,
        )
    except gexc.PreconditionFailed:
        return False
    return True
