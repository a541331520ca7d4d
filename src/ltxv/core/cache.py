"""A value loaded from a slow or flaky source (Secret Manager), kept for a while.

Requests must not queue behind a reload: once a value is loaded, an expired one is still
served while a single background thread loads the next, and a failed reload keeps the old
value (and is tried again after `retry_seconds`). Only the very first load makes callers
wait, since there is nothing to serve yet; its failure is theirs, and for `retry_seconds`
the callers after them get the same failure at once instead of each waiting on the source.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Generic, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")


class Cached(Generic[T]):
    def __init__(
        self,
        load: Callable[[], T],
        ttl_seconds: float,
        *,
        retry_seconds: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
        name: str = "value",
    ) -> None:
        self._load = load
        self._ttl = ttl_seconds
        self._retry = retry_seconds
        self._clock = clock
        self._name = name
        self._lock = threading.Lock()  # the first load
        self._refreshing = threading.Lock()  # one background reload at a time
        self._value: T | None = None
        self._loaded = False
        self._expires = 0.0
        self._first_failure: tuple[float, Exception] | None = None

    def get(self) -> T:
        if not self._loaded:
            with self._lock:
                failed = self._first_failure
                if failed is not None and self._clock() < failed[0]:
                    raise failed[1]  # the source just failed: fail fast, not one by one
                if not self._loaded:
                    try:
                        self._store(self._load())
                    except Exception as exc:
                        self._first_failure = (self._clock() + self._retry, exc)
                        raise
        elif self._clock() >= self._expires and self._refreshing.acquire(blocking=False):
            if self._clock() < self._expires:  # a reload finished between the two checks
                self._refreshing.release()
            else:
                threading.Thread(
                    target=self._reload, name=f"reload-{self._name}", daemon=True
                ).start()
        return self._value  # type: ignore[return-value]

    def _store(self, value: T) -> None:
        self._value = value
        self._expires = self._clock() + self._ttl
        self._loaded = True

    def _reload(self) -> None:
        try:
            self._store(self._load())
        except Exception as exc:
            # Keep serving what we have; a source that is down now may be back soon.
            self._expires = self._clock() + self._retry
            log.warning(
                f"{self._name} not reloaded; serving the cached one", extra={"error": str(exc)}
            )
        finally:
            self._refreshing.release()
