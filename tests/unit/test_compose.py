"""The composition roots: what they build, and what they leave until it is used."""

from __future__ import annotations

import dataclasses
import json
import threading

import pytest
from flask import Request
from werkzeug.test import EnvironBuilder

from ltxv import compose_submit
from ltxv.auth import generate_api_key, hash_api_key
from ltxv.compose import lazy
from ltxv.settings import Settings


def test_a_lazy_part_is_built_once_at_its_first_use():
    built = []
    gate = threading.Event()

    def factory():
        gate.wait(5)
        built.append(1)
        return {"answer": 42}

    part = lazy(factory)
    assert built == []
    threads = [threading.Thread(target=lambda: part.get("answer")) for _ in range(8)]
    for thread in threads:
        thread.start()
    gate.set()
    for thread in threads:
        thread.join(5)
    assert part.get("answer") == 42 and part.keys() == {"answer"}
    assert built == [1]


def test_the_key_ring_is_read_inline_or_from_secret_manager(monkeypatch):
    key = generate_api_key()
    hashes = json.dumps({"ops": hash_api_key(key)})
    inline = dataclasses.replace(Settings(), api_key_hashes_json=hashes)
    assert compose_submit.keyring(inline).authenticate(key) == "ops"

    read = []
    monkeypatch.setattr("ltxv.auth.read_secret", lambda name: read.append(name) or hashes)
    named = dataclasses.replace(Settings(), api_keys_secret="projects/p/secrets/keys")
    assert compose_submit.keyring(named).authenticate(key) == "ops"
    assert read == ["projects/p/secrets/keys"]
    with pytest.raises(RuntimeError, match="LTXV_API_KEY_HASHES"):
        compose_submit.keyring(Settings())


def test_the_api_builds_no_storage_or_pubsub_client_until_a_request_needs_one(monkeypatch):
    """A cold instance's first request pays only for the clients it uses."""
    monkeypatch.setenv("FIRESTORE_EMULATOR_HOST", "127.0.0.1:9")  # no credentials needed
    built = []
    monkeypatch.setattr(compose_submit, "storage_client", lambda s: built.append("storage"))
    monkeypatch.setattr(compose_submit, "make_publisher", lambda: built.append("publisher"))
    api = compose_submit.api(Settings())  # nor the key ring nor the webhook secrets: unset
    health = api(Request(EnvironBuilder(path="/healthz").get_environ()))
    assert health.status_code == 200
    assert api(Request(EnvironBuilder(path="/openapi.json").get_environ())).status_code == 200
    assert built == []
