"""The composition roots of functions/submit: one per entry point, each a process of its own.

Each builds, from Settings, exactly what its entry point uses: only the API builds the
key ring, the webhook secrets and the URL signer (the prompt-file and redispatch
functions have no settings for the first two). Storage and Pub/Sub clients are `lazy`
here: a GET of a queued job, say, builds neither (see `ltxv.core.compose`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from functools import partial

import google.cloud.storage as storage
from google.cloud import firestore

from ltxv.core.compose import job_store, lazy, storage_client
from ltxv.core.dispatch import Dispatcher, make_publisher
from ltxv.core.profiles import ModelProfile, enabled_profiles
from ltxv.core.secrets import inline_or_secret
from ltxv.core.settings import Settings
from ltxv.core.signing import UrlSigner
from ltxv.core.store import JobStore
from ltxv.core.webhook_secrets import WebhookSecrets
from ltxv.core.workers import WorkerRegistry
from ltxv.intake.api import JobsApi
from ltxv.intake.auth import KeyRing
from ltxv.intake.grouped_writes import writes_per_batch
from ltxv.intake.input_inspection import InputInspector
from ltxv.intake.job_views import JobViews
from ltxv.intake.pool_metric import PoolMetric, monitoring_writer
from ltxv.intake.prompt_files import PromptFiles
from ltxv.intake.queue_deadlines import QueueDeadlines
from ltxv.intake.queue_estimates import QueueEstimates
from ltxv.intake.submission import Intake
from ltxv.intake.upload_quota import UploadQuota
from ltxv.intake.uploads import Uploads
from ltxv.intake.validation import IntakePolicy


@dataclass(frozen=True)
class SubmitParts:
    """What every entry point of functions/submit is built on (and what the tests and
    benchmarks reach into)."""

    settings: Settings
    profiles: dict[str, ModelProfile]
    firestore: firestore.Client
    storage: storage.Client
    store: JobStore
    dispatcher: Dispatcher
    intake: Intake


def parts(settings: Settings) -> SubmitParts:
    profiles = enabled_profiles(settings.default_model, settings.enabled_models)
    store = job_store(settings)
    dispatcher = Dispatcher(lazy(make_publisher), settings.topic_path, settings.rpc_timeout_seconds)
    policy = IntakePolicy(
        profiles=profiles,
        default_model=settings.default_model,
        outputs_bucket=settings.outputs,
        destination_buckets=settings.destination_buckets,
        allow_http_loopback_webhooks=settings.allow_http_loopback_webhooks,
        inputs_bucket=settings.inputs,
        input_buckets=settings.input_buckets,
    )
    storage = lazy(partial(storage_client, settings))
    return SubmitParts(
        settings=settings,
        profiles=profiles,
        firestore=store.client,
        storage=storage,
        store=store,
        dispatcher=dispatcher,
        intake=Intake(
            store,
            dispatcher,
            policy,
            settings.job_ttl_days,
            max_in_flight=settings.max_jobs_in_flight,
            writes_per_batch=writes_per_batch(settings.max_body_bytes),
            inputs=InputInspector(
                storage,
                store,
                inputs_bucket=settings.inputs,
                max_inspections=settings.max_inspections,
                wait_seconds=settings.inspection_wait_seconds,
                inspection_seconds=settings.inspection_seconds,
            ),
        ),
    )


def keyring(settings: Settings) -> KeyRing:
    """The API key hashes: inline locally, from Secret Manager (re-read now and then) when
    deployed."""
    return KeyRing(
        *inline_or_secret(
            settings.api_key_hashes_json,
            settings.api_keys_secret,
            settings.api_keys_cache_seconds,
            missing="set LTXV_API_KEY_HASHES or LTXV_API_KEYS_SECRET",
        )
    )


def api(settings: Settings) -> JobsApi:
    """The `api` function: the HTTP API."""
    shared = parts(settings)
    signer = UrlSigner(shared.storage, settings.signing_credentials_file, settings.storage_endpoint)
    workers = WorkerRegistry(
        shared.firestore, settings.workers_collection, settings.rpc_timeout_seconds
    )
    queue = QueueEstimates(shared.store, workers, settings.worker_live_seconds)
    return JobsApi(
        settings,
        profiles=shared.profiles,
        store=shared.store,
        intake=shared.intake,
        # Lazy too, so that a missing setting fails only the requests that need it.
        keyring=lazy(partial(keyring, settings)),
        webhook_secrets=lazy(partial(WebhookSecrets.from_settings, settings)),
        storage=shared.storage,
        views=JobViews(signer, settings.signed_url_minutes, queue),
        uploads=Uploads(
            shared.profiles,
            signer,
            settings.inputs,
            UploadQuota(shared.firestore, settings.uploads_per_hour, settings.rpc_timeout_seconds),
            settings.upload_url_minutes,
        ),
    )


def prompt_file(settings: Settings) -> PromptFiles:
    """The `prompt_file` function: prompt files dropped into the prompts bucket."""
    return prompt_files_over(parts(settings), settings)


def prompt_files_over(shared: SubmitParts, settings: Settings) -> PromptFiles:
    """The prompt-file handler over parts already built (the function's, or a test's)."""
    return PromptFiles(
        shared.intake,
        shared.storage,
        prompts_bucket=settings.prompts,
        owner=settings.prompt_file_owner,
        max_bytes=settings.prompt_file_max_bytes,
        max_lines=settings.prompt_file_max_lines,
    )


def redispatch(settings: Settings) -> Callable[[], list[str]]:
    """The `redispatch` function, the scheduled sweep: fails the queued jobs past their
    queue deadline, publishes the jobs a crash left unpublished, then (deployed) writes
    each pool's load for its autoscaler."""
    shared = parts(settings)
    after = timedelta(seconds=settings.redispatch_after_seconds)
    deadlines = QueueDeadlines(shared.store, shared.storage, settings.outputs)
    write = monitoring_writer(settings.rpc_timeout_seconds)
    metric = PoolMetric(shared.store, settings.models, settings.project, settings.prefix, write)

    def sweep() -> list[str]:
        # Each task on its own: a failure of one must not starve the others every tick.
        try:
            deadlines.expire()
        finally:
            republished = shared.intake.redispatch(after)
            if settings.pool_metric:
                metric()  # logs its own failures
        return republished

    return sweep
