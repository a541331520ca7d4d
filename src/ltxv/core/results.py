"""result.json: the self-contained record of a settled job, written once, last.

It is the webhook event's `data`, so it carries everything a client needs without a
second lookup. Written with `if_generation_match=0`: a second writer (a redelivered
message, a repair) finds it there and leaves it.
"""

from __future__ import annotations

import json
from typing import Any

import google.cloud.storage as storage
from google.api_core import exceptions as gexc

from ltxv.core.jobs import Job, State, to_json

RESULT_NAME = "result.json"


def output_prefix(job_id: str) -> str:
    """Where a job's own outputs live in the outputs bucket (only its worker writes there)."""
    return f"jobs/{job_id}/"


# Where an API key's custom destinations (gcs_destination) may go in the outputs bucket;
# terraform's retention rule covers this prefix too.
DESTINATIONS = "destinations/"


def destination_prefix(api_key_id: str) -> str:
    return f"{DESTINATIONS}{api_key_id}/"


def build_result(
    job: Job, video: dict[str, Any] | None = None, extended: dict[str, Any] | None = None
) -> dict[str, Any]:
    state = State(job["state"])
    if not state.terminal:
        raise ValueError(f"job {job['job_id']} is {state}, not settled")
    document = to_json(
        {
            "job_id": job["job_id"],
            "state": state.value,
            "model": job["model"],
            "request": job["request"],
            "parent_job_id": job.get("parent_job_id"),
            "source": job["source"],
            "attempts": job.get("attempts", 0),
            "created_at": job["created_at"],
            "finished_at": job["state_times"][state.value],
            "outputs": job.get("outputs"),
            "video": video,
            "timings": job.get("timings") or {},
            "usage": job.get("usage"),
            "error": job.get("error"),
            "metadata": job["request"].get("metadata") or {},
        }
    )
    if job.get("inputs"):
        # Which media (URI, generation, size, sha256, frames) made the video: with the
        # request and its seed, what reproduces it.
        document["inputs"] = to_json(job["inputs"])
    if extended:
        document["extended"] = extended  # an extend's joined video (outputs.extended)
    return document


def write_result_once(client: storage.Client, outputs_bucket: str, result: dict[str, Any]) -> bool:
    """Write result.json unless it exists; True if this call wrote it."""
    blob = client.bucket(outputs_bucket).blob(output_prefix(result["job_id"]) + RESULT_NAME)
    try:
        blob.upload_from_string(
            json.dumps(result, indent=2, allow_nan=False),
            content_type="application/json",
            if_generation_match=0,
            timeout=30,
        )
    except gexc.PreconditionFailed:
        return False
    return True
