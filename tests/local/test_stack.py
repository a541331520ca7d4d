"""The local stack manager against the real emulators and functions-framework."""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import sys
import time
import uuid
from datetime import timedelta
from pathlib import Path

import pytest
import requests
from google.cloud import storage
from google.oauth2 import service_account

from ltxv.intake.auth import hash_api_key
from ltxv.local.components import EMULATORS, Component
from ltxv.local.processes import group_members
from ltxv.local.stack import LocalStack, StackError

pytestmark = pytest.mark.emulators


def _alive(pid: int) -> bool:
    """A process that still runs; a zombie (exited, not yet reaped by init) does not."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def _wait_for(condition, timeout: float = 10.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def test_up_twice_starts_no_duplicates(emulators):
    before = {name: emulators.stack.pid(name) for name in EMULATORS}
    assert all(before.values())

    again = emulators.stack.up()
    # A second object on the same state dir, as a second `up` from the command line is.
    other = LocalStack(
        emulators.state_dir, ports=emulators.stack.ports, settings=emulators.settings, echo=None
    ).up(EMULATORS)

    assert again == before
    assert other == before
    assert {name: emulators.stack.pid(name) for name in EMULATORS} == before


def test_down_stops_the_whole_process_group(tmp_path):
    # Firestore's launcher is a bash script whose Java child does the work: the case
    # where killing only the pidfile's process would leave the server running.
    stack = LocalStack.with_free_ports(tmp_path, components=["firestore"], echo=None)
    stack.up()
    pid = stack.pid("firestore")
    members = group_members(pid)
    cmdlines = [Path(f"/proc/{m}/cmdline").read_bytes() for m in members]
    assert len(members) >= 2 and any(b"java" in c for c in cmdlines)

    stack.down()

    assert not any(_alive(m) for m in members)
    assert not stack.pid_file("firestore").exists()
    assert stack.status() == {"firestore": None}
    assert stack.log_file("firestore").stat().st_size > 0  # logs (data) stay


def test_gcs_data_survives_a_restart(emulators):
    stack = emulators.stack
    client = storage.Client(project=emulators.project)
    blob = client.bucket(emulators.settings.outputs).blob(f"restart/{uuid.uuid4().hex}.txt")
    blob.upload_from_string(b"still here", if_generation_match=0)
    old_pid = stack.pid("gcs")

    stack.down(["gcs"])
    assert stack.pid("gcs") is None and not _alive(old_pid)
    stack.up(["gcs"])

    assert stack.pid("gcs") != old_pid
    again = client.bucket(emulators.settings.outputs).get_blob(blob.name)
    assert again.download_as_bytes() == b"still here"
    assert again.generation == blob.generation


def test_a_port_taken_by_something_else_is_a_clear_error(tmp_path):
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        stack = LocalStack(tmp_path, ports={"firestore": port}, components=["firestore"])
        with pytest.raises(StackError, match=rf"firestore: port 127\.0\.0\.1:{port} .*in use"):
            stack.up()
    assert not stack.pid_file("firestore").exists()


def test_secrets_are_private_stable_and_usable(emulators):
    stack = emulators.stack
    for path in (*stack.secrets_dir.iterdir(), stack.stack_env_file):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    assert stat.S_IMODE(stack.secrets_dir.stat().st_mode) == 0o700

    env = dict(line.split("=", 1) for line in stack.stack_env_file.read_text().splitlines())
    assert env["LTXV_API_KEY"] == stack.api_key and stack.api_key.startswith("ltxv_")
    assert env["LTXV_WEBHOOK_SECRET"].startswith("whsec_")
    assert env["STORAGE_EMULATOR_HOST"] == emulators.storage_host
    assert env["LTXV_TOPIC"] == "ltxv-jobs"
    assert env["LTXV_SUBSCRIPTION"] == "ltxv-jobs-worker-tiny-random"  # the default model's
    assert set(env) >= {"LTXV_API_URL", "PUBSUB_EMULATOR_HOST", "FIRESTORE_EMULATOR_HOST"}
    hashes = json.loads(stack.service_env()["LTXV_API_KEY_HASHES"])
    assert hashes == {"default": hash_api_key(stack.api_key)}
    # The functions sign the key's webhooks with the secret stack.env gives its receivers.
    secrets = json.loads(stack.service_env()["LTXV_WEBHOOK_SECRETS"])
    assert secrets == {"default": [env["LTXV_WEBHOOK_SECRET"]]}

    # Generated once: another object on the same state dir reads the same values.
    same = LocalStack(emulators.state_dir, settings=emulators.settings, echo=None)
    assert (same.api_key, same.webhook_secret) == (stack.api_key, stack.webhook_secret)

    # The service-account key signs URLs the way the functions will.
    credentials = service_account.Credentials.from_service_account_file(
        str(stack.signing_credentials_file)
    )
    blob = storage.Client(project=emulators.project).bucket("b").blob("o")
    url = blob.generate_signed_url(
        expiration=timedelta(minutes=5), version="v4", credentials=credentials
    )
    assert "X-Goog-Signature=" in url


def test_a_component_that_exits_early_names_itself_and_its_log(tmp_path):
    def never_ready(stack):
        raise RuntimeError("not ready")

    crash = Component(
        name="crasher",
        command=lambda stack: [sys.executable, "-c", "print('boom', flush=True); exit(3)"],
        probe=never_ready,
        marker="boom",
    )
    stack = LocalStack(tmp_path, specs=[crash], echo=None)
    with pytest.raises(StackError, match=r"crasher exited during start-up") as error:
        stack.up()
    assert str(stack.log_file("crasher")) in str(error.value)
    assert "boom" in str(error.value)


def test_a_supervised_component_is_restarted_whenever_it_exits(tmp_path):
    # The shape the GPU worker will take: restart=True, its running pid in worker.pid.
    worker_pid = tmp_path / "worker.pid"

    def child_pid() -> int | None:
        try:
            pid = int(worker_pid.read_text())
        except (FileNotFoundError, ValueError):
            return None
        return pid if _alive(pid) else None

    def probe(stack):
        if child_pid() is None:
            raise RuntimeError("no worker yet")

    worker = Component(
        name="worker",
        command=lambda stack: [sys.executable, "-c", "import time; time.sleep(300)"],
        probe=probe,
        marker="time.sleep",
        restart=True,
        child_pidfile="worker.pid",
    )
    stack = LocalStack(tmp_path, specs=[worker], echo=None)
    stack.up()
    first = child_pid()
    supervisor = stack.pid("worker")
    try:
        os.kill(first, signal.SIGKILL)
        _wait_for(lambda: child_pid() not in (None, first), what="a restarted worker")
        second = child_pid()
        assert stack.pid("worker") == supervisor
    finally:
        stack.down()
    assert not _alive(second) and not _alive(supervisor)


FUNCTIONS_SOURCE = """
import json, os
import functions_framework

@functions_framework.http
def api(request):
    if request.path == "/healthz":
        return {"status": "ok"}
    keys = ["LTXV_PROJECT", "PUBSUB_EMULATOR_HOST", "LTXV_ALLOW_HTTP_LOOPBACK_WEBHOOKS"]
    return {key: os.environ.get(key) for key in keys}

@functions_framework.cloud_event
def prompt_file(event):
    pass
"""


def test_functions_start_with_the_service_environment(emulators, tmp_path):
    source = tmp_path / "submit" / "main.py"
    source.parent.mkdir()
    source.write_text(FUNCTIONS_SOURCE)
    stack = LocalStack.with_free_ports(
        emulators.state_dir,
        ports=emulators.stack.ports,  # the running emulators'; free ports for the rest
        settings=emulators.settings,
        functions_dir=tmp_path,
        echo=None,
    )
    try:
        pids = stack.up(["api", "prompt_file"])
        assert {n: pids[n] for n in EMULATORS} == {n: emulators.stack.pid(n) for n in EMULATORS}
        seen = requests.get(f"{stack.api_url}/env", timeout=5).json()
        assert seen == {
            "LTXV_PROJECT": emulators.project,
            "PUBSUB_EMULATOR_HOST": emulators.pubsub_host,
            "LTXV_ALLOW_HTTP_LOOPBACK_WEBHOOKS": "true",
        }
    finally:
        stack.down(["api", "prompt_file"])
    assert all(emulators.stack.pid(n) for n in EMULATORS)  # the emulators were left alone
