"""What jobs cost, against the emulators: usage adds up over a job's attempts, a job that
never reached a GPU has none, and `GET /v1/jobs` sums a page's usage, as the client and
`ltxv list` show over real HTTP."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator

import pytest
from werkzeug.serving import make_server

from gpu_worker.lifecycle import ClaimOutcome, JobLifecycle
from ltxv.cli import main
from ltxv.client import Client

from .conftest import API_KEY, OTHER_KEY

pytestmark = pytest.mark.emulators

PRICE = 3.6  # USD per GPU hour: a thousandth of a dollar per second


def _submit(service, key: str = "default") -> str:
    return service.intake.submit_http({"prompt": "a kite"}, api_key_id=key).job["job_id"]


def _rendered(service, job_id: str, load: float, generate: float, encode: float) -> dict:
    """Claim the job and let it succeed with these timings, as a worker would."""
    lifecycle = JobLifecycle(service.store, "worker-1", model="tiny-random", gpu_hour_usd=PRICE)
    assert lifecycle.claim(job_id).outcome is ClaimOutcome.CLAIMED
    lifecycle.rendering(job_id, load)
    timings = {"model_load_seconds": load, "generate_seconds": generate, "encode_seconds": encode}
    return lifecycle.succeed(job_id, {"video": "gs://b/v.mp4"}, {**timings, "upload_seconds": 9}, 3)


def test_usage_adds_up_over_a_jobs_attempts(service):
    job_id = _submit(service)
    first = JobLifecycle(service.store, "worker-1", model="tiny-random", gpu_hour_usd=PRICE)
    assert first.claim(job_id).outcome is ClaimOutcome.CLAIMED
    first.rendering(job_id, load_seconds=2.0)  # a fresh process: it pays the model load
    time.sleep(0.3)
    requeued = first.requeue(job_id, "worker_shutdown", "preempted")
    spent = requeued["usage"]["gpu_seconds"]
    assert 2.3 <= spent < 5.0  # the load and the part of the render it got through
    assert requeued["usage"]["cost_usd"] == pytest.approx(spent / 1000, abs=2e-6)

    second = JobLifecycle(service.store, "worker-2", model="tiny-random", gpu_hour_usd=7.2)
    assert second.claim(job_id).outcome is ClaimOutcome.CLAIMED
    second.rendering(job_id, 0.0)
    done = second.succeed(
        job_id, {"video": "gs://b/v.mp4"}, {"generate_seconds": 10.0, "encode_seconds": 1.5}, 3
    )
    # Each attempt at its own worker's price: 11.5 s at 7.2 USD/h on the second one.
    assert done["usage"]["gpu_seconds"] == pytest.approx(spent + 11.5, abs=0.001)
    assert done["usage"]["cost_usd"] == pytest.approx(spent / 1000 + 0.023, abs=2e-6)
    assert service.store.get(job_id)["usage"] == done["usage"]


def test_a_job_that_never_reached_a_gpu_has_no_usage(service, client, auth):
    canceled = _submit(service)
    assert client.post(f"/v1/jobs/{canceled}/cancel", headers=auth).status_code == 200
    assert client.get(f"/v1/jobs/{canceled}", headers=auth).get_json()["usage"] is None
    # Claimed, but failed before its render started (its destination was taken, say).
    failed = _submit(service)
    lifecycle = JobLifecycle(service.store, "worker-1", model="tiny-random", gpu_hour_usd=PRICE)
    lifecycle.claim(failed)
    assert lifecycle.fail(failed, "destination_exists", "taken").get("usage") is None


@pytest.fixture
def api_url(app) -> Iterator[str]:
    server = make_server("127.0.0.1", 0, app)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()


def test_the_list_sums_a_pages_usage_for_the_client_and_ltxv_list(service, api_url, capsys):
    a, b, c = (_submit(service) for _ in range(3))
    _rendered(service, a, load=30.0, generate=60.0, encode=2.0)  # 92 s
    _rendered(service, b, load=0.0, generate=7.5, encode=0.5)  # 8 s
    # c is still queued: no usage. Another key's job is not on this key's pages.
    _rendered(service, _submit(service, key="other"), load=0.0, generate=500.0, encode=1.0)

    client = Client(api_url, API_KEY)
    page = client.list(page_size=10)
    assert {job["job_id"] for job in page.jobs} == {a, b, c}
    assert page.usage_total == {"gpu_seconds": 100.0, "cost_usd": 0.1, "jobs": 2}
    # A page, not all time: the first two jobs (newest first: c, b) only.
    first = client.list(page_size=2)
    assert [job["job_id"] for job in first.jobs] == [c, b]
    assert first.usage_total == {"gpu_seconds": 8.0, "cost_usd": 0.008, "jobs": 1}
    assert Client(api_url, OTHER_KEY).list().usage_total["gpu_seconds"] == 501.0

    assert main(["list", "--url", api_url, "--api-key", API_KEY]) == 0
    lines = capsys.readouterr().out.splitlines()
    rows = {line.split()[0]: line.split() for line in lines[1:-1]}
    assert rows[a][5:7] == ["92.0", "0.0920"] and rows[b][5:7] == ["8.0", "0.0080"]
    assert rows[c][5:7] == ["-", "-"]
    assert lines[-1].split()[:3] == ["total", "100.0", "0.1000"]
    assert "2 of 3 job(s) used a GPU" in lines[-1]
    assert main(["list", "--url", api_url, "--api-key", API_KEY, "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert {job["job_id"]: job["usage"] for job in listed}[a]["gpu_seconds"] == 92.0
