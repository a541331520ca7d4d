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
import threading
import time
from collections.abc import Callable, Mapping

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
    """Caches the key hashes for a while so that a rotated secret takes effect without redeploy."""

    def __init__(self, load: Callable[[], str], ttl_seconds: float = 300.0) -> None:
        self._load = load
        self._ttl = ttl_seconds
        self._lock = threading.Lock()
        self._hashes: dict[str, str] | None = None
        self._loaded_at = 0.0

    def hashes(self) -> dict[str, str]:
        with self._lock:
            if self._hashes is None or time.monotonic() - self._loaded_at > self._ttl:
                self._hashes = parse_key_hashes(self._load())
                self._loaded_at = time.monotonic()
            return self._hashes

    def authenticate(self, presented: str | None) -> str | None:
        return find_key_id(presented, self.hashes())


def read_secret(name: str) -> str:
    """Read the latest version of a Secret Manager secret (`projects/P/secrets/S`)."""
    from google.cloud import secretmanager

    client = secretmanager.SecretManagerServiceClient()
    version = name if "/versions/" in name else f"{name}/versions/latest"
    return client.access_secret_version(name=version).payload.data.decode("utf-8")
