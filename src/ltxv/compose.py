"""Composition: each process builds its parts in one function, its composition root.

Every part takes what it uses as constructor arguments; only a root reads Settings to
build clients and parts, and no part is handed a bag of parts to pick from. The roots:

- `ltxv.compose_submit.api`, `.prompt_file`, `.redispatch`: functions/submit's entry
  points, each deployed as its own function (and run as its own process locally).
- `ltxv.compose_notify.result_ready`, `.dead_letter`: functions/notify's entry points.
- `gpu_worker.__main__.compose`: a GPU worker (`python -m gpu_worker`).

The functions' `main.py`, the local stack (which runs those `main.py`), the tests and the
benchmarks all build through these; a test that replaces one seam (a clock, a resolver)
builds that one part itself. This module holds what the roots share.

Cold starts: a function's `main.py` calls its root at the first event, not at import,
and keeps the result. Within a function root, Google clients that a request may never
touch are `lazy`: built at their first use, so that the first request of an instance
pays only for the clients it needs (~40 ms each: credentials, channel).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, TypeVar, cast

from google.cloud import firestore, storage

from . import logs
from .settings import Settings, get_settings
from .store import JobStore

T = TypeVar("T")


class _Lazy:
    """Stands in for what `factory` returns, building it once, at its first attribute use."""

    def __init__(self, factory: Callable[[], Any]) -> None:
        self._factory = factory
        self._target: Any = None
        self._lock = threading.Lock()

    def _built(self) -> Any:
        if self._target is None:
            with self._lock:  # the API serves concurrent requests: one client, not two
                if self._target is None:
                    self._target = self._factory()
        return self._target

    def __getattr__(self, name: str) -> Any:
        return getattr(self._built(), name)

    def __repr__(self) -> str:
        return f"lazy({self._target if self._target is not None else self._factory!r})"


def lazy(factory: Callable[[], T]) -> T:
    """`factory()`, built at its first use; until then nothing is created or connected."""
    return cast(T, _Lazy(factory))


def settings_for(component: str) -> Settings:
    """A process's settings, from the environment, with its JSON logs set up."""
    settings = get_settings()
    logs.setup(component, settings.log_level)
    return settings


def job_store(settings: Settings) -> JobStore:
    return JobStore(
        firestore.Client(project=settings.project),
        settings.jobs_collection,
        settings.rpc_timeout_seconds,
    )


def storage_client(settings: Settings) -> storage.Client:
    return storage.Client(project=settings.project)
