"""Wiring: the clients and parts of the service, built once per process from Settings."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

from google.cloud import firestore, storage

from . import logs
from .auth import KeyRing, read_secret
from .dispatch import Dispatcher, make_publisher
from .intake import Intake
from .profiles import ModelProfile, enabled_profiles
from .settings import Settings, get_settings
from .signing import UrlSigner
from .store import JobStore
from .validation import IntakePolicy
from .webhook_secrets import WebhookSecrets


@dataclass
class Service:
    settings: Settings

    @classmethod
    def for_function(cls, component: str) -> Service:
        """As a function instance builds it once: settings from the environment, JSON logs."""
        settings = get_settings()
        logs.setup(component, settings.log_level)
        return cls(settings)

    @cached_property
    def profiles(self) -> dict[str, ModelProfile]:
        return enabled_profiles(self.settings.default_model, self.settings.enabled_models)

    @cached_property
    def firestore(self) -> firestore.Client:
        return firestore.Client(project=self.settings.project)

    @cached_property
    def storage(self) -> storage.Client:
        return storage.Client(project=self.settings.project)

    @cached_property
    def store(self) -> JobStore:
        return JobStore(
            self.firestore, self.settings.jobs_collection, self.settings.rpc_timeout_seconds
        )

    @cached_property
    def dispatcher(self) -> Dispatcher:
        return Dispatcher(
            make_publisher(), self.settings.topic_path, self.settings.rpc_timeout_seconds
        )

    @cached_property
    def policy(self) -> IntakePolicy:
        return IntakePolicy(
            profiles=self.profiles,
            default_model=self.settings.default_model,
            outputs_bucket=self.settings.outputs,
            destination_buckets=self.settings.destination_buckets,
            allow_http_loopback_webhooks=self.settings.allow_http_loopback_webhooks,
        )

    @cached_property
    def intake(self) -> Intake:
        settings = self.settings
        return Intake(
            self.store,
            self.dispatcher,
            self.policy,
            settings.job_ttl_days,
            max_in_flight=settings.max_jobs_in_flight,
        )

    @cached_property
    def keyring(self) -> KeyRing:
        settings = self.settings
        if settings.api_key_hashes_json:
            return KeyRing(lambda: settings.api_key_hashes_json, ttl_seconds=float("inf"))
        if settings.api_keys_secret:
            return KeyRing(
                lambda: read_secret(settings.api_keys_secret), settings.api_keys_cache_seconds
            )
        raise RuntimeError("set LTXV_API_KEY_HASHES or LTXV_API_KEYS_SECRET")

    @cached_property
    def webhook_secrets(self) -> WebhookSecrets:
        """Each API key's whsec_ secrets: inline locally, from Secret Manager when deployed."""
        return WebhookSecrets.from_settings(self.settings)

    @cached_property
    def signer(self) -> UrlSigner:
        settings = self.settings
        return UrlSigner(self.storage, settings.signing_credentials_file, settings.storage_endpoint)
