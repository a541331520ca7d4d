"""The worker's GET /healthz against the local stack: each worker has a port, the stack calls
a worker ready when its endpoint says so, and the endpoint says 503 while the model loads
and while pulls fail."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
import requests

from ltxv.local.processes import free_ports
from ltxv.local.stack import REPO_ROOT, LocalStack


def _healthz(port: int) -> tuple[int, dict] | None:
    try:
        response = requests.get(f"http://127.0.0.1:{port}/healthz", timeout=2)
    except requests.ConnectionError:
        return None  # not listening yet
    return response.status_code, response.json()


def _wait(port: int, want, timeout: float = 90) -> tuple[int, dict]:
    deadline = time.monotonic() + timeout
    seen = None
    while time.monotonic() < deadline:
        seen = _healthz(port)
        if seen is not None and want(*seen):
            return seen
        time.sleep(0.05)
    raise AssertionError(f"/healthz on {port} never answered as wanted; last: {seen}")


@pytest.mark.emulators
@pytest.mark.timeout(240)
def test_the_stack_starts_a_worker_when_its_health_says_ready(emulators):
    stack = LocalStack(
        emulators.state_dir, ports=emulators.stack.ports, settings=emulators.settings, echo=None
    )
    port = stack.port("worker")
    assert port not in [stack.port(name) for name in stack.ports if name != "worker"]
    # A worker left running would answer /healthz before the one this test starts.
    stack.down(["worker"])
    assert stack.pid("worker") is None
    stack._launch(stack.specs["worker"])  # what `up` does first; `up` then waits for ready
    try:
        code, body = _wait(port, lambda code, body: True)
        # Listening before the model is in memory (a probe hears "loading", not silence),
        # unless this machine loaded the tiny model faster than the first probe.
        assert (code, body["status"]) in {(503, "unready"), (200, "ready")}
        if code == 503:
            assert body["reason"] == "loading the model"
        assert stack.up(["worker"])["worker"]
        code, body = _healthz(port)
        assert (code, body["status"], body["state"]) == (200, "ready", "pulling")
        assert body["model"] == emulators.settings.default_model
    finally:
        stack.down(["worker"])


@pytest.mark.emulators
@pytest.mark.timeout(240)
def test_a_worker_whose_pulls_fail_says_unready(emulators, tmp_path):
    (port,) = free_ports(1)
    env = {
        **os.environ,
        "LTXV_MODEL_DIR": str(tmp_path / "tiny-random"),
        "LTXV_SUBSCRIPTION": "no-such-subscription",  # every pull: 404
        "LTXV_HEALTH_PORT": str(port),
        "LTXV_HEALTH_FAILING_SECONDS": "3",
    }
    with (tmp_path / "worker.log").open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "gpu_worker"],
            env=env,
            cwd=REPO_ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        # Loaded and pulling (ready), until the failures have lasted 3 s.
        _wait(port, lambda code, body: body.get("state") == "pulling")
        _, body = _wait(port, lambda code, body: code == 503)
        assert body["status"] == "unready"
        assert body["reason"].startswith("pulls failing for")
        assert "Subscription does not exist" in body["reason"]
    finally:
        proc.terminate()
        proc.wait(timeout=30)
