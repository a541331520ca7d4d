"""Session fixtures: the real emulators, started once for the whole test session.

`emulators` runs Pub/Sub, Firestore and fake-gcs-server through `ltxv.local.stack` in a
temporary directory on free ports, creates the topics, subscriptions and buckets the
settings name, and points the client libraries at them through the environment.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from ltxv.core.settings import Settings
from ltxv.local.components import EMULATORS
from ltxv.local.stack import LocalStack

PROJECT = "ltxv-test"
PREFIX = "ltxv"
# Name overrides a developer's shell may carry (e.g. from a sourced .local/stack.env):
# cleared so that every resource name follows PREFIX, as the stack created them.
NAME_OVERRIDES = (
    "LTXV_TOPIC",
    "LTXV_SUBSCRIPTION",
    "LTXV_DEAD_LETTER_TOPIC",
    "LTXV_PROMPTS_BUCKET",
    "LTXV_OUTPUTS_BUCKET",
    "LTXV_INPUTS_BUCKET",
)


@dataclass(frozen=True)
class Emulators:
    stack: LocalStack
    settings: Settings
    project: str
    prefix: str
    pubsub_host: str  # PUBSUB_EMULATOR_HOST, "127.0.0.1:N"
    firestore_host: str  # FIRESTORE_EMULATOR_HOST, "127.0.0.1:N"
    storage_host: str  # STORAGE_EMULATOR_HOST, "http://127.0.0.1:N"
    state_dir: Path


@pytest.fixture(scope="session")
def emulators(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Emulators]:
    settings = Settings(project=PROJECT, prefix=PREFIX)
    stack = LocalStack.with_free_ports(
        tmp_path_factory.mktemp("stack"), components=EMULATORS, settings=settings, echo=None
    )
    stack.up()  # also creates the topics, subscriptions and buckets
    try:
        with pytest.MonkeyPatch.context() as env:
            for name in NAME_OVERRIDES:
                env.delenv(name, raising=False)
            env.setenv("PUBSUB_EMULATOR_HOST", stack.pubsub_host)
            env.setenv("FIRESTORE_EMULATOR_HOST", stack.firestore_host)
            env.setenv("STORAGE_EMULATOR_HOST", stack.storage_emulator_host)
            env.setenv("LTXV_PROJECT", PROJECT)
            env.setenv("LTXV_PREFIX", PREFIX)
            env.setenv("GOOGLE_CLOUD_PROJECT", PROJECT)
            yield Emulators(
                stack=stack,
                settings=settings,
                project=PROJECT,
                prefix=PREFIX,
                pubsub_host=stack.pubsub_host,
                firestore_host=stack.firestore_host,
                storage_host=stack.storage_emulator_host,
                state_dir=stack.state_dir,
            )
    finally:
        stack.down()


@pytest.fixture
def clean_firestore(emulators: Emulators) -> None:
    """An empty Firestore for the test (the emulator's own reset endpoint; fast)."""
    url = (
        f"http://{emulators.firestore_host}/emulator/v1/projects/{emulators.project}"
        "/databases/(default)/documents"
    )
    requests.delete(url, timeout=10).raise_for_status()
