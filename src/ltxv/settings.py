"""Every setting of the service, read from `LTXV_*` environment variables in this one place.

Resource names follow the deployment prefix the same way terraform names them, so the
local stack and a deployed project agree on what a topic or bucket is called.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from functools import cached_property
from urllib.parse import urlsplit

ENV_PREFIX = "LTXV_"


def _env(name: str, default: str | None = None) -> str | None:
    value = os.environ.get(ENV_PREFIX + name)
    return default if value is None or value == "" else value


def _env_number(name: str, default: float, kind: type[int] | type[float]) -> float:
    raw = _env(name)
    if raw is None:
        return default
    try:
        return kind(raw)
    except ValueError as exc:
        what = "an integer" if kind is int else "a number"
        raise ValueError(f"{ENV_PREFIX}{name} must be {what}, got {raw!r}") from exc


def _env_int(name: str, default: int) -> int:
    return int(_env_number(name, default, int))


def _env_float(name: str, default: float) -> float:
    return _env_number(name, default, float)


def _env_bool(name: str, default: bool) -> bool:
    raw = _env(name)
    if raw is None:
        return default
    if raw.lower() in {"1", "true", "yes", "on"}:
        return True
    if raw.lower() in {"0", "false", "no", "off"}:
        return False
    raise ValueError(f"{ENV_PREFIX}{name} must be true or false, got {raw!r}")


def _env_list(name: str) -> tuple[str, ...]:
    raw = _env(name, "") or ""
    return tuple(part.strip() for part in raw.split(",") if part.strip())


@dataclass(frozen=True)
class Settings:
    """The service's configuration; build one with `Settings.from_env()`."""

    project: str = "ltxv-local"
    prefix: str = "ltxv"
    # Names default to PREFIX-based names (as terraform creates them) when left empty.
    topic_name: str = ""
    subscription_name: str = ""
    dead_letter_topic_name: str = ""
    prompts_bucket: str = ""
    outputs_bucket: str = ""
    jobs_collection: str = "jobs"
    # Buckets besides the outputs bucket that gcs_destination may name, and for which API
    # keys: JSON {"bucket": ["key id", ...]}.
    destination_buckets_json: str | None = None
    # API keys: either inline hashes (JSON object key id -> sha256 hex, local stack and
    # tests) or a Secret Manager secret holding that JSON (deployed).
    api_key_hashes_json: str | None = None
    api_keys_secret: str | None = None
    api_keys_cache_seconds: int = 300
    default_model: str = "tiny-random"
    enabled_models: tuple[str, ...] = ()
    # The model a GPU worker loads and renders (its pool's model); empty: the default one.
    worker_model_name: str = ""
    max_body_bytes: int = 64 * 1024
    # Jobs one API key may have queued or running at once (0: no limit): a runaway client
    # cannot fill the queue ahead of everyone else's work.
    max_jobs_in_flight: int = 1000
    max_wait_seconds: int = 60
    predict_wait_seconds: int = 900
    job_ttl_days: int = 30
    allow_http_loopback_webhooks: bool = False
    prompt_file_owner: str = "default"
    prompt_file_max_bytes: int = 8 * 1024 * 1024
    prompt_file_max_lines: int = 5000
    signed_url_minutes: int = 60
    rpc_timeout_seconds: float = 10.0
    redispatch_after_seconds: int = 60
    log_level: str = "INFO"
    signing_credentials_file: str | None = None
    # fake-gcs-server locally (the client libraries' own variable); unset in the cloud.
    storage_emulator_host: str | None = None
    # Webhook signing secrets per API key: inline JSON {key_id: ["whsec_current", ...]}
    # (local stack and tests) or the Secret Manager secret holding it (deployed), re-read
    # after webhook_secrets_cache_seconds (see webhook_secrets.py).
    webhook_secrets_json: str | None = None
    webhook_secrets_secret: str | None = None
    webhook_secrets_cache_seconds: int = 300
    # Webhook delivery (functions/notify). Each retry waits base * 2^(n-1) with jitter,
    # at most retry_max, or longer if the receiver's Retry-After says so; after
    # retry_window since the first attempt the delivery is recorded as failed. The window
    # stays under Eventarc's 24 h of redelivery so that the record always ends settled.
    webhook_timeout_seconds: float = 10.0
    webhook_retry_base_seconds: float = 30.0
    webhook_retry_max_seconds: float = 3600.0
    webhook_retry_window_seconds: float = 23 * 3600.0
    # The GPU worker.
    model_dir: str | None = None
    worker_id: str | None = None
    lease_seconds: int = 60
    ack_extension_seconds: int = 60
    progress_interval_seconds: float = 2.0
    shutdown_grace_seconds: float = 20.0
    storage_retry_seconds: float = 60.0
    # H.264 encoder of the videos: auto (NVENC when the GPU offers it, else x264), nvenc, x264.
    video_encoder: str = "auto"
    # Where workers share their compiled transformer blocks (gpu_worker/compile_cache.py),
    # e.g. gs://PREFIX-model-cache/compile-cache; unset: each VM compiles for itself.
    compile_cache_uri: str | None = None
    # The worker's GET /healthz (gpu_worker/health.py): off when the port is 0. The worker
    # listens on health_port + health_port_offset (the VM's unit sets the offset to the
    # GPU index, so worker@N has port 8080 + N); 0.0.0.0 on a VM, where the MIG probes it.
    health_port: int = 0
    health_port_offset: int = 0
    health_host: str = "127.0.0.1"
    # Unready when the idle loop's last pull returned longer ago than this, when a job
    # showed no progress for busy_seconds, or when no pull succeeded for failing_seconds.
    health_stall_seconds: float = 120.0
    health_busy_seconds: float = 900.0
    health_failing_seconds: float = 300.0

    @classmethod
    def from_env(cls) -> Settings:
        return cls(
            project=_env("PROJECT")
            or os.environ.get("GOOGLE_CLOUD_PROJECT")
            or os.environ.get("GCP_PROJECT")
            or cls.project,
            prefix=_env("PREFIX", cls.prefix),
            topic_name=_env("TOPIC", ""),
            subscription_name=_env("SUBSCRIPTION", ""),
            dead_letter_topic_name=_env("DEAD_LETTER_TOPIC", ""),
            prompts_bucket=_env("PROMPTS_BUCKET", ""),
            outputs_bucket=_env("OUTPUTS_BUCKET", ""),
            jobs_collection=_env("JOBS_COLLECTION", cls.jobs_collection),
            destination_buckets_json=_env("DESTINATION_BUCKETS"),
            api_key_hashes_json=_env("API_KEY_HASHES"),
            api_keys_secret=_env("API_KEYS_SECRET"),
            api_keys_cache_seconds=_env_int("API_KEYS_CACHE_SECONDS", cls.api_keys_cache_seconds),
            default_model=_env("DEFAULT_MODEL", cls.default_model),
            enabled_models=_env_list("MODELS"),
            worker_model_name=_env("WORKER_MODEL", ""),
            max_body_bytes=_env_int("MAX_BODY_BYTES", cls.max_body_bytes),
            max_jobs_in_flight=_env_int("MAX_JOBS_IN_FLIGHT", cls.max_jobs_in_flight),
            max_wait_seconds=_env_int("MAX_WAIT_SECONDS", cls.max_wait_seconds),
            predict_wait_seconds=_env_int("PREDICT_WAIT_SECONDS", cls.predict_wait_seconds),
            job_ttl_days=_env_int("JOB_TTL_DAYS", cls.job_ttl_days),
            allow_http_loopback_webhooks=_env_bool("ALLOW_HTTP_LOOPBACK_WEBHOOKS", False),
            prompt_file_owner=_env("PROMPT_FILE_OWNER", cls.prompt_file_owner),
            prompt_file_max_bytes=_env_int("PROMPT_FILE_MAX_BYTES", cls.prompt_file_max_bytes),
            prompt_file_max_lines=_env_int("PROMPT_FILE_MAX_LINES", cls.prompt_file_max_lines),
            signed_url_minutes=_env_int("SIGNED_URL_MINUTES", cls.signed_url_minutes),
            rpc_timeout_seconds=_env_float("RPC_TIMEOUT_SECONDS", cls.rpc_timeout_seconds),
            redispatch_after_seconds=_env_int(
                "REDISPATCH_AFTER_SECONDS", cls.redispatch_after_seconds
            ),
            log_level=_env("LOG_LEVEL", cls.log_level),
            signing_credentials_file=_env("SIGNING_CREDENTIALS_FILE"),
            storage_emulator_host=os.environ.get("STORAGE_EMULATOR_HOST") or None,
            webhook_secrets_json=_env("WEBHOOK_SECRETS"),
            webhook_secrets_secret=_env("WEBHOOK_SECRETS_SECRET"),
            webhook_secrets_cache_seconds=_env_int(
                "WEBHOOK_SECRETS_CACHE_SECONDS", cls.webhook_secrets_cache_seconds
            ),
            webhook_timeout_seconds=_env_float(
                "WEBHOOK_TIMEOUT_SECONDS", cls.webhook_timeout_seconds
            ),
            webhook_retry_base_seconds=_env_float(
                "WEBHOOK_RETRY_BASE_SECONDS", cls.webhook_retry_base_seconds
            ),
            webhook_retry_max_seconds=_env_float(
                "WEBHOOK_RETRY_MAX_SECONDS", cls.webhook_retry_max_seconds
            ),
            webhook_retry_window_seconds=_env_float(
                "WEBHOOK_RETRY_WINDOW_SECONDS", cls.webhook_retry_window_seconds
            ),
            model_dir=_env("MODEL_DIR"),
            worker_id=_env("WORKER_ID"),
            lease_seconds=_env_int("LEASE_SECONDS", cls.lease_seconds),
            ack_extension_seconds=_env_int("ACK_EXTENSION_SECONDS", cls.ack_extension_seconds),
            progress_interval_seconds=_env_float(
                "PROGRESS_INTERVAL_SECONDS", cls.progress_interval_seconds
            ),
            shutdown_grace_seconds=_env_float("SHUTDOWN_GRACE_SECONDS", cls.shutdown_grace_seconds),
            storage_retry_seconds=_env_float("STORAGE_RETRY_SECONDS", cls.storage_retry_seconds),
            video_encoder=_env("VIDEO_ENCODER", cls.video_encoder),
            compile_cache_uri=_env("COMPILE_CACHE_URI"),
            health_port=_env_int("HEALTH_PORT", cls.health_port),
            health_port_offset=_env_int("HEALTH_PORT_OFFSET", cls.health_port_offset),
            health_host=_env("HEALTH_HOST", cls.health_host),
            health_stall_seconds=_env_float("HEALTH_STALL_SECONDS", cls.health_stall_seconds),
            health_busy_seconds=_env_float("HEALTH_BUSY_SECONDS", cls.health_busy_seconds),
            health_failing_seconds=_env_float("HEALTH_FAILING_SECONDS", cls.health_failing_seconds),
        )

    @property
    def worker_health_port(self) -> int:
        """The port this worker's health endpoint listens on (0: none)."""
        return self.health_port + self.health_port_offset if self.health_port else 0

    @property
    def topic(self) -> str:
        return self.topic_name or f"{self.prefix}-jobs"

    @property
    def models(self) -> tuple[str, ...]:
        """The models this deployment serves, each with its own worker pool."""
        return self.enabled_models or (self.default_model,)

    @property
    def worker_model(self) -> str:
        return self.worker_model_name or self.default_model

    def subscription_for(self, model: str) -> str:
        """The subscription `model`'s worker pool pulls (filtered on the model attribute)."""
        return f"{self.prefix}-jobs-worker-{model}"

    @property
    def subscription(self) -> str:
        """The subscription this process's worker pulls: its model's, unless overridden."""
        return self.subscription_name or self.subscription_for(self.worker_model)

    @property
    def dead_letter_topic(self) -> str:
        return self.dead_letter_topic_name or f"{self.prefix}-jobs-dead-letter"

    @property
    def dead_letter_subscription(self) -> str:
        return f"{self.dead_letter_topic}-notify"

    @property
    def prompts(self) -> str:
        return self.prompts_bucket or f"{self.prefix}-prompts"

    @property
    def outputs(self) -> str:
        return self.outputs_bucket or f"{self.prefix}-outputs"

    @property
    def model_cache(self) -> str:
        return f"{self.prefix}-model-cache"

    @property
    def function_source(self) -> str:
        """Where terraform keeps the function and worker archives."""
        return f"{self.prefix}-function-source"

    @property
    def storage_events_topic(self) -> str:
        """Where Cloud Storage announces finalized objects (fake-gcs-server locally)."""
        return f"{self.prefix}-storage-events"

    @property
    def storage_endpoint(self) -> str:
        """Where signed URLs point: Cloud Storage, or the emulator the clients use."""
        if self.storage_emulator_host:
            return self.storage_emulator_host.rstrip("/")
        return "https://storage.googleapis.com"

    @property
    def storage_origin(self) -> str:
        """The origin (scheme://host[:port]) of signed URLs, for the page's CSP."""
        parts = urlsplit(self.storage_endpoint)
        return f"{parts.scheme}://{parts.netloc}"

    @property
    def topic_path(self) -> str:
        return f"projects/{self.project}/topics/{self.topic}"

    @property
    def subscription_path(self) -> str:
        return f"projects/{self.project}/subscriptions/{self.subscription}"

    @cached_property
    def destination_buckets(self) -> dict[str, frozenset[str]]:
        """Bucket -> the API key ids whose gcs_destination may name it (besides each key's
        own prefix of the outputs bucket)."""
        name = f"{ENV_PREFIX}DESTINATION_BUCKETS"
        try:
            raw = json.loads(self.destination_buckets_json or "{}")
        except ValueError as exc:
            raise ValueError(f"{name} must be JSON: {exc}") from exc
        if not isinstance(raw, dict) or not all(
            isinstance(keys, list) and all(isinstance(k, str) for k in keys)
            for keys in raw.values()
        ):
            raise ValueError(f'{name} must be a JSON object {{"bucket": ["key id", ...]}}')
        ours = {self.outputs, self.prompts, self.model_cache, self.function_source}
        ours = ours.intersection(raw)
        if ours:
            raise ValueError(f"{name} must not name the deployment's own buckets {sorted(ours)}")
        return {bucket: frozenset(keys) for bucket, keys in raw.items()}


def get_settings() -> Settings:
    return Settings.from_env()
