"""The components of the local stack, declared: how to start each, recognise it, and tell
when it is ready.

`SERVICES` are the emulators and the functions (each run by functions-framework as Cloud
Functions would run it), then a GPU worker per enabled model (`worker_components`) and
the bridge; `components_for(settings)` lists them all in start order. Adding one is
adding a `Component` entry.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import requests

from ltxv.core.settings import Settings
from ltxv.intake.uploads import UPLOAD_CORS_HEADERS
from ltxv.local.errors import StackError, StartupFailed
from ltxv.local.executables import (
    FIRESTORE_LAUNCHER,
    PUBSUB_LAUNCHER,
    fake_gcs_binary,
    sdk_tool,
    venv_tool,
)
from ltxv.local.layout import HOST, REPO_ROOT
from ltxv.local.processes import STOP_GRACE, tcp

if TYPE_CHECKING:
    from ltxv.local.stack import LocalStack

# The workers' health endpoints: the default model's worker on 8090, the others' next.
WORKER_HEALTH_PORT = 8090


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
            str(venv_tool("functions-framework")),
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
    package: str,
    name: str,
    signature: str,
    port_env: str,
    port: int,
    probe: Callable[[LocalStack], None] | None = None,
) -> Component:
    """Entry point `name` of functions/<package>/main.py, as Cloud Functions would run it."""
    return Component(
        name=name,
        command=_functions_framework(package, name, signature),
        probe=probe or (lambda stack: tcp(stack.port(name))),
        marker=f"--target {name}",
        port_env=port_env,
        default_port=port,
        needs=("pubsub", "firestore", "gcs"),
        env=lambda stack: stack.service_env(),
        cwd=lambda stack: stack.function_source(package).parent,
    )


def _probe_api(stack: LocalStack) -> None:
    tcp(stack.port("api"))
    response = requests.get(f"{stack.url('api')}/healthz", timeout=2)
    if response.status_code != 200:
        raise RuntimeError(f"GET /healthz answered {response.status_code}")


def _pubsub_command(stack: LocalStack) -> list[str]:
    launcher = sdk_tool(PUBSUB_LAUNCHER, "google-cloud-cli-pubsub-emulator")
    return [str(launcher), f"--host={HOST}", f"--port={stack.port('pubsub')}"]


def _probe_pubsub(stack: LocalStack) -> None:
    tcp(stack.port("pubsub"))
    with stack.pubsub_clients() as (publisher, _):
        list(publisher.list_topics(request={"project": f"projects/{stack.project}"}, timeout=2))


def _firestore_command(stack: LocalStack) -> list[str]:
    launcher = sdk_tool(FIRESTORE_LAUNCHER, "google-cloud-cli-firestore-emulator")
    return [str(launcher), "start", f"--host={HOST}", f"--port={stack.port('firestore')}"]


def _probe_firestore(stack: LocalStack) -> None:
    tcp(stack.port("firestore"))
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
        str(fake_gcs_binary()),
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
        # Browsers PUT uploads to signed URLs (POST /v1/uploads) with these signed headers;
        # fake-gcs-server allows any origin but only a few headers unless told more.
        "-cors-headers",
        ",".join(UPLOAD_CORS_HEADERS),
        # Announce finalized objects on a topic as GCS notifications do; the bridge reads it.
        "-event.pubsub-topic",
        settings.storage_events_topic,
        "-event.pubsub-project-id",
        settings.project,
    ]


def _probe_gcs(stack: LocalStack) -> None:
    tcp(stack.port("gcs"))
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
        worker_component(worker_component_name(model, settings), model, WORKER_HEALTH_PORT + index)
        for index, model in enumerate(models)
    ]


def worker_component(name: str, model: str, port: int = WORKER_HEALTH_PORT) -> Component:
    def env(stack: LocalStack) -> dict[str, str]:
        return {
            **stack.service_env(),
            "LTXV_WORKER_MODEL": model,
            "LTXV_SUBSCRIPTION": stack.settings.subscription_for(model),  # its lanes: + suffix
            "LTXV_LANE_AGING_SECONDS": str(stack.settings.lane_aging_seconds),
            "LTXV_MODEL_DIR": str(stack.state_dir / "models" / model),
            # Each job's usage is priced as the deployment's would be (LTXV_GPU_HOUR_USD).
            "LTXV_GPU_HOUR_USD": str(stack.settings.gpu_hour_usd),
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
