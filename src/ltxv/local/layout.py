"""Where everything of a local stack is: its ports and URLs, the files in its state
directory, its secrets, and the environment its processes and clients are given.

`StackLayout` holds the `LocalStack` methods that answer these, from the stack's state
directory, settings and ports. They start nothing; what they write is the state
directory's own files: its folders, the secrets on first use, and stack.env.
"""

from __future__ import annotations

import json
import os
import shlex
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from ltxv.core.settings import Settings
from ltxv.core.webhooks import new_secret
from ltxv.intake.auth import generate_api_key, hash_api_key
from ltxv.local.credentials import fake_service_account_key
from ltxv.local.errors import StackError

if TYPE_CHECKING:
    from ltxv.local.components import Component

HOST = "127.0.0.1"  # every component listens on loopback only
REPO_ROOT = Path(__file__).resolve().parents[3]


def default_state_dir() -> Path:
    return Path(os.environ.get("LTXV_STATE_DIR") or REPO_ROOT / ".local")


class StackLayout:
    """The `LocalStack` methods that say where its parts are and what they are given."""

    state_dir: Path
    settings: Settings
    ports: dict[str, int]
    functions_dir: Path

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
            "LTXV_INPUTS_BUCKET": s.inputs,
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
            "LTXV_INPUTS_BUCKET": s.inputs,
            "LTXV_TOPIC": s.topic,
            "LTXV_SUBSCRIPTION": s.subscription_for(s.default_model),
        }

    def _make_dirs(self) -> None:
        for sub in ("logs", "pids", "gcs"):
            (self.state_dir / sub).mkdir(parents=True, exist_ok=True)
        self.secrets_dir.mkdir(mode=0o700, exist_ok=True)
        self.secrets_dir.chmod(0o700)

    def _ensure_secrets(self) -> None:
        # Touch each once so that all exist before any process reads them.
        _ = self.api_key, self.webhook_secret, self.signing_credentials_file

    def _write_stack_env(self) -> None:
        lines = [f"{key}={shlex.quote(value)}" for key, value in self.stack_env().items()]
        write_atomic(self.stack_env_file, "\n".join(lines) + "\n", mode=0o600)


def resolve_ports(
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


def read_ports(path: Path) -> dict[str, int]:
    try:
        ports = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return {k: v for k, v in ports.items() if isinstance(v, int)} if isinstance(ports, dict) else {}


def _generate_service_account_key(project: str) -> str:
    """A key file that can sign URLs; fake-gcs-server never checks the signature."""
    return json.dumps(fake_service_account_key(project), indent=2)


def write_atomic(path: Path, content: str, mode: int = 0o644) -> None:
    """Replace `path` whole (stack.env, pidfiles, ports.json): no reader sees half of it."""
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
