"""API keys: generated once, stored only as SHA-256 hashes, checked in constant time.

Keys are 256-bit random tokens, so a fast hash is enough (no password stretching is
needed); what matters is that the service never holds a plaintext key and that a
comparison takes the same time whichever byte differs.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
from collections.abc import Callable, Mapping
from functools import cache

from .cache import Cached

KEY_PREFIX = "ltxv_"


def generate_api_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_api_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def parse_key_hashes(raw: str) -> dict[str, str]:
    """Parse the `{key_id: sha256_hex}` JSON that Secret Manager or the environment holds."""
    data = json.loads(raw)
    if not isinstance(data, dict) or not all(
        isinstance(k, str) and isinstance(v, str) and len(v) == 64 for k, v in data.items()
    ):
        raise ValueError("API key hashes must be a JSON object of key id -> sha256 hex digest")
    return {k: v.lower() for k, v in data.items()}


def find_key_id(presented: str | None, hashes: Mapping[str, str]) -> str | None:
    """Return the id of the key whose hash matches, comparing against every key."""
    if not presented:
        return None
    digest = hash_api_key(presented)
    found = None
    for key_id, expected in hashes.items():
        # No early exit: every stored hash is compared, so timing says nothing about which.
        if hmac.compare_digest(digest, expected):
            found = key_id
    return found


class KeyRing:
    """Caches the key hashes for a while so that a rotated secret takes effect without
    redeploy, and a slow or failing Secret Manager never holds up a request once the
    hashes have been read (see `Cached`)."""

    def __init__(self, load: Callable[[], str], ttl_seconds: float = 300.0, **cache_options):
        self._hashes = Cached(
            lambda: parse_key_hashes(load()), ttl_seconds, name="API key hashes", **cache_options
        )

    def hashes(self) -> dict[str, str]:
        return self._hashes.get()

    def authenticate(self, presented: str | None) -> str | None:
        return find_key_id(presented, self.hashes())


SECRET_TIMEOUT_SECONDS = 10.0


@cache
def _secret_client():
    from google.cloud import secretmanager

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
