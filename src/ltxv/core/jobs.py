"""The job contract: states, allowed transitions, stable ids and the job document's shape."""

from __future__ import annotations

import base64
import hashlib
import math
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any, TypedDict

from ltxv.core.usage import Usage


class State(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL


TERMINAL = frozenset({State.SUCCEEDED, State.FAILED, State.CANCELED})

# running -> queued is a worker losing its job (preemption, crash, lease expiry);
# running -> running is another worker taking over a job whose lease ran out;
# queued -> failed is the dead-letter topic ending a job whose message kept coming back.
TRANSITIONS: dict[State, frozenset[State]] = {
    State.QUEUED: frozenset({State.RUNNING, State.CANCELED, State.FAILED}),
    State.RUNNING: frozenset(
        {State.SUCCEEDED, State.FAILED, State.CANCELED, State.QUEUED, State.RUNNING}
    ),
    State.SUCCEEDED: frozenset(),
    State.FAILED: frozenset(),
    State.CANCELED: frozenset(),
}


class InvalidTransition(ValueError):
    pass


def check_transition(current: str, target: str) -> None:
    if State(target) not in TRANSITIONS[State(current)]:
        raise InvalidTransition(f"a {current} job cannot become {target}")


class Lease(TypedDict):
    owner: str
    expires_at: datetime


class Progress(TypedDict):
    step: int
    total: int


class JobError(TypedDict):
    code: str
    message: str
    retryable: bool


# Each document type below is a class of the fields its schema requires and a subclass,
# `total=False`, of those it may lack. (`Required[...]` in one class would do, but this
# module's postponed annotations hide it from TypedDict in Python 3.11.)


class _DeliveryAttempt(TypedDict):
    at: datetime


class DeliveryAttempt(_DeliveryAttempt, total=False):
    status_code: int | None
    error: str | None
    duration_seconds: float
    in_flight: bool
    redelivery: int  # made for the settled event's redelivery number N (1, 2, ...)


class _RunningRecord(TypedDict):
    attempt: int  # the job's attempt whose job.running event this is
    event_id: str
    state: str  # pending, retrying, delivered, failed, skipped
    attempts: list[DeliveryAttempt]


class RunningRecord(_RunningRecord, total=False):
    next_attempt_at: datetime | None
    sending_until: datetime | None
    reason: str | None


class Redelivery(TypedDict):
    requested_at: datetime


class _WebhookRecord(TypedDict):
    url: str
    state: str  # pending, retrying, delivered, failed, skipped
    attempts: list[DeliveryAttempt]


class WebhookRecord(_WebhookRecord, total=False):
    event_id: str | None
    next_attempt_at: datetime | None
    sending_until: datetime | None
    reason: str | None
    redeliveries: list[Redelivery]  # POST .../webhook/redeliver, oldest first
    running: RunningRecord | None  # the latest job.running event (opt-in)


class _Job(TypedDict):
    job_id: str
    state: str  # a State
    model: str
    request: dict[str, Any]
    source: str
    created_at: datetime
    updated_at: datetime
    state_times: dict[str, datetime]  # state -> when the job last entered it
    attempts: int
    api_key_id: str
    cancel_requested: bool
    expires_at: datetime
    published: bool


class InputSelect(TypedDict):
    start: int
    count: int


# One conditioning medium, resolved and checked at submit (job.schema.json#/$defs/input):
# the worker reads exactly this object generation. Functional form: "from" is a keyword.
Input = TypedDict(
    "Input",
    {
        "from": str,  # conditions[i] or extend
        "kind": str,  # image | video
        "uri": str,
        "generation": int,
        "content_type": str,
        "bytes": int,
        "sha256": str,
        "width": int,
        "height": int,
        "frames": int,
        "select": InputSelect,
        "frame_index": int,  # resolved: never negative, on the frame grid
        "strength": float,
    },
)


class Job(_Job, total=False):
    """The job document, Firestore `jobs/{job_id}` (schemas/job.schema.json, timestamps as
    datetimes)."""

    request_hash: str
    priority: str  # its lane, request.priority (absent on jobs stored before lanes: normal)
    source_generation: str | None
    source_line: int | None
    lease: Lease | None
    progress: Progress | None
    outputs: dict[str, str] | None
    timings: dict[str, float]
    error: JobError | None
    webhook: WebhookRecord | None
    idempotency_key: str | None
    parent_job_id: str | None  # the job it retries, or the succeeded job it extends
    inputs: list[Input] | None  # conditioning media (request.conditions, then extend)
    batch_id: str | None  # the prompt-file upload it came from (batches/{id})
    cancel_requested_at: datetime | None
    published_at: datetime | None
    publish_claim_until: datetime | None
    # Start by then or fail (request.max_queue_seconds; ltxv.core.deadlines); cleared by
    # the first claim. Absent on jobs stored before deadlines: none.
    queue_deadline_at: datetime | None
    usage: Usage | None  # None until a GPU worked on it (ltxv.core.usage)


def lease_end(job: Job, now: datetime) -> datetime | None:
    """When the live lease of a running job ends: a worker is on it until then. None if
    the job is not running or its lease ran out."""
    lease = job.get("lease")
    expires_at = lease.get("expires_at") if lease else None
    if job["state"] == State.RUNNING and expires_at and expires_at > now:
        return expires_at
    return None


# One Firestore `update`: field paths (`state_times.running`) to their new values.
Changes = dict[str, Any]


def transition(job: Job, target: State, now: datetime, **fields: Any) -> Changes:
    """The write that moves `job` to `target` at `now`: the state, when it entered it, no
    lease unless it is running (only a running job has a worker), and `fields` besides.
    Raises InvalidTransition for a move the contract does not allow."""
    check_transition(job["state"], target)
    changes: Changes = {"state": target.value, f"state_times.{target.value}": now}
    if target != State.RUNNING:
        changes["lease"] = None
    return {**changes, **fields}


def utcnow() -> datetime:
    return datetime.now(UTC)


def _id_from_bytes(raw: bytes) -> str:
    # 26 base32 characters = 130 bits; lower case so ids are safe in URLs and object names.
    return base64.b32encode(raw).decode("ascii")[:26].lower()


def _derived_id(*parts: str) -> str:
    digest = hashlib.sha256("\x1f".join(parts).encode("utf-8")).digest()
    return _id_from_bytes(digest)


def new_job_id() -> str:
    return _id_from_bytes(secrets.token_bytes(17))


def job_id_for_idempotency_key(api_key_id: str, idempotency_key: str) -> str:
    """The same key from the same API key always names the same job."""
    return _derived_id("http", api_key_id, idempotency_key)


def job_id_for_retry(api_key_id: str, parent_job_id: str, idempotency_key: str) -> str:
    """A repeated retry of the same job with the same key always names the same new job
    (and never a job that a submit with that key made)."""
    return _derived_id("retry", api_key_id, parent_job_id, idempotency_key)


def job_id_for_prompt_line(bucket: str, name: str, generation: str, line: int) -> str:
    """A redelivered storage event for the same object generation names the same jobs."""
    return _derived_id("gs", bucket, name, str(generation), str(line))


def batch_id_for_prompt_file(bucket: str, name: str, generation: str) -> str:
    """The batch of one upload: a redelivered storage event names the same batch."""
    return _derived_id("batch", bucket, name, str(generation))


def new_job(
    *,
    job_id: str,
    request: dict[str, Any],
    request_hash: str,
    api_key_id: str,
    source: str = "http",
    source_generation: str | None = None,
    source_line: int | None = None,
    idempotency_key: str | None = None,
    parent_job_id: str | None = None,
    ttl_days: int = 30,
    now: datetime | None = None,
) -> Job:
    """The Firestore document of a freshly accepted job."""
    now = now or utcnow()
    webhook_url = request.get("webhook_url")
    queue_seconds = request.get("max_queue_seconds")
    return {
        "job_id": job_id,
        "state": State.QUEUED.value,
        "model": request["model"],
        "priority": request.get("priority") or "normal",
        "request": request,
        "request_hash": request_hash,
        "source": source,
        "source_generation": source_generation,
        "source_line": source_line,
        "created_at": now,
        "updated_at": now,
        "state_times": {State.QUEUED.value: now},
        "attempts": 0,
        "lease": None,
        "progress": None,
        "outputs": None,
        "timings": {},
        "error": None,
        "webhook": {"url": webhook_url, "state": "pending", "event_id": None, "attempts": []}
        if webhook_url
        else None,
        "api_key_id": api_key_id,
        "idempotency_key": idempotency_key,
        "parent_job_id": parent_job_id,
        "cancel_requested": False,
        "cancel_requested_at": None,
        "published": False,
        "published_at": None,
        "expires_at": now + timedelta(days=ttl_days),
        # The wait is measured from acceptance (ltxv.core.deadlines).
        "queue_deadline_at": now + timedelta(seconds=queue_seconds) if queue_seconds else None,
        "usage": None,
    }


@dataclass(frozen=True)
class Page:
    """One page of an API key's jobs, newest first, and the token that asks for the next
    (None on the last): the store's documents, the API's JSON in the client."""

    jobs: list[dict[str, Any]]
    next_page_token: str | None
    # The page's jobs' usage summed (ltxv.core.usage.page_total), as the API answers it.
    usage_total: dict[str, Any] | None = None


def to_json(value: Any) -> Any:
    """A job document with Firestore timestamps turned into RFC 3339 strings. A number
    that is not finite (stored before validation refused them) becomes null: JSON has no
    spelling for it, and one such value would break every answer that lists the job."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat().replace("+00:00", "Z")
    if isinstance(value, dict):
        return {k: to_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_json(v) for v in value]
    return value
