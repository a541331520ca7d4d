"""The end-to-end stack: the session's emulators plus the processes a module names."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import requests

from ltxv.core.settings import Settings
from ltxv.local.stack import LocalStack


@contextlib.contextmanager
def running_stack(
    emulators, components: list[str], settings: Settings | None = None
) -> Iterator[LocalStack]:
    """Start `components` next to the running emulators (found and left alone), as
    `make dev` runs them, and stop them again afterwards."""
    stack = LocalStack(
        emulators.state_dir,
        ports=emulators.stack.ports,
        settings=settings or emulators.settings,
        echo=None,
    )
    stack.up(components)
    try:
        yield stack
    finally:
        stack.down(components)


def user_env(**extra: str) -> dict[str, str]:
    """A user's shell: without the session's LTXV_ settings and emulator hosts, so that
    `ltxv` and the demo find the stack as a user's would (through stack.env), plus `extra`."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("LTXV_") and not key.endswith("_EMULATOR_HOST")
    }
    env.update(extra)
    return env


@contextlib.contextmanager
def key_session(stack: LocalStack, connections: int = 10) -> Iterator[requests.Session]:
    """An HTTP session that sends the stack's API key; `connections` pooled per host (a
    burst of parallel requests needs as many to really arrive at once)."""
    session = requests.Session()
    session.headers["X-API-Key"] = stack.api_key
    adapter = requests.adapters.HTTPAdapter(pool_connections=connections, pool_maxsize=connections)
    session.mount("http://", adapter)
    try:
        yield session
    finally:
        session.close()
