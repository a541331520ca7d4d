"""Settings that hold secrets: inline (the local stack, tests) or in Secret Manager
(deployed), read by the API's key ring and by the webhook secrets alike."""

from __future__ import annotations

from collections.abc import Callable
from functools import cache
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from google.cloud import secretmanager

SECRET_TIMEOUT_SECONDS = 10.0


@cache
def _secret_client() -> secretmanager.SecretManagerServiceClient:
    from google.cloud import secretmanager  # here: only deployments read Secret Manager

    return secretmanager.SecretManagerServiceClient()


def read_secret(name: str, timeout: float = SECRET_TIMEOUT_SECONDS) -> str:
    """Read the latest version of a Secret Manager secret (`projects/P/secrets/S`)."""
    version = name if "/versions/" in name else f"{name}/versions/latest"
    response = _secret_client().access_secret_version(name=version, timeout=timeout)
    return response.payload.data.decode("utf-8")


def inline_or_secret(
    inline: str | None, secret: str | None, cache_seconds: float, *, missing: str
) -> tuple[Callable[[], str], float]:
    """A loader of a JSON setting and how long to keep what it read: the inline JSON (local
    stack, tests) for good, or the Secret Manager secret (deployed) for `cache_seconds`;
    RuntimeError(`missing`) when neither is set."""
    if inline:
        return (lambda: inline), float("inf")
    if secret:
        return (lambda: read_secret(secret)), cache_seconds
    raise RuntimeError(missing)
