"""Webhook signing secrets, one set per API key: a tenant can verify its own events, and
nobody can sign an event that another tenant's receiver would accept.

The secrets are a JSON object of API key id -> list of `whsec_` secrets, current first:

    {"default": ["whsec_current"], "acme": ["whsec_new", "whsec_old"]}

Events are signed with every secret in a key's list, so a rotation needs no downtime: add
the new secret in front, let receivers switch to it at their pace (each delivery carries
both signatures), then drop the old one. Locally (and in tests) the JSON sits in
`LTXV_WEBHOOK_SECRETS`; deployed, in the Secret Manager secret that
`LTXV_WEBHOOK_SECRETS_SECRET` names, which terraform fills (secrets.tf) and which is read
through `Cached`, like the API key hashes, so that a rotation arrives without a redeploy and
a slow Secret Manager holds up nothing once the secrets are loaded.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence

from standardwebhooks.webhooks import EmptyWebhookSecretError, Webhook

from .auth import inline_or_secret
from .cache import Cached
from .settings import Settings

SECRET_PREFIX = "whsec_"  # noqa: S105 (the prefix every secret starts with)
MAX_SECRETS_PER_KEY = 4

Secrets = dict[str, tuple[str, ...]]


def parse_webhook_secrets(raw: str) -> Secrets:
    """The `{key_id: [whsec_...]}` JSON as key id -> secrets, current first.

    Messages name the key, never a secret's value.
    """
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise ValueError(f"webhook secrets are not JSON: {exc.__class__.__name__}") from None
    if not isinstance(data, dict):
        raise ValueError("webhook secrets must be a JSON object of key id -> [whsec_...]")
    parsed: Secrets = {}
    for key_id, secrets in data.items():
        if not (isinstance(key_id, str) and key_id):
            raise ValueError("webhook secrets: every key id must be a non-empty string")
        if not (isinstance(secrets, list) and 1 <= len(secrets) <= MAX_SECRETS_PER_KEY):
            raise ValueError(
                f"webhook secrets of key {key_id!r}: a list of 1 to {MAX_SECRETS_PER_KEY} "
                "secrets, current first"
            )
        for secret in secrets:
            _check(key_id, secret)
        parsed[key_id] = tuple(secrets)
    return parsed


def _check(key_id: str, secret: object) -> None:
    if not (isinstance(secret, str) and secret.startswith(SECRET_PREFIX)):
        raise ValueError(f"webhook secrets of key {key_id!r}: each must be a whsec_ string")
    try:
        Webhook(secret)
    except (ValueError, EmptyWebhookSecretError):  # bad base64 is a ValueError
        raise ValueError(
            f"webhook secrets of key {key_id!r}: a secret is not whsec_ and base64"
        ) from None


class WebhookSecrets:
    """Each API key's signing secrets, from a loader of the JSON above."""

    def __init__(self, load: Callable[[], str], ttl_seconds: float = 300.0, **cache_options):
        self._secrets = Cached(
            lambda: parse_webhook_secrets(load()), ttl_seconds, name="webhook secrets",
            **cache_options,
        )  # fmt: skip

    @classmethod
    def of(cls, secrets: Mapping[str, Sequence[str]]) -> WebhookSecrets:
        """Fixed secrets (tests, tools)."""
        raw = json.dumps({key: list(values) for key, values in secrets.items()})
        return cls(lambda: raw, ttl_seconds=float("inf"))

    @classmethod
    def from_settings(cls, settings: Settings) -> WebhookSecrets:
        return cls(
            *inline_or_secret(
                settings.webhook_secrets_json,
                settings.webhook_secrets_secret,
                settings.webhook_secrets_cache_seconds,
                missing="set LTXV_WEBHOOK_SECRETS (JSON key id -> [whsec_...]) or "
                "LTXV_WEBHOOK_SECRETS_SECRET (the Secret Manager secret holding it)",
            )
        )

    def all(self) -> Secrets:
        """Every key's secrets; the first call waits for them, later ones never do."""
        return self._secrets.get()

    def for_key(self, key_id: str | None) -> tuple[str, ...]:
        """`key_id`'s secrets, current first; () when it has none."""
        return self.all().get(key_id or "", ())
