"""`make dev`, `make status` and `make down` are `ltxv dev up|status|down`: run here as a user
runs them, on a private state directory and free ports (the Pub/Sub emulator alone, to
stay quick; the full set is what every end-to-end test starts through the same code)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from ltxv.client import read_stack_env
from ltxv.local.processes import free_ports

pytestmark = [pytest.mark.emulators, pytest.mark.timeout(180)]


def ltxv(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "ltxv.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=150,
    )


def test_dev_up_status_logs_down(tmp_path):
    (port,) = free_ports(1)
    env = {k: v for k, v in os.environ.items() if not k.startswith("LTXV_")}
    env.update(LTXV_STATE_DIR=str(tmp_path), LTXV_PUBSUB_PORT=str(port))

    up = ltxv("dev", "up", "--components", "pubsub", env=env)
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        assert f"pubsub       ready    127.0.0.1:{port}" in up.stdout
        assert "API key  ltxv_" in up.stdout
        assert read_stack_env(tmp_path / "stack.env")["PUBSUB_EMULATOR_HOST"] == f"127.0.0.1:{port}"

        again = ltxv("dev", "up", "--components", "pubsub", env=env)
        assert again.returncode == 0 and "already running" in again.stdout

        status = ltxv("dev", "status", "--components", "pubsub", env=env)
        assert status.returncode == 0
        assert f"pubsub       running  127.0.0.1:{port}" in status.stdout

        logs = ltxv("dev", "logs", "pubsub", "-n", "2", env=env)
        assert logs.returncode == 0 and logs.stdout.startswith("pubsub | ")
    finally:
        down = ltxv("dev", "down", env=env)
    assert down.returncode == 0
    assert "pubsub       stopped" in down.stdout
    stopped = ltxv("dev", "status", "--components", "pubsub", env=env)
    assert stopped.returncode == 3 and "pubsub       stopped" in stopped.stdout
