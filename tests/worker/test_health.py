"""The worker's readiness (gpu_worker/health.py): the rules on a fake clock, the endpoint's
contract on a loopback port, and the worker loop reporting to it."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest

from gpu_worker import health
from gpu_worker.health import Health
from ltxv.core.settings import Settings

from .conftest import Clock


def _health(clock: Clock) -> Health:
    return Health(
        model="tiny-random",
        stall_seconds=60,
        busy_seconds=600,
        failing_seconds=300,
        clock=clock,
    )


def test_not_ready_while_loading(clock):
    h = _health(clock)
    ready, body = h.status()
    assert not ready
    assert body["status"] == "unready" and body["state"] == "loading"
    assert body["reason"] == "loading the model"


def test_ready_once_loaded_and_pulling(clock):
    h = _health(clock)
    h.loaded("cpu")
    ready, body = h.status()
    assert ready, body
    assert body == {
        "model": "tiny-random",
        "state": "pulling",
        "device": "cpu",
        "since_activity_seconds": 0.0,
        "status": "ready",
    }
    clock.now += 50
    h.pulled()
    clock.now += 59
    assert h.status()[0]


def test_an_unusable_device_is_unready(clock):
    h = _health(clock)
    h.loaded("cpu", "torch sees no CUDA device")
    ready, body = h.status()
    assert not ready
    assert body["reason"] == "device not usable: torch sees no CUDA device"


def test_a_loop_that_stops_pulling_turns_unready(clock):
    h = _health(clock)
    h.loaded("cpu")
    clock.now += 61  # a pull that never returns
    ready, body = h.status()
    assert not ready
    assert body["reason"] == "the loop has not pulled for 61s"


def test_pulls_failing_for_long_turn_unready_and_recover(clock):
    h = _health(clock)
    h.loaded("cpu")
    for _ in range(11):  # the loop is alive (each pull returns), but each one fails
        h.pulled("503 Service Unavailable")
        clock.now += 30
    ready, body = h.status()
    assert not ready
    assert body["reason"] == "pulls failing for 330s (last error: 503 Service Unavailable)"
    h.pulled()
    assert h.status()[0]


def test_a_short_outage_stays_ready(clock):
    h = _health(clock)
    h.loaded("cpu")
    clock.now += 100
    h.pulled("deadline exceeded")
    assert h.status()[0]


def test_a_job_in_progress_is_ready_while_it_progresses(clock):
    h = _health(clock)
    h.loaded("cpu")
    h.job_started("job-1")
    for _ in range(5):  # a render far longer than the pulling loop's bound
        clock.now += 500
        h.progress()
        ready, body = h.status()
        assert ready and body["state"] == "busy" and body["job_id"] == "job-1"
    clock.now += 601  # stuck inside the job
    ready, body = h.status()
    assert not ready
    assert body["reason"] == "no progress on the current job for 601s"
    h.job_done()
    ready, body = h.status()
    assert ready and body["state"] == "pulling" and "job_id" not in body


def test_the_cpu_is_usable_by_definition():
    assert health.device_problem("cpu") is None


def test_cuda_without_a_gpu_is_a_problem(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert health.device_problem("cuda") == "torch sees no CUDA device"


def _get(port: int) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as error:
        return error.code, json.load(error)


def test_the_endpoint_answers_503_then_200(clock):
    h = _health(clock)
    server = health.serve(h, "127.0.0.1", 0)
    try:
        port = server.server_port
        code, body = _get(port)
        assert (code, body["status"], body["reason"]) == (503, "unready", "loading the model")
        h.loaded("cpu")
        code, body = _get(port)
        assert (code, body["status"]) == (200, "ready")
        with pytest.raises(urllib.error.HTTPError) as other:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5)
        assert other.value.code == 404
    finally:
        server.shutdown()
        server.server_close()


def test_each_gpu_worker_gets_its_own_port(monkeypatch):
    monkeypatch.setenv("LTXV_HEALTH_PORT", "8080")
    assert Settings.from_env().worker_health_port == 8080
    monkeypatch.setenv("LTXV_HEALTH_PORT_OFFSET", "3")  # ltxv-worker@3
    assert Settings.from_env().worker_health_port == 8083
    monkeypatch.setenv("LTXV_HEALTH_PORT", "0")
    assert Settings.from_env().worker_health_port == 0  # off, whatever the offset
    assert Settings().health_host == "127.0.0.1"


class _Profile:
    name = "tiny-random"
    accelerator = "cpu"


class _Renderer:
    profile = _Profile()
    device = "cpu"

    def load(self) -> float:
        return 0.0


class _Messages:
    """Pulls that fail `failures` times, then succeed with nothing; stops the worker after
    `pulls` pulls."""

    def __init__(self, worker_stop, pulls: int, failures: int) -> None:
        self.stop, self.pulls, self.failures, self.calls = worker_stop, pulls, failures, 0

    def pull_one(self):
        from google.api_core import exceptions as gexc

        self.calls += 1
        if self.calls >= self.pulls:
            self.stop.set()
        if self.calls <= self.failures:
            raise gexc.ServiceUnavailable("the emulator is gone")
        return None


@pytest.mark.parametrize(("failures", "ready"), [(0, True), (2, False)])
def test_the_worker_loop_reports_to_health(failures, ready):
    from gpu_worker.worker import Worker

    h = Health(model="tiny-random", failing_seconds=0.0)
    worker = Worker(
        Settings(),
        lifecycle=None,
        storage_client=None,
        messages=None,
        renderer=_Renderer(),
        health=h,
    )
    assert h.status()[1]["state"] == "loading"
    worker.messages = _Messages(worker.stopping, pulls=2, failures=failures)
    worker.stopping.wait = lambda timeout=None: False  # no back-off sleeps here
    worker.run()
    ok, body = h.status()
    assert body["state"] == "pulling" and body["device"] == "cpu"
    if ready:
        assert worker.messages.calls == 2
    else:
        assert not ok and body["reason"].startswith("pulls failing")
        assert "the emulator is gone" in body["reason"]
