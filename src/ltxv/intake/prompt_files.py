"""Prompt files: a `.json` (one job, or a batch object `{"jobs": [...], "webhook_url"}`) or
`.jsonl` (a job per line) dropped under incoming/.

Job ids derive from the object's bucket, name, generation and line, so a storage event
delivered twice creates each job once. What became of every line is written to
`receipts/<name>.json` in the same bucket; each upload is a batch (`prompt_batches`), whose
manifest `results/<name>.jsonl` is written once all its jobs settled.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass, field
from typing import Any

import google.cloud.storage as storage
from google.api_core import exceptions as gexc

from ltxv.core.batches import BatchStore
from ltxv.core.errors import BACKEND_ERRORS
from ltxv.core.jobs import batch_id_for_prompt_file, job_id_for_prompt_line, to_json, utcnow
from ltxv.core.prompt_names import INCOMING, SUFFIXES, receipt_name
from ltxv.core.urlsafety import LookupTimedOut, caching
from ltxv.intake.conditions import conditioned
from ltxv.intake.field_errors import FieldError, RequestInvalid
from ltxv.intake.job_origin import JobOrigin
from ltxv.intake.prompt_batches import (
    BatchFormError,
    BatchRecorder,
    check_batch_webhook,
    is_batch_form,
    read_batch_form,
)
from ltxv.intake.refusals import IdempotencyConflict, TooManyJobs, Unavailable
from ltxv.intake.strict_json import JsonSyntaxError, parse_json
from ltxv.intake.submission import Intake
from ltxv.intake.validation import IntakePolicy

log = logging.getLogger(__name__)

RECEIPT_WRITE_ATTEMPTS = 5


class PromptFileError(ValueError):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass
class Receipt:
    source: str
    generation: str
    accepted: list[dict[str, Any]] = field(default_factory=list)
    rejected: list[dict[str, Any]] = field(default_factory=list)
    error: dict[str, str] | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "generation": self.generation,
            "processed_at": to_json(utcnow()),
            "accepted": self.accepted,
            "rejected": self.rejected,
            "error": self.error,
        }


@dataclass(frozen=True)
class Entry:
    line: int
    value: Any = None
    syntax_error: str | None = None


@dataclass(frozen=True)
class ParsedFile:
    entries: list[Entry]
    webhook_url: str | None = None  # where the batch.completed event goes (.json form only)


def parse_lines(name: str, raw: bytes, max_lines: int) -> ParsedFile:
    """One entry per job in the file (lines count from 1; blank lines are skipped; a batch
    object's jobs count from 1 in order)."""
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise PromptFileError("not_utf8", f"the file is not UTF-8 text: {exc.reason}") from exc
    if not text.strip():
        raise PromptFileError("empty", "the file is empty; put one JSON job object in it")
    if name.endswith(".json"):
        try:
            value = parse_json(text)
        except JsonSyntaxError as exc:
            raise PromptFileError("invalid_json", f"the file is not valid JSON: {exc}") from exc
        if isinstance(value, list):
            raise PromptFileError(
                "not_an_object",
                'a .json prompt file holds one job object or {"jobs": [...]}; or use .jsonl',
            )
        if not is_batch_form(value):
            return ParsedFile([Entry(1, value)])
        try:
            form = read_batch_form(value, max_lines)
        except BatchFormError as exc:
            raise PromptFileError(exc.code, str(exc)) from exc
        return ParsedFile([Entry(n, job) for n, job in enumerate(form.jobs, 1)], form.webhook_url)
    entries: list[Entry] = []
    # JSON Lines ends a line at \n only (\r\n too): str.splitlines() would also split at
    # U+2028, U+0085 and others, which JSON strings may hold unescaped.
    for number, line in enumerate(text.split("\n"), start=1):
        line = line.removesuffix("\r")
        if not line.strip():
            continue
        if len(entries) >= max_lines:
            raise PromptFileError(
                "too_many_lines", f"the file has more than {max_lines} jobs; split it"
            )
        try:
            entries.append(Entry(number, parse_json(line)))
        except JsonSyntaxError as exc:
            entries.append(Entry(number, syntax_error=f"line is not valid JSON: {exc}"))
    return ParsedFile(entries)


class PromptFiles:
    def __init__(
        self,
        intake: Intake,
        storage_client: storage.Client,
        *,
        prompts_bucket: str,
        owner: str,
        max_bytes: int,
        max_lines: int,
        batches: BatchStore | None = None,
    ) -> None:
        self.intake = intake
        self.storage = storage_client
        self.prompts_bucket = prompts_bucket
        self.owner = owner
        self.max_bytes = max_bytes
        self.max_lines = max_lines
        batches = batches or BatchStore(intake.store.client, intake.store.timeout)
        self.batches = BatchRecorder(
            batches, storage_client, intake.ttl_days, intake.policy.outputs_bucket
        )

    def wants(self, bucket: str, name: str) -> bool:
        return bucket == self.prompts_bucket and name.startswith(INCOMING)

    def handle(self, bucket: str, name: str, generation: str, size: int | None) -> Receipt | None:
        """Turn one finalized object into jobs and a receipt; None when it is not ours."""
        if not self.wants(bucket, name):
            log.info("ignored object", extra={"object": f"gs://{bucket}/{name}"})
            return None
        receipt = Receipt(source=f"gs://{bucket}/{name}", generation=str(generation))
        # Each webhook host is looked up once per file, not once per line: 5000 lines naming
        # one slow name server would otherwise wait on it 5000 times.
        policy = self.intake.policy
        policy = dataclasses.replace(policy, resolver=caching(policy.resolver))
        try:
            parsed = self._read(bucket, name, generation, size)
            check_batch_webhook(parsed.webhook_url, policy)
        except (PromptFileError, BatchFormError) as exc:
            receipt.error = {"code": exc.code, "message": str(exc)}
            parsed = ParsedFile([])
        except gexc.NotFound:
            log.info("object gone before it was read", extra={"object": receipt.source})
            return None
        room = self.intake.room_for(self.owner) if parsed.entries else 0
        batch = batch_id_for_prompt_file(bucket, name, str(generation))
        for entry in parsed.entries:
            room -= self._accept_line(
                receipt, bucket, name, str(generation), entry, batch, full=room < 1, policy=policy
            )
        if receipt.error is None:
            # Before the receipt, which is what a client waits for first.
            self.batches.record(
                bucket=bucket,
                name=name,
                generation=str(generation),
                owner=self.owner,
                accepted=receipt.accepted,
                rejected=receipt.rejected,
                webhook_url=parsed.webhook_url,
            )
        self._write_receipt(bucket, name, receipt)
        return receipt

    def _read(self, bucket: str, name: str, generation: str, size: int | None) -> ParsedFile:
        if not name.endswith(SUFFIXES):
            raise PromptFileError(
                "unsupported_type", "prompt files must end in .json (one job) or .jsonl"
            )
        if size is not None and int(size) > self.max_bytes:
            raise PromptFileError(
                "too_large", f"the file is {size} bytes; the limit is {self.max_bytes}"
            )
        blob = self.storage.bucket(bucket).blob(name, generation=int(generation))
        raw = blob.download_as_bytes(timeout=30)
        if len(raw) > self.max_bytes:
            raise PromptFileError("too_large", f"the file is larger than {self.max_bytes} bytes")
        return parse_lines(name, raw, self.max_lines)

    def _accept_line(
        self,
        receipt: Receipt,
        bucket: str,
        name: str,
        generation: str,
        entry: Entry,
        batch_id: str,
        *,
        full: bool,
        policy: IntakePolicy,
    ) -> int:
        """Make the line's job, or reject the line: whatever is wrong with one line is
        that line's rejection, never the file's. Only an outage propagates (the event is
        delivered again and the stable job ids make the lines already done replays).
        `full`: the owner key has its limit of jobs in flight. 1 if a job was created."""
        line = entry.line
        job_id = job_id_for_prompt_line(bucket, name, generation, line)
        origin = JobOrigin(
            api_key_id=self.owner,
            source=f"gs://{bucket}/{name}",
            source_generation=generation,
            source_line=line,
            batch_id=batch_id,
        )
        try:
            if entry.syntax_error:
                raise RequestInvalid([FieldError("$", entry.syntax_error)])
            # A delivery of the file again: a line whose job exists reads no media again.
            looked_up = _names_media(entry.value)
            existing = self.intake.existing(job_id) if looked_up else None
            if existing is not None:
                created = self.intake.replay(existing).created
            else:
                created = self._create(
                    entry.value, job_id, origin, full=full, policy=policy, missing=looked_up
                )
        except RequestInvalid as exc:
            receipt.rejected.append({"line": line, "errors": [e.as_dict() for e in exc.errors]})
            return 0
        except LookupTimedOut as exc:
            # A file cannot be half retried, and one name server that never answers must
            # not hold up the lines after it for a day: the line says why; upload it again.
            error = FieldError("$.webhook_url", f"{exc}; upload this line again later")
            receipt.rejected.append({"line": line, "errors": [error.as_dict()]})
            return 0
        except IdempotencyConflict:
            # An earlier delivery made this line's job from a request that validates
            # differently now (a deployment changed the defaults): the job stands.
            created = False
        except (Unavailable, *BACKEND_ERRORS):
            raise
        except Exception:
            log.exception("prompt-file line failed", extra={"object": receipt.source, "line": line})
            error = FieldError("$", "this line could not be made into a job (an internal error)")
            receipt.rejected.append({"line": line, "errors": [error.as_dict()]})
            return 0
        receipt.accepted.append({"line": line, "job_id": job_id})
        return int(created)

    def _create(
        self,
        value: Any,
        job_id: str,
        origin: JobOrigin,
        *,
        full: bool,
        policy: IntakePolicy,
        missing: bool = False,
    ) -> bool:
        """The line's job, checked as an HTTP submit is (as the owner's), unless the owner
        key is `full` (then before its media are read). Whether it was created. `missing`:
        the job was just looked up and is not there (no second read)."""
        inline: dict[str, bytes] = {}
        request = self.intake.validate(value, api_key_id=self.owner, policy=policy, inline=inline)
        if full and (missing or self.intake.existing(job_id) is None):
            full_up = TooManyJobs(self.intake.max_in_flight)
            raise RequestInvalid([FieldError("$", f"{full_up}; upload this line again later")])
        resolved = self.intake.inspect(request, api_key_id=self.owner, policy=policy, inline=inline)
        origin = dataclasses.replace(
            origin, parent_job_id=resolved.extends, inputs=tuple(resolved.inputs)
        )
        return self.intake.accept(request, job_id=job_id, origin=origin).created

    def _write_receipt(self, bucket: str, name: str, receipt: Receipt) -> None:
        """Write the receipt unless a newer upload's is there; each write is conditional
        on the receipt it replaces, so two deliveries racing cannot both win."""
        for _ in range(RECEIPT_WRITE_ATTEMPTS):
            blob = self.storage.bucket(bucket).get_blob(receipt_name(name), timeout=30)
            if blob is not None and _receipt_generation(blob) > int(receipt.generation):
                return  # a late retry of an older upload must not hide the newer receipt
            try:
                self.storage.bucket(bucket).blob(receipt_name(name)).upload_from_string(
                    json.dumps(receipt.as_dict(), indent=2, allow_nan=False),
                    content_type="application/json",
                    if_generation_match=blob.generation if blob is not None else 0,
                    timeout=30,
                )
            except gexc.PreconditionFailed:
                continue  # another delivery wrote it meanwhile: look again
            log.info(
                "prompt file processed",
                extra={
                    "object": receipt.source,
                    "accepted": len(receipt.accepted),
                    "rejected": len(receipt.rejected),
                    "error": receipt.error,
                },
            )
            return
        raise Unavailable(f"receipt for {receipt.source} kept changing under each write")


def _receipt_generation(blob: storage.Blob) -> int:
    """The prompt-file generation a stored receipt is for (0 if it cannot be read)."""
    try:
        return int(json.loads(blob.download_as_bytes(timeout=30)).get("generation", 0))
    except (ValueError, TypeError, AttributeError, gexc.NotFound):
        return 0


def _names_media(value: Any) -> bool:
    """Whether a line (before validation) may name media to read: only such a line is
    looked up before it is checked, the others cost no I/O to check."""
    return isinstance(value, dict) and conditioned(value)
