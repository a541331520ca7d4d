"""Webhook events per Standard Webhooks v1: built from result.json, signed, verified.

The sender (functions/notify) and every receiver use the same `standardwebhooks` library,
so what one signs the other checks byte for byte:

    webhook-id:        evt_<job_id>, the same on every retry of the event
    webhook-timestamp: Unix seconds of this attempt (receivers refuse stale ones)
    webhook-signature: v1,base64(HMAC-SHA256(secret, "<id>.<timestamp>.<body>"))

Each API key has its own secrets (`webhook_secrets`); an event is signed with every
secret of the job's owner, the signatures space-separated in one header as the standard
allows, so that a receiver keeps verifying while its secret is rotated.

Receivers: `verify_webhook(secret, headers, body)` returns the event or raises
`WebhookVerificationError`; `ltxv webhook verify` does the same from a shell.
"""

from __future__ import annotations

import base64
import hmac
import json
import secrets
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from standardwebhooks.webhooks import EmptyWebhookSecretError, Webhook, WebhookVerificationError

from ltxv.core.jobs import State

__all__ = [
    "EVENT_TYPES",
    "RUNNING_EVENT",
    "WebhookVerificationError",
    "build_event",
    "build_running_event",
    "encode_event",
    "event_id",
    "running_event_id",
    "sign_headers",
    "verify_webhook",
]

EVENT_TYPES = {
    State.SUCCEEDED: "job.succeeded",
    State.FAILED: "job.failed",
    State.CANCELED: "job.canceled",
}
RUNNING_EVENT = "job.running"
USER_AGENT = "ltxv-webhooks/1"


def new_secret() -> str:
    """A signing secret as Standard Webhooks spells it: whsec_ and 32 random bytes, base64
    (what terraform generates for a deployment)."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode("ascii")


def event_id(job_id: str) -> str:
    """One event per job (its settlement), so the id follows from the job id alone."""
    return f"evt_{job_id}"


def running_event_id(job_id: str, attempt: int) -> str:
    """One job.running event per attempt (a requeued job that runs again is a new event),
    never the settled event's id."""
    return f"evt_{job_id}_running_{attempt}"


def build_running_event(data: dict[str, Any]) -> dict[str, Any]:
    """The job.running event for its data (`webhook_triggers.running_data`)."""
    return {"type": RUNNING_EVENT, "timestamp": data["started_at"], "data": data}


def build_event(result: dict[str, Any]) -> dict[str, Any]:
    """The event for a result.json: its `data` is the result, unchanged."""
    return {
        "type": EVENT_TYPES[State(result["state"])],
        "timestamp": result["finished_at"],
        "data": result,
    }


def encode_event(event: dict[str, Any]) -> bytes:
    """The exact bytes that are signed and sent; the same for every retry."""
    return json.dumps(event, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode(
        "utf-8"
    )


def sign_headers(
    secrets: str | Sequence[str], msg_id: str, body: bytes, at: datetime | None = None
) -> dict[str, str]:
    """The Standard Webhooks headers for one delivery attempt of `body`, signed with each
    of `secrets` (one secret, or the current one and those still valid during a rotation)."""
    keys = [secrets] if isinstance(secrets, str) else list(secrets)
    if not keys:
        raise ValueError("no secret to sign with")
    at = (at or datetime.now(UTC)).astimezone(UTC)
    text = body.decode("utf-8")
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(at.timestamp())),
        "webhook-signature": " ".join(Webhook(key).sign(msg_id, at, text) for key in keys),
        "content-type": "application/json",
        "user-agent": USER_AGENT,
    }


def verify_webhook(
    secret: str,
    headers: Mapping[str, str],
    body: bytes | str,
    *,
    check_timestamp: bool = True,
) -> dict[str, Any]:
    """The verified event; raise `WebhookVerificationError` saying what did not match.

    `check_timestamp=False` checks only the signature: for replaying a captured delivery
    later (the library itself refuses timestamps more than five minutes off).
    """
    text = body if isinstance(body, str) else body.decode("utf-8", errors="strict")
    lowered = {key.lower(): value for key, value in headers.items()}
    try:
        webhook = Webhook(secret)
    except (ValueError, EmptyWebhookSecretError) as exc:  # bad base64 is a ValueError
        raise WebhookVerificationError(f"the secret is not a valid whsec_ secret: {exc}") from None
    try:
        if check_timestamp:
            return webhook.verify(text, lowered)
        return _verify_signature_only(webhook, lowered, text)
    except WebhookVerificationError:
        raise
    except ValueError as exc:  # a malformed signature header (bad base64 too)
        raise WebhookVerificationError(f"malformed webhook headers: {exc}") from None


def _verify_signature_only(webhook: Webhook, headers: dict[str, str], text: str) -> dict[str, Any]:
    msg_id = headers.get("webhook-id")
    stamp = headers.get("webhook-timestamp")
    signatures = headers.get("webhook-signature")
    if not (msg_id and stamp and signatures):
        raise WebhookVerificationError("Missing required headers")
    at = datetime.fromtimestamp(float(stamp), tz=UTC)
    expected = base64.b64decode(webhook.sign(msg_id, at, text).split(",", 1)[1])
    for candidate in signatures.split(" "):
        version, _, value = candidate.partition(",")
        if version == "v1" and hmac.compare_digest(expected, base64.b64decode(value)):
            return json.loads(text)
    raise WebhookVerificationError("No matching signature found")
