"""Batches: the jobs of one prompt-file upload, and its manifest once every job settled.

Firestore `batches/{batch_id}` (the id derives from the file's bucket, name and
generation, so a redelivered storage event finds the same batch) is created by the
prompt-file function once the file's lines are jobs; each job carries its `batch_id`. The
notify function, which sees every job's result.json, adds the job to the batch's `settled`
set with an ArrayUnion: a server-side transform, so concurrent settles never lose one
another and a repeated trigger adds nothing. Whoever then reads a batch with every job
settled completes it: one conditional write (`JobStore.decide`) fixes `completed_at` and
the summary once, and the manifest is written from those fixed values, create-only, so
concurrent completers write one object (the others' writes fail their precondition).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any, cast

import google.cloud.storage as storage
from google.api_core import exceptions as gexc
from google.cloud import firestore

from ltxv.core.jobs import batch_id_for_prompt_file, to_json, utcnow
from ltxv.core.prompt_names import MANIFEST_GENERATION, manifest_name
from ltxv.core.store import Decision, JobStore, TransactionContended

BATCHES = "batches"
OPEN, COMPLETED = "open", "completed"
MANIFEST_WRITE_ATTEMPTS = 5
# Rejections are kept on the batch for its manifest; past this many bytes of them a line
# keeps a pointer to the receipt instead (a Firestore document holds at most 1 MiB).
REJECTIONS_BUDGET_BYTES = 256 * 1024
GET_ALL_CHUNK = 300

Batch = dict[str, Any]


def batch_event_id(batch_id: str) -> str:
    """One event per batch: its completion (job event ids are `evt_<job id>`)."""
    return f"evt_batch_{batch_id}"


def new_batch(
    *,
    bucket: str,
    name: str,
    generation: str,
    api_key_id: str,
    accepted: list[dict[str, Any]],
    rejected: list[dict[str, Any]],
    webhook_url: str | None,
    ttl_days: int,
    now: datetime | None = None,
) -> Batch:
    now = now or utcnow()
    return {
        "batch_id": batch_id_for_prompt_file(bucket, name, generation),
        "source": f"gs://{bucket}/{name}",
        "bucket": bucket,
        "name": name,
        "generation": str(generation),
        "api_key_id": api_key_id,
        "accepted": accepted,
        "rejected": _within_budget(rejected),
        "settled": [],
        "state": OPEN,
        "created_at": now,
        "updated_at": now,
        "completed_at": None,
        "summary": None,
        "manifest": f"gs://{bucket}/{manifest_name(name)}",
        "webhook": {"url": webhook_url, "state": "pending", "event_id": None, "attempts": []}
        if webhook_url
        else None,
        "expires_at": now + timedelta(days=ttl_days),
    }


def _within_budget(rejected: list[dict[str, Any]]) -> list[dict[str, Any]]:
    kept, used = [], 0
    for entry in rejected:
        used += len(json.dumps(entry, allow_nan=False))
        if used > REJECTIONS_BUDGET_BYTES:
            why = "rejected; the receipt lists why (too many rejections to repeat here)"
            entry = {"line": entry["line"], "errors": [{"path": "$", "message": why}]}
        kept.append(entry)
    return kept


def is_complete(batch: Batch) -> bool:
    settled = set(batch.get("settled") or [])
    return all(entry["job_id"] in settled for entry in batch["accepted"])


class BatchStore:
    """`batches/{id}`; its conditional writes are the job store's, on another collection."""

    def __init__(self, client: firestore.Client, timeout: float = 10.0) -> None:
        self.docs = JobStore(client, BATCHES, timeout)
        self.client = client

    def create(self, batch: Batch) -> Batch:
        """Create the batch; a redelivered event finds the first delivery's, which stands."""
        ref = self.docs.ref(batch["batch_id"])
        try:
            ref.create(batch, retry=self.docs.retry, timeout=self.docs.timeout)
        except (gexc.AlreadyExists, gexc.Conflict):
            return self.get(batch["batch_id"]) or batch
        return batch

    def get(self, batch_id: str) -> Batch | None:
        return cast("Batch | None", self.docs.get(batch_id))

    def add_settled(self, batch_id: str, job_id: str) -> Batch | None:
        """Count the job as settled (idempotent); the batch as it is now, None if none."""
        ref = self.docs.ref(batch_id)
        try:
            ref.update(
                {"settled": firestore.ArrayUnion([job_id])},
                retry=self.docs.retry,
                timeout=self.docs.timeout,
            )
        except gexc.NotFound:
            return None
        return self.get(batch_id)

    def complete(self, batch_id: str, summary: dict[str, int]) -> Batch:
        """Mark the batch completed once; every later call gets the first one's values."""

        def decide(batch: Any, now: datetime) -> Decision[None]:
            if batch["state"] == COMPLETED:
                return Decision(None)
            return Decision(None, {"state": COMPLETED, "completed_at": now, "summary": summary})

        decided = self.docs.decide(batch_id, decide)
        if decided is None:
            raise LookupError(f"batch {batch_id} is gone")
        return cast(Batch, decided[0])


def jobs_by_id(jobs: JobStore, job_ids: Iterable[str]) -> dict[str, dict[str, Any]]:
    """The job documents of `job_ids` in a few batched reads (missing ones left out)."""
    ids = list(job_ids)
    found: dict[str, dict[str, Any]] = {}
    for start in range(0, len(ids), GET_ALL_CHUNK):
        refs = [jobs.ref(job_id) for job_id in ids[start : start + GET_ALL_CHUNK]]
        for snapshot in jobs.client.get_all(refs, retry=jobs.retry, timeout=jobs.timeout):
            if snapshot.exists:
                found[snapshot.id] = cast(dict[str, Any], snapshot.to_dict())
    return found


def manifest_lines(batch: Batch, jobs: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """One entry per line of the file, in order: its job's outcome, or its rejection."""
    entries = []
    for entry in batch["accepted"]:
        job = jobs.get(entry["job_id"])
        if job is None:  # past its TTL, or deleted by hand
            missing = {"code": "job_missing", "message": "the job document is gone"}
            entries.append(_line(entry["line"], entry["job_id"], "failed", None, missing))
            continue
        outputs = {
            k: v for k, v in (job.get("outputs") or {}).items() if str(v).startswith("gs://")
        }
        entries.append(
            _line(entry["line"], entry["job_id"], job["state"], outputs or None, job.get("error"))
        )
    for entry in batch["rejected"]:
        error = {
            "code": "rejected",
            "message": "this line was not made into a job",
            "details": entry["errors"],
        }
        entries.append(_line(entry["line"], None, "rejected", None, error))
    return sorted(entries, key=lambda e: e["line"])


def _line(line: int, job_id: str | None, state: str, outputs: Any, error: Any) -> dict[str, Any]:
    return {"line": line, "job_id": job_id, "state": state, "outputs": outputs, "error": error}


# In this order in the manifest and the event: Firestore hands maps back in its own order,
# and the event's bytes must be the same on every attempt.
SUMMARY_KEYS = ("lines", "jobs", "succeeded", "failed", "canceled", "rejected")


def summarize(lines: list[dict[str, Any]]) -> dict[str, int]:
    summary = dict.fromkeys(SUMMARY_KEYS, 0)
    for entry in lines:
        summary["lines"] += 1
        summary["jobs"] += entry["job_id"] is not None
        if entry["state"] in summary:
            summary[entry["state"]] += 1
    return summary


def manifest_header(batch: Batch) -> dict[str, Any]:
    """The manifest's first line, and the batch.completed event's data."""
    return cast(
        dict[str, Any],
        to_json(
            {
                "batch_id": batch["batch_id"],
                "source": batch["source"],
                "generation": batch["generation"],
                "completed_at": batch["completed_at"],
                "manifest": batch["manifest"],
                "summary": {key: batch["summary"][key] for key in SUMMARY_KEYS},
            }
        ),
    )


def encode_manifest(batch: Batch, lines: list[dict[str, Any]]) -> bytes:
    rows = [manifest_header(batch), *(to_json(line) for line in lines)]
    text = "".join(json.dumps(row, ensure_ascii=False, allow_nan=False) + "\n" for row in rows)
    return text.encode("utf-8")


def write_manifest(client: storage.Client, batch: Batch, lines: list[dict[str, Any]]) -> bool:
    """Write the batch's manifest unless it is there, or a newer upload's is; True if this
    call wrote it. Each write is conditional on the object it replaces (none: 0)."""
    bucket = client.bucket(batch["bucket"])
    name = manifest_name(batch["name"])
    body = encode_manifest(batch, lines)
    for _ in range(MANIFEST_WRITE_ATTEMPTS):
        blob = bucket.get_blob(name, timeout=30)
        if blob is not None and _generation_of(blob) >= int(batch["generation"]):
            return False  # this batch's (written by a concurrent completer) or a newer one's
        target = bucket.blob(name)
        target.metadata = {MANIFEST_GENERATION: batch["generation"]}
        try:
            target.upload_from_string(
                body,
                content_type="application/jsonl",
                if_generation_match=blob.generation if blob is not None else 0,
                timeout=30,
            )
        except gexc.PreconditionFailed:
            continue  # written meanwhile: look again
        return True
    raise TransactionContended(f"manifest {name} changed under each write")


def _generation_of(blob: storage.Blob) -> int:
    try:
        return int((blob.metadata or {}).get(MANIFEST_GENERATION, 0))
    except (TypeError, ValueError):
        return 0
