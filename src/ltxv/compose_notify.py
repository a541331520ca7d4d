"""The composition roots of functions/notify: one per entry point, each a process of its own.

Both read and write result.json on every event, so their clients are built at once (at
the first event: `main.py` calls its root then, not at import).
"""

from __future__ import annotations

from .compose import job_store, storage_client
from .dead_letters import DeadLetters
from .notify import WebhookNotifier
from .settings import Settings
from .webhook_secrets import WebhookSecrets


def result_ready(settings: Settings) -> WebhookNotifier:
    """The `result_ready` function: a job's result.json → its signed webhook."""
    return WebhookNotifier(
        job_store(settings),
        storage_client(settings),
        settings,
        secrets=WebhookSecrets.from_settings(settings),
    )


def dead_letter(settings: Settings) -> DeadLetters:
    """The `dead_letter` function: a job Pub/Sub gave up on fails, with a result.json."""
    return DeadLetters(job_store(settings), storage_client(settings), settings.outputs)
