"""Each API key's webhook signing secrets: parsed strictly, served from cache, rotated."""

from __future__ import annotations

import dataclasses
import json
import time

import pytest
from standardwebhooks.webhooks import Webhook

from ltxv.settings import Settings
from ltxv.webhook_secrets import WebhookSecrets, parse_webhook_secrets
from ltxv.webhooks import new_secret, sign_headers, verify_webhook

A, B, C = new_secret(), new_secret(), new_secret()


def test_secrets_parse_per_key_current_first():
    parsed = parse_webhook_secrets(json.dumps({"default": [A], "acme": [B, C]}))
    assert parsed == {"default": (A,), "acme": (B, C)}


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("not json", "not JSON"),
        ('["whsec_x"]', "JSON object"),
        (json.dumps({"k": A}), "a list of 1 to 4 secrets"),
        (json.dumps({"k": []}), "a list of 1 to 4 secrets"),
        (json.dumps({"k": [A] * 5}), "a list of 1 to 4 secrets"),
        (json.dumps({"": [A]}), "non-empty string"),
        (json.dumps({"k": ["plain-text"]}), "each must be a whsec_ string"),
        (json.dumps({"k": [7]}), "each must be a whsec_ string"),
        (json.dumps({"k": ["whsec_###not-base64"]}), "not whsec_ and base64"),
        (json.dumps({"k": ["whsec_"]}), "not whsec_ and base64"),
    ],
)
def test_bad_secrets_are_refused_without_showing_them(raw, message):
    with pytest.raises(ValueError, match=message) as info:
        parse_webhook_secrets(raw)
    assert A not in str(info.value) and "###" not in str(info.value)


def test_a_key_without_secrets_has_none():
    secrets = WebhookSecrets.of({"default": [A]})
    assert secrets.for_key("default") == (A,)
    assert secrets.for_key("other") == () and secrets.for_key(None) == ()


def test_a_rotation_arrives_from_the_source_after_the_cache_time():
    now = [0.0]
    source = [json.dumps({"default": [A]})]
    secrets = WebhookSecrets(lambda: source[0], ttl_seconds=300, clock=lambda: now[0])
    assert secrets.for_key("default") == (A,)
    source[0] = json.dumps({"default": [B, A]})
    now[0] = 301
    secrets.for_key("default")  # starts the reload in the background, serves the old
    for _ in range(100):
        if secrets.for_key("default") == (B, A):
            break
        time.sleep(0.01)
    assert secrets.for_key("default") == (B, A)


def test_settings_choose_inline_or_secret_manager(monkeypatch):
    inline = dataclasses.replace(Settings(), webhook_secrets_json=json.dumps({"k": [A]}))
    assert WebhookSecrets.from_settings(inline).for_key("k") == (A,)
    read = []
    monkeypatch.setattr("ltxv.auth.read_secret", lambda name: read.append(name) or "{}")
    named = dataclasses.replace(Settings(), webhook_secrets_secret="projects/p/secrets/s")
    assert WebhookSecrets.from_settings(named).all() == {}
    assert read == ["projects/p/secrets/s"]
    with pytest.raises(RuntimeError, match="LTXV_WEBHOOK_SECRETS"):
        WebhookSecrets.from_settings(Settings())


def test_settings_read_the_variables(monkeypatch):
    monkeypatch.setenv("LTXV_WEBHOOK_SECRETS", '{"k": []}')
    monkeypatch.setenv("LTXV_WEBHOOK_SECRETS_SECRET", "projects/p/secrets/s")
    monkeypatch.setenv("LTXV_WEBHOOK_SECRETS_CACHE_SECONDS", "60")
    settings = Settings.from_env()
    assert settings.webhook_secrets_json == '{"k": []}'
    assert settings.webhook_secrets_secret == "projects/p/secrets/s"
    assert settings.webhook_secrets_cache_seconds == 60


def test_signed_with_several_secrets_each_verifies_alone():
    body = b'{"type":"job.succeeded"}'
    headers = sign_headers([B, A], "evt_x", body)
    assert len(headers["webhook-signature"].split(" ")) == 2
    for secret in (A, B):
        assert Webhook(secret).verify(body, headers) == json.loads(body)
        assert verify_webhook(secret, headers, body, check_timestamp=False) == json.loads(body)
    with pytest.raises(Exception, match="No matching signature"):
        verify_webhook(C, headers, body)
    with pytest.raises(ValueError, match="no secret"):
        sign_headers([], "evt_x", body)
