"""A prompt file as a batch: the `.json` batch form, its webhook, and its `batches/` record.

Every upload is a batch (a `.jsonl` file, a one-job `.json` file, or a `.json` object
`{"jobs": [...], "webhook_url": ...}`, schemas/prompt-file.schema.json). Once its lines are
jobs, the batch is recorded (`ltxv.core.batches`); the notify function completes it when
the last job settles. A file none of whose lines became a job is completed here at once:
no job will ever settle to do it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import google.cloud.storage as storage

from ltxv.core import schemas
from ltxv.core.batches import BatchStore, manifest_lines, new_batch, summarize, write_manifest
from ltxv.core.urlsafety import LookupTimedOut, UnsafeURL, check_webhook_url
from ltxv.core.webhook_triggers import batch_completed_object, write_trigger_once
from ltxv.intake.validation import IntakePolicy

BATCH_FIELDS = ("jobs", "webhook_url")


class BatchFormError(ValueError):
    """The file's batch object is malformed (the code and message of a file rejection)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class BatchForm:
    jobs: list[Any]
    webhook_url: str | None


def is_batch_form(value: Any) -> bool:
    """A `.json` object with a `jobs` field (a job request has none: it would be refused
    as an unknown field, so nothing that worked before reads differently now)."""
    return isinstance(value, dict) and "jobs" in value


def read_batch_form(value: dict[str, Any], max_lines: int) -> BatchForm:
    problems = []
    for error in schemas.validator("prompt-file").iter_errors(value):
        if error.validator == "additionalProperties" and not error.relative_path:
            allowed = ", ".join(BATCH_FIELDS)
            problems += [
                f"$.{key}: unknown field; allowed fields are: {allowed}"
                for key in sorted(set(value) - set(BATCH_FIELDS))
            ]
        else:
            short = error.message if len(error.message) <= 200 else "is invalid"
            problems.append(f"{error.json_path}: {short}")
    if problems:
        raise BatchFormError("invalid_batch", "; ".join(problems))
    if len(value["jobs"]) > max_lines:
        raise BatchFormError("too_many_lines", f"the file has more than {max_lines} jobs; split it")
    return BatchForm(value["jobs"], value.get("webhook_url"))


def check_batch_webhook(url: str | None, policy: IntakePolicy) -> None:
    """The same rules as a job's webhook_url; a refusal rejects the whole file, since its
    jobs would otherwise run with nobody told when they are done."""
    if url is None:
        return
    try:
        check_webhook_url(
            url, allow_http_loopback=policy.allow_http_loopback_webhooks, resolver=policy.resolver
        )
    except LookupTimedOut as exc:
        why = f"$.webhook_url: {exc}; upload the file again later"
        raise BatchFormError("invalid_webhook_url", why) from exc
    except UnsafeURL as exc:
        raise BatchFormError("invalid_webhook_url", f"$.webhook_url: {exc}") from exc


class BatchRecorder:
    """Records each processed upload as a batch; completes a batch with no job at once."""

    def __init__(
        self,
        batches: BatchStore,
        storage_client: storage.Client,
        ttl_days: int,
        outputs_bucket: str,
    ) -> None:
        self.batches = batches
        self.storage = storage_client
        self.ttl_days = ttl_days
        self.outputs_bucket = outputs_bucket

    def record(
        self,
        *,
        bucket: str,
        name: str,
        generation: str,
        owner: str,
        accepted: list[dict[str, Any]],
        rejected: list[dict[str, Any]],
        webhook_url: str | None,
    ) -> dict[str, Any]:
        batch = self.batches.create(
            new_batch(
                bucket=bucket,
                name=name,
                generation=generation,
                api_key_id=owner,
                accepted=accepted,
                rejected=rejected,
                webhook_url=webhook_url,
                ttl_days=self.ttl_days,
            )
        )
        if not batch["accepted"]:
            lines = manifest_lines(batch, {})
            batch = self.batches.complete(batch["batch_id"], summarize(lines))
            write_manifest(self.storage, batch, lines)
            if batch.get("webhook"):
                # No job's result.json will ever tell notify, which alone holds the signing
                # secrets, that this batch is complete: a trigger object does. Create-only,
                # so a redelivered upload event asks for the one event again at most.
                write_trigger_once(
                    self.storage,
                    self.outputs_bucket,
                    batch_completed_object(batch["batch_id"]),
                    {"batch_id": batch["batch_id"]},
                )
        return batch
