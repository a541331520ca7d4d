"""Where an accepted job came from (its key, its source, its parent, its checked inputs),
and what accepting it answered: shared by the HTTP API, retries and prompt files."""

from __future__ import annotations

from dataclasses import dataclass

from ltxv.core.jobs import Input, Job


@dataclass(frozen=True)
class Accepted:
    job: Job
    created: bool  # False: an earlier request (or event) had already created this job


@dataclass(frozen=True)
class JobOrigin:
    api_key_id: str
    source: str = "http"
    source_generation: str | None = None
    source_line: int | None = None
    idempotency_key: str | None = None
    # The job it retries, or the succeeded job it extends (request.extend).
    parent_job_id: str | None = None
    batch_id: str | None = None  # a prompt-file upload's line
    inputs: tuple[Input, ...] = ()  # its conditioning media, checked (input_inspection)
