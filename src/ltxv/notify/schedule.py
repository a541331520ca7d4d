"""When the next webhook attempt is due, and how a handler asks its trigger to come back.

Retries ride on the trigger: raising :class:`RetryLater` makes the function answer
non-2xx, and Eventarc delivers the event again after its backoff (10 s to 10 min, for
24 h); the handler then decides afresh from the job document.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from ltxv.core.jobs import DeliveryAttempt, utcnow
from ltxv.core.settings import Settings


class RetryLater(Exception):
    """The trigger must deliver this event again, not before `at`."""

    def __init__(self, job_id: str, at: datetime, reason: str) -> None:
        super().__init__(f"job {job_id}: {reason}; retry at {at.isoformat()}")
        self.job_id = job_id
        self.at = at
        self.reason = reason


# How soon a trigger comes back after a backend (Firestore, Secret Manager) failed it.
BACKEND_RETRY = timedelta(seconds=10)


def backend_retry(doc_id: str, reason: str) -> RetryLater:
    """The RetryLater of a trigger a backend failed: it comes back in BACKEND_RETRY."""
    return RetryLater(doc_id, utcnow() + BACKEND_RETRY, reason)


@dataclass(frozen=True)
class RetrySchedule:
    """Exponential backoff with jitter, bounded per step and in total."""

    base_seconds: float
    max_seconds: float
    window_seconds: float

    @classmethod
    def from_settings(cls, settings: Settings) -> RetrySchedule:
        return cls(
            settings.webhook_retry_base_seconds,
            settings.webhook_retry_max_seconds,
            settings.webhook_retry_window_seconds,
        )

    def delay(self, failed_attempts: int, retry_after: float | None, rng: float) -> float:
        """Seconds before the next attempt; `rng` in [0, 1) spreads retries of many jobs."""
        backoff = min(self.max_seconds, self.base_seconds * 2 ** (failed_attempts - 1))
        delay = backoff * (0.5 + rng / 2)
        return max(delay, retry_after) if retry_after is not None else delay

    def window_passed(self, first_attempt: datetime, when: datetime) -> bool:
        return (when - first_attempt).total_seconds() > self.window_seconds

    def gave_up(self, attempts: list[DeliveryAttempt], last: str) -> str:
        hours = self.window_seconds / 3600
        return f"gave up after {len(attempts)} attempts over {hours:g} h; last: {last}"
