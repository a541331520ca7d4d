"""GET /v1/webhooks/secret: each API key sees its own signing secrets, and only its own;
`ltxv webhook secret` and `Client.webhook_secret()` print and return them over real HTTP."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator

import pytest
from functions_framework import create_app
from werkzeug.serving import make_server

from ltxv.cli import main
from ltxv.client import Client
from ltxv.core.webhooks import new_secret

from .conftest import API_KEY, OTHER_KEY, SUBMIT_SOURCE, WEBHOOK_SECRETS

pytestmark = pytest.mark.emulators


def test_each_key_gets_its_own_secrets(client, auth):
    mine = client.get("/v1/webhooks/secret", headers=auth)
    assert mine.status_code == 200 and mine.headers["Cache-Control"] == "no-store"
    assert mine.get_json() == {
        "key_id": "default",
        "secret": WEBHOOK_SECRETS["default"][0],
        "secrets": WEBHOOK_SECRETS["default"],
    }
    theirs = client.get("/v1/webhooks/secret", headers={"Authorization": f"Bearer {OTHER_KEY}"})
    assert theirs.get_json()["secret"] == WEBHOOK_SECRETS["other"][0]
    assert WEBHOOK_SECRETS["default"][0] not in theirs.get_data(as_text=True)


@pytest.mark.parametrize("headers", [{}, {"X-API-Key": "ltxv_wrong"}])
def test_without_a_valid_key_it_is_401(client, headers):
    response = client.get("/v1/webhooks/secret", headers=headers)
    assert response.status_code == 401 and "whsec_" not in response.get_data(as_text=True)


def test_during_a_rotation_both_secrets_are_listed_current_first(monkeypatch, env):
    new = new_secret()
    rotated = {**WEBHOOK_SECRETS, "default": [new, *WEBHOOK_SECRETS["default"]]}
    monkeypatch.setenv("LTXV_WEBHOOK_SECRETS", json.dumps(rotated))
    app = create_app(target="api", source=SUBMIT_SOURCE, signature_type="http").test_client()
    body = app.get("/v1/webhooks/secret", headers={"X-API-Key": API_KEY}).get_json()
    assert body["secret"] == new and body["secrets"] == rotated["default"]


def test_a_key_without_a_secret_is_404(monkeypatch, env):
    monkeypatch.setenv("LTXV_WEBHOOK_SECRETS", json.dumps({"default": WEBHOOK_SECRETS["default"]}))
    app = create_app(target="api", source=SUBMIT_SOURCE, signature_type="http").test_client()
    response = app.get("/v1/webhooks/secret", headers={"X-API-Key": OTHER_KEY})
    assert response.status_code == 404
    assert response.get_json()["error"]["code"] == "not_found"


@pytest.fixture
def api_url(app) -> Iterator[str]:
    server = make_server("127.0.0.1", 0, app)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()


def test_the_client_and_the_cli_print_the_current_secret(api_url, capsys):
    body = Client(api_url, API_KEY).webhook_secret()
    assert body["secret"] == WEBHOOK_SECRETS["default"][0]

    assert main(["webhook", "secret", "--url", api_url, "--api-key", OTHER_KEY]) == 0
    assert capsys.readouterr().out == WEBHOOK_SECRETS["other"][0] + "\n"
    assert main(["webhook", "secret", "--url", api_url, "--api-key", API_KEY, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["secrets"] == WEBHOOK_SECRETS["default"]
