"""The job contract: states, allowed transitions, stable ids and the job document's shape."""

from __future__ import annotations

import base64
import hashlib
import math
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any


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
# queued -> failed is the dead-letter topic ending a job whose message kept coming back.
TRANSITIONS: dict[State, frozenset[State]] = {
    State.QUEUED: frozenset({State.RUNNING, State.CANCELED, State.FAILED}),
    State.RUNNING: frozenset({State.SUCCEEDED, State.FAILED, State.CANCELED, State.QUEUED}),
    State.SUCCEEDED: frozenset(),
    State.FAILED: frozenset(),
    State.CANCELED: frozenset(),
}


class InvalidTransition(ValueError):
    pass


def check_transition(current: str, target: str) -> None:
    if State(target) not in TRANSITIONS[State(current)]:
        raise InvalidTransition(f"a {current} job cannot become {target}")


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


def job_id_for_prompt_line(bucket: str, name: str, generation: str, line: int) -> str:
    """A redelivered storage event for the same object generation names the same jobs."""
    return _derived_id("gs", bucket, name, str(generation), str(line))


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
    ttl_days: int = 30,
    now: datetime | None = None,
) -> dict[str, Any]:
    """The Firestore document of a freshly accepted job."""
    now = now or utcnow()
    webhook_url = request.get("webhook_url")
    return {
        "job_id": job_id,
        "state": State.QUEUED.value,
        "model": request["model"],
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
        "cancel_requested": False,
        "cancel_requested_at": None,
        "published": False,
        "published_at": None,
        "expires_at": now + timedelta(days=ttl_days),
    }


@dataclass(frozen=True)
class Page:
    """One page of an API key's jobs, newest first, and the token that asks for the next
    (None on the last): the store's documents, the API's JSON in the client."""

    jobs: list[dict[str, Any]]
    next_page_token: str | None


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
