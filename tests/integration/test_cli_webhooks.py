"""`ltxv webhook listen|verify` and `ltxv dev dead-letter` as a user runs them."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import requests
from google.cloud import pubsub_v1

from ltxv.cli import main
from ltxv.client import read_stack_env
from ltxv.core.webhooks import build_event, encode_event, sign_headers

from ..unit.test_webhooks import SECRET, settled_result

LTXV = [sys.executable, "-m", "ltxv.cli"]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _signed(state: str = "succeeded", msg_id: str = "evt_cli") -> tuple[bytes, dict[str, str]]:
    body = encode_event(build_event(settled_result(state)))
    return body, sign_headers(SECRET, msg_id, body)


def test_listen_verifies_prints_and_saves_then_verify_checks_the_saved_files(tmp_path):
    port, saved = _free_port(), tmp_path / "hooks"
    env = {**os.environ, "LTXV_WEBHOOK_SECRET": SECRET, "PYTHONUNBUFFERED": "1"}
    listener = subprocess.Popen(
        [*LTXV, "webhook", "listen", "--port", str(port), "--save", str(saved)],
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert listener.stdout.readline().startswith(f"listening on http://127.0.0.1:{port}/")
        body, headers = _signed()
        for _ in range(50):
            try:
                answer = requests.post(
                    f"http://127.0.0.1:{port}/webhook", data=body, headers=headers, timeout=5
                )
                break
            except requests.ConnectionError:
                time.sleep(0.1)
        assert answer.status_code == 200
        forged = requests.post(
            f"http://127.0.0.1:{port}/webhook", data=body + b" ", headers=headers, timeout=5
        )
        assert forged.status_code == 400
        first, second = listener.stdout.readline(), listener.stdout.readline()
    finally:
        listener.terminate()
        listener.wait(10)
    assert first.startswith("evt_cli job.succeeded job aaaaaaaaaaaaaaaaaaaaaaaaaa verified")
    assert "REJECTED" in second

    files = ["--body", str(saved / "evt_cli.json"), "--headers", str(saved / "evt_cli.headers")]
    ok = subprocess.run(
        [*LTXV, "webhook", "verify", *files], env=env, capture_output=True, text=True
    )
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.startswith("valid: evt_cli job.succeeded job aaaa")


def test_verify_exit_codes_and_messages(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("LTXV_STATE_DIR", str(tmp_path))  # no stack.env here
    monkeypatch.delenv("LTXV_WEBHOOK_SECRET", raising=False)
    body, headers = _signed("failed")
    (tmp_path / "body.json").write_bytes(body)
    flags = ["--id", headers["webhook-id"], "--timestamp", headers["webhook-timestamp"]]
    signature = ["--signature", headers["webhook-signature"]]

    assert main(["webhook", "verify", "--body", str(tmp_path / "body.json"), *flags, *signature,
                 "--secret", SECRET, "--print"]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert out.startswith("valid: evt_cli job.failed") and '"attempts_exhausted"' in out

    tampered = tmp_path / "tampered.json"
    tampered.write_bytes(body.replace(b"failed", b"succeeded"))
    assert main(["webhook", "verify", "--body", str(tampered), *flags, *signature,
                 "--secret", SECRET]) == 1  # fmt: skip
    assert capsys.readouterr().err.startswith("invalid: No matching signature")

    assert main(["webhook", "verify", "--body", str(tmp_path / "body.json"), *flags,
                 "--secret", SECRET]) == 2  # fmt: skip
    assert "missing webhook-signature" in capsys.readouterr().err
    assert main(["webhook", "verify", "--body", str(tmp_path / "body.json"), *flags,
                 *signature]) == 2  # fmt: skip
    assert "no webhook secret" in capsys.readouterr().err
    assert main(["webhook", "verify", "--body", str(tmp_path / "nope.json"), *flags,
                 *signature, "--secret", SECRET]) == 2  # fmt: skip
    assert "cannot read" in capsys.readouterr().err


def test_settings_come_from_stack_env_when_not_given(tmp_path, monkeypatch):
    (tmp_path / "stack.env").write_text(
        "LTXV_WEBHOOK_SECRET='whsec_abc='\nLTXV_API_URL=http://127.0.0.1:8080\n# note\n"
    )
    monkeypatch.setenv("LTXV_STATE_DIR", str(tmp_path))
    assert read_stack_env() == {
        "LTXV_WEBHOOK_SECRET": "whsec_abc=",
        "LTXV_API_URL": "http://127.0.0.1:8080",
    }


@pytest.mark.emulators
def test_dev_dead_letter_publishes_as_pubsub_does(emulators, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("LTXV_STATE_DIR", str(tmp_path))
    subscriber = pubsub_v1.SubscriberClient()
    path = subscriber.subscription_path(emulators.project, f"dl-probe-{uuid.uuid4().hex[:8]}")
    topic = f"projects/{emulators.project}/topics/{emulators.settings.dead_letter_topic}"
    subscriber.create_subscription(name=path, topic=topic)
    try:
        assert main(["dev", "dead-letter", "job123", "--attempts", "7"]) == 0
        assert "published job job123" in capsys.readouterr().out
        response = subscriber.pull(subscription=path, max_messages=10, timeout=10)
    finally:
        subscriber.delete_subscription(subscription=path)
    (received,) = response.received_messages
    assert json.loads(received.message.data) == {"job_id": "job123"}
    assert received.message.attributes["CloudPubSubDeadLetterSourceDeliveryCount"] == "7"


def test_dev_dead_letter_refuses_without_a_local_stack(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("LTXV_STATE_DIR", str(tmp_path))
    monkeypatch.delenv("PUBSUB_EMULATOR_HOST", raising=False)
    assert main(["dev", "dead-letter", "job123"]) == 2
    assert "make dev" in capsys.readouterr().err


def test_the_ltxv_script_is_installed():
    script = Path(sys.executable).parent / "ltxv"
    result = subprocess.run([script, "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "webhook" in result.stdout


def test_webhook_events_is_a_repeatable_flag_with_the_schemas_choices(capsys):
    from ltxv.cli import build_parser
    from ltxv.cli.jobs import request_body

    hook = ["--webhook-url", "http://127.0.0.1:8099/webhook"]
    events = ["--webhook-events", "running", "--webhook-events", "settled"]
    args = build_parser().parse_args(["submit", "a kite", *hook, *events])
    assert request_body(args)["webhook_events"] == ["running", "settled"]
    with pytest.raises(SystemExit):
        build_parser().parse_args(["submit", "a kite", *hook, "--webhook-events", "started"])
    assert "invalid choice: 'started'" in capsys.readouterr().err
