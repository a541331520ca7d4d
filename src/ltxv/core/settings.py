"""Every setting of the service, read from `LTXV_*` environment variables in this one place.

Each field names the variables it is read from (`setting(...)`); `Settings.from_env()` reads
them all, parsing each by the field's type. Resource names follow the deployment prefix as
`schemas/resources.json` spells them, the table terraform names them from too, so the local
stack and a deployed project agree on what a topic or bucket is called.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from dataclasses import Field, dataclass, field, fields
from functools import cache, cached_property
from typing import Any, get_type_hints
from urllib.parse import urlsplit

from ltxv.core import resources


def setting(env: str, default: Any = None, *, also: tuple[str, ...] = ()) -> Any:
    """A field read from the environment variable `env`, else from the first of `also` that
    is set; unset or empty, the field keeps `default`."""
    return field(default=default, metadata={"env": env, "also": also})


def _number(kind: type[int] | type[float]) -> Callable[[str, str], Any]:
    what = "an integer" if kind is int else "a number"

    def parse(name: str, raw: str) -> Any:
        try:
            return kind(raw)
        except ValueError as exc:
            raise ValueError(f"{name} must be {what}, got {raw!r}") from exc

    return parse


def _flag(name: str, raw: str) -> bool:
    if raw.lower() in {"1", "true", "yes", "on"}:
        return True
    if raw.lower() in {"0", "false", "no", "off"}:
        return False
    raise ValueError(f"{name} must be true or false, got {raw!r}")


def _names(name: str, raw: str) -> tuple[str, ...]:
    """A comma-separated list, blanks dropped."""
    return tuple(part.strip() for part in raw.split(",") if part.strip())


def _as_is(name: str, raw: str) -> str:
    return raw


# How a value is read, by the field's type; any other type (str, str | None) as it is.
PARSERS: dict[Any, Callable[[str, str], Any]] = {
    int: _number(int),
    float: _number(float),
    bool: _flag,
    tuple[str, ...]: _names,
}


@dataclass(frozen=True)
class Settings:
    """The service's configuration; build one with `Settings.from_env()`."""

    project: str = setting(
        "LTXV_PROJECT", "ltxv-local", also=("GOOGLE_CLOUD_PROJECT", "GCP_PROJECT")
    )
    prefix: str = setting("LTXV_PREFIX", "ltxv")
    # Names default to PREFIX-based names (as terraform creates them) when left empty.
    topic_name: str = setting("LTXV_TOPIC", "")
    subscription_name: str = setting("LTXV_SUBSCRIPTION", "")
    dead_letter_topic_name: str = setting("LTXV_DEAD_LETTER_TOPIC", "")
    prompts_bucket: str = setting("LTXV_PROMPTS_BUCKET", "")
    outputs_bucket: str = setting("LTXV_OUTPUTS_BUCKET", "")
    jobs_collection: str = setting("LTXV_JOBS_COLLECTION", "jobs")
    # Each GPU worker's heartbeat document (ltxv.core.workers), read for queue estimates.
    workers_collection: str = setting("LTXV_WORKERS_COLLECTION", "workers")
    # A worker beats every heartbeat_seconds (and at once when it takes or ends a job); one
    # silent for worker_live_seconds is not counted as live by GET /v1/jobs/{id}'s `queue`.
    heartbeat_seconds: float = setting("LTXV_HEARTBEAT_SECONDS", 15.0)
    worker_live_seconds: float = setting("LTXV_WORKER_LIVE_SECONDS", 60.0)
    # Buckets besides the outputs bucket that gcs_destination may name, and for which API
    # keys: JSON {"bucket": ["key id", ...]}.
    destination_buckets_json: str | None = setting("LTXV_DESTINATION_BUCKETS")
    # Conditioning media (request.conditions): the deployment's inputs bucket (uploads and
    # inline data: URLs, under each key's own prefix), and further buckets a condition may
    # name, for which API keys: JSON {"bucket": ["key id", ...]}.
    inputs_bucket: str = setting("LTXV_INPUTS_BUCKET", "")
    input_buckets_json: str | None = setting("LTXV_INPUT_BUCKETS")
    # Checking conditioning media at submit (intake/input_inspection.py): one check holds
    # its bytes (up to max_input_bytes, 64 MiB) and at most 130 MiB more while it decodes
    # (a 16 MP progressive CMYK JPEG; PNG 65, video 101: docs/architecture.md), so the
    # API's 1 GiB instance runs only this many at once (2: ~390 MiB), whatever its 80
    # threads, and one key at most one; a request waits up to inspection_wait_seconds for
    # a turn, then gets a 503 with Retry-After. inspection_seconds caps one input's check.
    max_inspections: int = setting("LTXV_MAX_INSPECTIONS", 2)
    inspection_wait_seconds: float = setting("LTXV_INSPECTION_WAIT_SECONDS", 5.0)
    inspection_seconds: float = setting("LTXV_INSPECTION_SECONDS", 30.0)
    # POST /v1/uploads (intake/uploads.py): how long its signed PUT URL lives, and how many
    # URLs one API key may mint per hour (0: no limit), so no key can mint without bound.
    upload_url_minutes: int = setting("LTXV_UPLOAD_URL_MINUTES", 15)
    uploads_per_hour: int = setting("LTXV_UPLOADS_PER_HOUR", 200)
    # API keys: either inline hashes (JSON object key id -> sha256 hex, local stack and
    # tests) or a Secret Manager secret holding that JSON (deployed).
    api_key_hashes_json: str | None = setting("LTXV_API_KEY_HASHES")
    api_keys_secret: str | None = setting("LTXV_API_KEYS_SECRET")
    api_keys_cache_seconds: int = setting("LTXV_API_KEYS_CACHE_SECONDS", 300)
    default_model: str = setting("LTXV_DEFAULT_MODEL", "tiny-random")
    enabled_models: tuple[str, ...] = setting("LTXV_MODELS", ())
    # The model a GPU worker loads and renders (its pool's model); empty: the default one.
    worker_model_name: str = setting("LTXV_WORKER_MODEL", "")
    max_body_bytes: int = setting("LTXV_MAX_BODY_BYTES", 64 * 1024)
    # Jobs one API key may have queued or running at once (0: no limit): a runaway client
    # cannot fill the queue ahead of everyone else's work.
    max_jobs_in_flight: int = setting("LTXV_MAX_JOBS_IN_FLIGHT", 1000)
    max_wait_seconds: int = setting("LTXV_MAX_WAIT_SECONDS", 60)
    predict_wait_seconds: int = setting("LTXV_PREDICT_WAIT_SECONDS", 900)
    # GET /v1/jobs/{id}/events (intake/job_events.py): how often a stream reads the job,
    # how long it stays quiet before a `: keep-alive` comment, how long one connection
    # lives (well under the API function's request timeout; the client reconnects with
    # Last-Event-ID), the reconnect delay it suggests, and how many streams one instance
    # holds at once, in all and per API key (each holds a server thread for its life).
    events_poll_seconds: float = setting("LTXV_EVENTS_POLL_SECONDS", 1.0)
    events_heartbeat_seconds: float = setting("LTXV_EVENTS_HEARTBEAT_SECONDS", 15.0)
    events_lifetime_seconds: float = setting("LTXV_EVENTS_LIFETIME_SECONDS", 300.0)
    events_retry_seconds: float = setting("LTXV_EVENTS_RETRY_SECONDS", 1.0)
    events_max_streams: int = setting("LTXV_EVENTS_MAX_STREAMS", 40)
    events_max_streams_per_key: int = setting("LTXV_EVENTS_MAX_STREAMS_PER_KEY", 10)
    # The request threads of this server process: functions-framework's own variable
    # (its gunicorn runs THREADS threads, default 4 per CPU); 0 here means that default.
    server_threads: int = setting("LTXV_SERVER_THREADS", 0, also=("THREADS",))
    job_ttl_days: int = setting("LTXV_JOB_TTL_DAYS", 30)
    allow_http_loopback_webhooks: bool = setting("LTXV_ALLOW_HTTP_LOOPBACK_WEBHOOKS", False)
    prompt_file_owner: str = setting("LTXV_PROMPT_FILE_OWNER", "default")
    prompt_file_max_bytes: int = setting("LTXV_PROMPT_FILE_MAX_BYTES", 8 * 1024 * 1024)
    prompt_file_max_lines: int = setting("LTXV_PROMPT_FILE_MAX_LINES", 5000)
    signed_url_minutes: int = setting("LTXV_SIGNED_URL_MINUTES", 60)
    rpc_timeout_seconds: float = setting("LTXV_RPC_TIMEOUT_SECONDS", 10.0)
    redispatch_after_seconds: int = setting("LTXV_REDISPATCH_AFTER_SECONDS", 60)
    # The sweep writes each pool's jobs queued or running to Cloud Monitoring, the signal
    # that scales a pool on all its lanes together (ltxv.intake.pool_metric); deployed only.
    pool_metric: bool = setting("LTXV_POOL_METRIC", False)
    log_level: str = setting("LTXV_LOG_LEVEL", "INFO")
    signing_credentials_file: str | None = setting("LTXV_SIGNING_CREDENTIALS_FILE")
    # fake-gcs-server locally (the client libraries' own variable); unset in the cloud.
    storage_emulator_host: str | None = setting("STORAGE_EMULATOR_HOST")
    # Webhook signing secrets per API key: inline JSON {key_id: ["whsec_current", ...]}
    # (local stack and tests) or the Secret Manager secret holding it (deployed), re-read
    # after webhook_secrets_cache_seconds (see webhook_secrets.py).
    webhook_secrets_json: str | None = setting("LTXV_WEBHOOK_SECRETS")
    webhook_secrets_secret: str | None = setting("LTXV_WEBHOOK_SECRETS_SECRET")
    webhook_secrets_cache_seconds: int = setting("LTXV_WEBHOOK_SECRETS_CACHE_SECONDS", 300)
    # Webhook delivery (functions/notify). Each retry waits base * 2^(n-1) with jitter,
    # at most retry_max, or longer if the receiver's Retry-After says so; after
    # retry_window since the first attempt the delivery is recorded as failed. The window
    # stays under Eventarc's 24 h of redelivery so that the record always ends settled.
    webhook_timeout_seconds: float = setting("LTXV_WEBHOOK_TIMEOUT_SECONDS", 10.0)
    webhook_retry_base_seconds: float = setting("LTXV_WEBHOOK_RETRY_BASE_SECONDS", 30.0)
    webhook_retry_max_seconds: float = setting("LTXV_WEBHOOK_RETRY_MAX_SECONDS", 3600.0)
    webhook_retry_window_seconds: float = setting("LTXV_WEBHOOK_RETRY_WINDOW_SECONDS", 23 * 3600.0)
    # POST /v1/jobs/{id}/webhook/redeliver (the API): at most one redelivery per interval
    # and `max` per job, so a key cannot turn the service into a traffic source.
    webhook_redelivery_interval_seconds: float = setting(
        "LTXV_WEBHOOK_REDELIVERY_INTERVAL_SECONDS", 60.0
    )
    webhook_redeliveries_max: int = setting("LTXV_WEBHOOK_REDELIVERIES_MAX", 10)
    # The GPU worker.
    model_dir: str | None = setting("LTXV_MODEL_DIR")
    worker_id: str | None = setting("LTXV_WORKER_ID")
    lease_seconds: int = setting("LTXV_LEASE_SECONDS", 60)
    ack_extension_seconds: int = setting("LTXV_ACK_EXTENSION_SECONDS", 60)
    progress_interval_seconds: float = setting("LTXV_PROGRESS_INTERVAL_SECONDS", 2.0)
    shutdown_grace_seconds: float = setting("LTXV_SHUTDOWN_GRACE_SECONDS", 20.0)
    storage_retry_seconds: float = setting("LTXV_STORAGE_RETRY_SECONDS", 60.0)
    # Priority lanes (gpu_worker/lanes.py): a worker pulls a lane it has not served for this
    # long first, once, so a low job waits about this plus one render at most, however
    # many high jobs keep arriving.
    lane_aging_seconds: float = setting("LTXV_LANE_AGING_SECONDS", 300.0)
    # The price of an hour of a worker's GPU, which each job's usage.cost_usd estimates
    # from: the whole VM, as it renders one job at a time (terraform gpu_hour_usd; default
    # a g2-standard-8 with one L4 on demand in us-central1, list price).
    gpu_hour_usd: float = setting("LTXV_GPU_HOUR_USD", 0.85)
    # H.264 encoder of the videos: auto (NVENC when the GPU offers it, else x264), nvenc, x264.
    video_encoder: str = setting("LTXV_VIDEO_ENCODER", "auto")
    # Where workers share their compiled transformer blocks (gpu_worker/compile_cache.py),
    # e.g. gs://PREFIX-model-cache/compile-cache; unset: each VM compiles for itself.
    compile_cache_uri: str | None = setting("LTXV_COMPILE_CACHE_URI")
    # The worker's GET /healthz (gpu_worker/health.py): off when the port is 0. The worker
    # listens on health_port + health_port_offset (the VM's unit sets the offset to the
    # GPU index, so worker@N has port 8080 + N); 0.0.0.0 on a VM, where the MIG probes it.
    health_port: int = setting("LTXV_HEALTH_PORT", 0)
    health_port_offset: int = setting("LTXV_HEALTH_PORT_OFFSET", 0)
    health_host: str = setting("LTXV_HEALTH_HOST", "127.0.0.1")
    # Unready when the idle loop's last pull returned longer ago than this, when a job
    # showed no progress for busy_seconds, or when no pull succeeded for failing_seconds.
    health_stall_seconds: float = setting("LTXV_HEALTH_STALL_SECONDS", 120.0)
    health_busy_seconds: float = setting("LTXV_HEALTH_BUSY_SECONDS", 900.0)
    health_failing_seconds: float = setting("LTXV_HEALTH_FAILING_SECONDS", 300.0)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Every field from the variables it names (`os.environ` unless `environ` is given)."""
        environ = os.environ if environ is None else environ
        types = _field_types()
        values = {}
        for spec in fields(cls):
            for name in env_names(spec.name):
                raw = environ.get(name)
                if raw:
                    values[spec.name] = PARSERS.get(types[spec.name], _as_is)(name, raw)
                    break
        return cls(**values)

    @property
    def worker_health_port(self) -> int:
        """The port this worker's health endpoint listens on (0: none)."""
        return self.health_port + self.health_port_offset if self.health_port else 0

    @property
    def topic(self) -> str:
        return self.topic_name or resources.name("topic", self.prefix)

    @property
    def models(self) -> tuple[str, ...]:
        """The models this deployment serves, each with its own worker pool."""
        return self.enabled_models or (self.default_model,)

    @property
    def worker_model(self) -> str:
        return self.worker_model_name or self.default_model

    def subscription_for(self, model: str, lane: str | None = None) -> str:
        """The subscription `model`'s worker pool pulls for `lane` (default: the normal
        lane's, which keeps the name the pool's only subscription had before lanes)."""
        lanes = resources.worker_lanes()
        pool = resources.name("worker_subscription", self.prefix, model=model)
        return lanes.subscription(pool, lane or lanes.default)

    @property
    def subscription(self) -> str:
        """The default lane's subscription this process's worker pulls: its model's, unless
        overridden (the other lanes' names follow from it)."""
        return self.subscription_name or self.subscription_for(self.worker_model)

    @property
    def lane_subscription_paths(self) -> dict[str, str]:
        """Lane -> the subscription this worker pulls for it, highest lane first."""
        lanes = resources.worker_lanes()
        names = {lane: lanes.subscription(self.subscription, lane) for lane in lanes.order}
        prefix = f"projects/{self.project}/subscriptions/"
        return {lane: prefix + name for lane, name in names.items()}

    @property
    def dead_letter_topic(self) -> str:
        return self.dead_letter_topic_name or resources.name("dead_letter_topic", self.prefix)

    @property
    def dead_letter_subscription(self) -> str:
        return f"{self.dead_letter_topic}-notify"

    @property
    def sweep_topic(self) -> str:
        """The topic Cloud Scheduler publishes the redispatch tick to."""
        return resources.name("sweep_topic", self.prefix)

    @property
    def prompts(self) -> str:
        return self.prompts_bucket or resources.name("prompts_bucket", self.prefix)

    @property
    def outputs(self) -> str:
        return self.outputs_bucket or resources.name("outputs_bucket", self.prefix)

    @property
    def model_cache(self) -> str:
        return resources.name("model_cache_bucket", self.prefix)

    @property
    def function_source(self) -> str:
        """Where terraform keeps the function and worker archives."""
        return resources.name("function_source_bucket", self.prefix)

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

    @property
    def inputs(self) -> str:
        return self.inputs_bucket or resources.name("inputs_bucket", self.prefix)

    @cached_property
    def destination_buckets(self) -> dict[str, frozenset[str]]:
        """Bucket -> the API key ids whose gcs_destination may name it (besides each key's
        own prefix of the outputs bucket)."""
        return self._bucket_grants("destination_buckets_json")

    @cached_property
    def input_buckets(self) -> dict[str, frozenset[str]]:
        """Bucket -> the API key ids whose conditions may read from it (besides each key's
        own prefix of the inputs bucket)."""
        return self._bucket_grants("input_buckets_json")

    def _bucket_grants(self, field_name: str) -> dict[str, frozenset[str]]:
        (name,) = env_names(field_name)
        try:
            raw = json.loads(getattr(self, field_name) or "{}")
        except ValueError as exc:
            raise ValueError(f"{name} must be JSON: {exc}") from exc
        if not isinstance(raw, dict) or not all(
            isinstance(keys, list) and all(isinstance(k, str) for k in keys)
            for keys in raw.values()
        ):
            raise ValueError(f'{name} must be a JSON object {{"bucket": ["key id", ...]}}')
        ours = {self.outputs, self.prompts, self.inputs, self.model_cache, self.function_source}
        ours = ours.intersection(raw)
        if ours:
            raise ValueError(f"{name} must not name the deployment's own buckets {sorted(ours)}")
        return {bucket: frozenset(keys) for bucket, keys in raw.items()}


def env_names(field_name: str) -> tuple[str, ...]:
    """The variables a field is read from, first the one that wins."""
    metadata = _fields()[field_name].metadata
    return (metadata["env"], *metadata["also"])


@cache
def _fields() -> dict[str, Field[Any]]:
    return {spec.name: spec for spec in fields(Settings)}


@cache
def _field_types() -> dict[str, Any]:
    return get_type_hints(Settings)


def get_settings() -> Settings:
    return Settings.from_env()
