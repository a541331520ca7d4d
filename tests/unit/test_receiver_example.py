"""The sample Flask receiver in examples/ accepts what the notifier signs, and only that."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from ltxv.core.webhooks import build_event, encode_event, sign_headers

from .test_webhooks import SECRET, settled_result

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "webhook_receiver_flask.py"


@pytest.fixture
def client(monkeypatch):
    monkeypatch.setenv("LTXV_WEBHOOK_SECRET", SECRET)
    spec = importlib.util.spec_from_file_location("webhook_receiver_flask", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.app.test_client()


@pytest.mark.parametrize("state", ["succeeded", "failed", "canceled"])
def test_a_signed_event_is_accepted_once(client, state):
    body = encode_event(build_event(settled_result(state)))
    headers = sign_headers(SECRET, "evt_1", body)
    assert client.post("/webhook", data=body, headers=headers).status_code == 204
    assert client.post("/webhook", data=body, headers=headers).status_code == 204


def test_a_forged_event_is_refused(client):
    body = encode_event(build_event(settled_result()))
    headers = sign_headers(SECRET, "evt_1", body)
    forged = body.replace(b"succeeded", b"failed")
    assert client.post("/webhook", data=forged, headers=headers).status_code == 400
    assert client.post("/webhook", data=body).status_code == 400
