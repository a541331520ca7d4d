"""One claimed webhook attempt: check the URL again, sign, POST, and say what became of it.

Shared by the settled event (`notifier`) and the job.running event (`running_events`):
both claim an attempt in the job document first, then call `AttemptSender.attempt`,
which never raises, so that every outcome is recorded.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, TypedDict

from ltxv.core.jobs import DeliveryAttempt
from ltxv.core.settings import Settings
from ltxv.core.urlsafety import (
    RESOLVE_TIMEOUT_SECONDS,
    Resolver,
    Unresolvable,
    UnsafeURL,
    check_webhook_url,
    system_resolver,
)
from ltxv.core.webhooks import sign_headers
from ltxv.notify.webhook_sender import (
    INTERNAL_ERROR,
    TIMED_OUT,
    SendResult,
    describe_error,
    post_pinned,
)

log = logging.getLogger(__name__)

# How long past an attempt's own deadlines (DNS, then the POST) its `sending_until` mark
# still holds off other triggers: room for the claim's commit and the clocks of two
# function instances.
SENDING_MARGIN_SECONDS = 30.0
INTERRUPTED = "interrupted"
SETTLED = ("delivered", "failed")
# Final too, but nothing to redeliver: the request's webhook_events left the event out,
# or (job.running) the job had moved on before the event could be sent.
SKIPPED = "skipped"
FINAL = (*SETTLED, SKIPPED)

Send = Callable[..., SendResult]


@dataclass(frozen=True)
class Claim:
    """One attempt, claimed: where it goes, signed with what, and when it must be over."""

    job_id: str
    event_id: str
    index: int  # its place in the record's attempts
    url: str
    secrets: tuple[str, ...]
    send_by: float  # the notifier's clock: the POST must have ended by then
    redelivery: int | None = None  # the settled event sent again: which redelivery


class Outcome(TypedDict):
    """What a sent attempt adds to its DeliveryAttempt (beside `at`)."""

    status_code: int | None
    error: str | None
    duration_seconds: float


def outcome_of(sent: SendResult) -> Outcome:
    return {
        "status_code": sent.status_code,
        "error": sent.error,
        "duration_seconds": sent.duration_seconds,
    }


def filled(attempt: DeliveryAttempt, outcome: Outcome) -> DeliveryAttempt:
    """A claimed attempt with its outcome: what it was for stays, `in_flight` goes."""
    kept: dict[str, Any] = {k: v for k, v in attempt.items() if k in ("at", "redelivery")}
    return {**kept, **outcome}  # type: ignore[typeddict-item]


def interrupted(attempt: DeliveryAttempt) -> DeliveryAttempt:
    """An attempt whose invocation ended before recording it: failed, and it counts."""
    return filled(attempt, {"status_code": None, "error": INTERRUPTED, "duration_seconds": 0.0})


@dataclass
class AttemptSender:
    settings: Settings
    resolver: Resolver = system_resolver
    send: Send = post_pinned
    clock: Callable[[], float] = time.monotonic
    # The most an attempt takes once claimed (a lookup, then the POST), and how long its
    # claim keeps other triggers off: longer by a margin.
    budget: float = field(init=False)
    hold: timedelta = field(init=False)

    def __post_init__(self) -> None:
        self.budget = RESOLVE_TIMEOUT_SECONDS + self.settings.webhook_timeout_seconds
        self.hold = timedelta(seconds=self.budget + SENDING_MARGIN_SECONDS)

    def attempt(self, claim: Claim, body: bytes) -> tuple[SendResult, str | None]:
        """Check the URL and POST; the outcome, and why it is final if it is a refusal.
        Never raises: whatever happens must be recorded."""
        started = self.clock()
        try:
            checked = check_webhook_url(
                claim.url,
                allow_http_loopback=self.settings.allow_http_loopback_webhooks,
                resolver=self.resolver,
            )
            timeout = min(self.settings.webhook_timeout_seconds, claim.send_by - self.clock())
            if timeout <= 0:
                return SendResult(None, TIMED_OUT, self._since(started)), None
            headers = sign_headers(claim.secrets, claim.event_id, body)
            return self.send(checked, body, headers, timeout=timeout), None
        except Unresolvable as exc:  # DNS may answer next time
            return SendResult(None, str(exc), self._since(started)), None
        except UnsafeURL as exc:
            return SendResult(None, str(exc), self._since(started)), str(exc)
        except Exception as exc:
            log.exception("webhook attempt failed unexpectedly", extra={"job_id": claim.job_id})
            detail = describe_error(exc)
            return SendResult(None, INTERNAL_ERROR, self._since(started), detail=detail), None

    def _since(self, started: float) -> float:
        return round(max(0.0, self.clock() - started), 3)


def log_attempt(job_id: str, event_id: str, sent: SendResult, state: str, **extra: Any) -> None:
    """The log line of one attempt, whichever event it sent."""
    log.info(
        "webhook attempt",
        extra={
            "job_id": job_id,
            "event_id": event_id,
            **extra,
            "status_code": sent.status_code,
            "error": sent.error,
            "detail": sent.detail,
            "duration_seconds": sent.duration_seconds,
            "delivery_state": state,
        },
    )
