"""The composition roots of functions/notify: one per entry point, each a process of its own.

Both read and write result.json on every event, so their clients are built at once (at
the first event: `main.py` calls its root then, not at import).
"""

from __future__ import annotations

from ltxv.core.batches import BATCHES, BatchStore
from ltxv.core.compose import job_store, storage_client
from ltxv.core.settings import Settings
from ltxv.core.store import JobStore
from ltxv.core.webhook_secrets import WebhookSecrets
from ltxv.notify.batches import Batches, ResultReady
from ltxv.notify.dead_letters import DeadLetters
from ltxv.notify.notifier import WebhookNotifier


def result_ready(settings: Settings) -> ResultReady:
    """The `result_ready` function: a job's result.json → its signed webhook, and its
    batch's manifest and batch.completed event once it was the batch's last job."""
    jobs, storage = job_store(settings), storage_client(settings)
    secrets = WebhookSecrets.from_settings(settings)
    batch_docs = JobStore(jobs.client, BATCHES, settings.rpc_timeout_seconds)
    return ResultReady(
        WebhookNotifier(jobs, storage, settings, secrets=secrets),
        Batches(
            jobs,
            BatchStore(jobs.client, settings.rpc_timeout_seconds),
            storage,
            WebhookNotifier(batch_docs, storage, settings, secrets=secrets),
        ),
    )


def dead_letter(settings: Settings) -> DeadLetters:
    """The `dead_letter` function: a job Pub/Sub gave up on fails, with a result.json."""
    return DeadLetters(job_store(settings), storage_client(settings), settings.outputs)
