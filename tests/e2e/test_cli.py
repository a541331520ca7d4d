"""`ltxv` and `ltxv.client` as a user runs them, against the local stack over real HTTP.

The CLI runs as a subprocess with nothing but `LTXV_STATE_DIR` pointing at the stack's
state directory, so it finds the API, key and buckets in stack.env exactly as after
`make dev`.
"""

from __future__ import annotations

import fcntl
import json
import os
import pty
import select
import socket
import struct
import subprocess
import sys
import termios
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from ltxv.client import ApiError, Client, PromptDrops, ServiceUnavailable, WaitTimedOut
from ltxv.core import schemas
from ltxv.core.media import probe
from ltxv.local.stack import LocalStack

from .conftest import running_stack, user_env

pytestmark = [pytest.mark.emulators, pytest.mark.timeout(240)]

COMPONENTS = ["api", "prompt_file", "result_ready", "worker", "bridge"]
LTXV = [sys.executable, "-m", "ltxv.cli"]
SMALL = ["--num-frames", "9", "--height", "64", "--width", "96"]


@pytest.fixture(scope="module")
def stack(emulators) -> Iterator[LocalStack]:
    with running_stack(emulators, COMPONENTS) as running:
        yield running


@pytest.fixture
def worker(stack) -> LocalStack:
    stack.up(["worker"])
    return stack


@pytest.fixture
def no_worker(stack) -> Iterator[LocalStack]:
    """Jobs stay queued: the worker is stopped for the test and started again after."""
    stack.down(["worker"])
    yield stack
    stack.up(["worker"])


@pytest.fixture
def client(stack, clean_firestore) -> Client:
    return Client(stack.api_url, stack.api_key)


def ltxv(stack: LocalStack, *args: str, cwd: Path | None = None, **env: str):
    environment = user_env(LTXV_STATE_DIR=str(stack.state_dir), PYTHONUNBUFFERED="1", **env)
    return subprocess.run(
        [*LTXV, *args], env=environment, cwd=cwd, capture_output=True, text=True, timeout=180
    )


# --- the CLI ------------------------------------------------------------------------------


def test_submit_wait_out_renders_reports_and_saves_the_video(worker, clean_firestore, tmp_path):
    target = tmp_path / "fox.mp4"
    run = ltxv(worker, "submit", "a red fox in snow", *SMALL, "--seed", "7", "--out", str(target))
    assert run.returncode == 0, run.stderr
    job_id = run.stdout.strip()
    assert "submitted job " + job_id in run.stderr
    assert f"job {job_id} succeeded" in run.stderr
    assert "running" in run.stderr or "succeeded 3/3" in run.stderr  # progress lines
    info = probe(target)
    assert (info.num_frames, info.width, info.height) == (9, 96, 64)
    assert "Traceback" not in run.stderr

    status = ltxv(worker, "status", job_id)
    assert status.returncode == 0
    assert "state     succeeded" in status.stdout
    assert "a red fox in snow" in status.stdout
    assert "96x64, 9 frames" in status.stdout and "seed 7" in status.stdout

    as_json = json.loads(ltxv(worker, "status", job_id, "--json").stdout)
    schemas.validator("job").validate(as_json)

    listed = ltxv(worker, "list", "--state", "succeeded")
    assert listed.returncode == 0 and job_id in listed.stdout
    assert ltxv(worker, "list", "--state", "queued").stdout == ""

    saved = ltxv(worker, "download", job_id, "--out", str(tmp_path))
    assert saved.returncode == 0
    assert Path(saved.stdout.strip()) == tmp_path / f"{job_id}.mp4"
    assert (tmp_path / f"{job_id}.mp4").read_bytes() == target.read_bytes()
    poster = ltxv(worker, "download", job_id, "--poster", "--out", str(tmp_path / "p.jpg"))
    assert poster.returncode == 0 and (tmp_path / "p.jpg").read_bytes()[:2] == b"\xff\xd8"


def test_wait_draws_a_live_progress_bar_on_a_terminal(worker, clean_firestore):
    """On a tty, stderr carries a redrawn bar of state and denoising step."""
    primary, secondary = pty.openpty()
    fcntl.ioctl(secondary, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    env = user_env(LTXV_STATE_DIR=str(worker.state_dir))
    process = subprocess.Popen(
        [*LTXV, "submit", "a lighthouse", *SMALL, "--num-inference-steps", "6", "--wait"],
        env=env,
        stdin=secondary,
        stdout=subprocess.PIPE,
        stderr=secondary,
    )
    os.close(secondary)
    screen = b""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        ready, _, _ = select.select([primary], [], [], 0.2)
        if ready:
            try:
                chunk = os.read(primary, 4096)
            except OSError:  # the child closed the terminal
                break
            if not chunk:
                break
            screen += chunk
        elif process.poll() is not None:
            break
    os.close(primary)
    assert process.wait(10) == 0
    text = screen.decode()
    assert "\r" in text  # redrawn in place
    assert "queued" in text or "running" in text
    assert "succeeded |" in text and "6/6 steps" in text


def test_drop_uploads_a_prompt_file_and_prints_its_receipt(worker, clean_firestore, tmp_path):
    good = tmp_path / "batch.jsonl"
    good.write_text('{"prompt": "a kite"}\n{"prompt": "a boat", "num_frames": 9}\n')
    run = ltxv(worker, "drop", str(good))
    assert run.returncode == 0, run.stderr
    assert f"uploaded gs://{worker.settings.prompts}/incoming/batch.jsonl" in run.stderr
    lines = run.stdout.splitlines()
    assert [line.split(":")[0] for line in lines] == ["line 1", "line 2"]
    job_id = lines[0].split()[-1]
    assert ltxv(worker, "status", job_id).returncode == 0

    # The same name again is a new generation: its own receipt, not the last one's.
    good.write_text('{"prompt": "a kite"}\n{"prompt": "x", "height": 100}\n')
    again = ltxv(worker, "drop", str(good), "--json")
    assert again.returncode == 1  # a rejected line
    receipt = json.loads(again.stdout)
    schemas.validator("receipt").validate(receipt)
    assert receipt["accepted"][0]["job_id"] != job_id
    assert receipt["rejected"][0]["line"] == 2
    assert receipt["rejected"][0]["errors"][0]["path"] == "$.height"

    wrong = tmp_path / "notes.txt"
    wrong.write_text("{}")
    refused = ltxv(worker, "drop", str(wrong))
    assert refused.returncode == 2
    assert "a prompt file ends in .json or .jsonl" in refused.stderr


def test_drop_wait_renders_the_batch_and_prints_its_manifest(worker, clean_firestore, tmp_path):
    batch = tmp_path / "shots.jsonl"
    small = {"num_frames": 9, "height": 64, "width": 96, "num_inference_steps": 2}
    lines = [
        {"prompt": "a kite", **small},
        {"prompt": "x", "height": 100},
        {"prompt": "a boat", **small},
    ]
    batch.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    run = ltxv(worker, "drop", str(batch), "--wait", "--timeout", "150")
    assert run.returncode == 1, run.stderr  # line 2 was rejected
    out = run.stdout.splitlines()
    assert out[0].startswith("line 1: succeeded ") and out[0].endswith("/video.mp4")
    assert out[1] == "line 2: rejected: $.height: must be divisible by 32"
    assert out[2].startswith("line 3: succeeded ")
    assert "3 lines, 2 succeeded, 0 failed, 0 canceled, 1 rejected" in run.stderr
    assert f"gs://{worker.settings.prompts}/results/shots.jsonl.jsonl" in run.stderr

    good = tmp_path / "good.json"
    good.write_text(json.dumps({"jobs": [{"prompt": "a fox", **small}]}))
    again = ltxv(worker, "drop", str(good), "--wait", "--json", "--timeout", "150")
    assert again.returncode == 0, again.stderr
    header, row = (json.loads(line) for line in again.stdout.splitlines())
    validator = schemas.validator("batch-manifest")
    validator.validate(header)
    validator.validate(row)
    assert header["summary"]["succeeded"] == 1 and row["state"] == "succeeded"

    bad_hook = tmp_path / "hook.json"
    bad_hook.write_text(json.dumps({"jobs": [{"prompt": "a"}], "webhook_url": "https://10.0.0.1/"}))
    refused = ltxv(worker, "drop", str(bad_hook), "--wait")
    assert refused.returncode == 1
    assert refused.stdout.startswith("file rejected: invalid_webhook_url: $.webhook_url")


def test_cancel_a_queued_job_and_waiting_that_times_out(no_worker, clean_firestore):
    submitted = ltxv(no_worker, "submit", "stays queued", *SMALL, "--wait", "--timeout", "1")
    assert submitted.returncode == 4
    job_id = submitted.stdout.strip() or submitted.stderr.split()[2]
    assert "is still queued after 1s" in submitted.stderr

    early = ltxv(no_worker, "download", job_id)
    assert early.returncode == 2
    assert f"job {job_id} is queued; only a succeeded job has a video" in early.stderr

    canceled = ltxv(no_worker, "cancel", job_id)
    assert canceled.returncode == 0
    assert f"job {job_id} canceled" in canceled.stderr
    status = ltxv(no_worker, "status", job_id)
    assert status.returncode == 1 and "state     canceled" in status.stdout
    again = ltxv(no_worker, "cancel", job_id)
    assert again.returncode == 0  # canceling twice is not an error


def test_retry_a_canceled_job_as_a_new_one_and_a_queued_one_is_refused(no_worker, client):
    job_id = ltxv(no_worker, "submit", "retried later", *SMALL).stdout.strip()
    refused = ltxv(no_worker, "retry", job_id)
    assert refused.returncode == 2 and "(409 not_retryable)" in refused.stderr
    assert ltxv(no_worker, "cancel", job_id).returncode == 0

    retried = ltxv(no_worker, "retry", job_id, "--idempotency-key", "cli-retry", "--json")
    assert retried.returncode == 0, retried.stderr
    new = json.loads(retried.stdout)
    assert new["parent_job_id"] == job_id and new["state"] == "queued"
    assert f"retrying job {job_id} as job {new['job_id']} (queued)" in retried.stderr
    again = ltxv(no_worker, "retry", job_id, "--idempotency-key", "cli-retry")
    assert again.stdout.strip() == new["job_id"]
    status = ltxv(no_worker, "status", new["job_id"])
    assert f"retry of  {job_id}" in status.stdout
    waited = ltxv(no_worker, "retry", job_id, "--wait", "--timeout", "1")
    assert waited.returncode == 4 and "is still queued after 1s" in waited.stderr
    # The client: a repeat with the same key is the same new job.
    first = client.retry(job_id, idempotency_key="client-retry")
    assert client.retry(job_id, idempotency_key="client-retry")["job_id"] == first["job_id"]
    assert client.retry(job_id)["job_id"] != first["job_id"]


@pytest.mark.parametrize(
    ("args", "env", "code", "message"),
    [
        (["submit", "x", "--height", "100"], {}, 2, "$.height: must be divisible by 32"),
        (["submit", "--seed", "1"], {}, 2, "no prompt: give it as the first argument"),
        (["submit", "x", "--seed", "abc"], {}, 2, "argument --seed: invalid int value"),
        (["status", "nosuchjob000000000000000000"], {}, 2, "not found"),
        (["cancel", "../../healthz"], {}, 2, "(404 not_found)"),
        (["list", "--state", "done"], {}, 2, "invalid choice: 'done'"),
        (["status", "x"], {"LTXV_API_KEY": "ltxv_wrong"}, 2, "(401 unauthenticated)"),
        (["list"], {"LTXV_API_URL": "http://127.0.0.1:9"}, 3, "cannot reach the API at"),
        (["submit", "x", "--body", "/nonexistent.json"], {}, 2, "cannot read /nonexistent"),
        (["dev", "logs", "nosuch"], {}, 2, "no log for nosuch; there are: "),
    ],
)
def test_mistakes_get_one_clear_line_and_an_exit_code(stack, args, env, code, message):
    run = ltxv(stack, *args, **env)
    assert run.returncode == code, (run.stdout, run.stderr)
    assert message in run.stderr
    assert "Traceback" not in run.stderr


def test_without_a_stack_or_settings_the_cli_says_what_to_do(tmp_path):
    env = user_env(LTXV_STATE_DIR=str(tmp_path))
    run = subprocess.run(
        [*LTXV, "list"], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 2
    assert "no API URL: pass --url, set LTXV_API_URL, or start the local stack" in run.stderr


def test_flags_beat_the_environment_which_beats_stack_env(stack, clean_firestore):
    wrong = {"LTXV_API_KEY": "ltxv_wrong"}
    assert ltxv(stack, "list", **wrong).returncode == 2
    assert ltxv(stack, "list", "--api-key", stack.api_key, **wrong).returncode == 0
    assert ltxv(stack, "list", "--url", stack.api_url, "--api-key", stack.api_key).returncode == 0


def test_dev_logs_and_status_read_the_stack_state(stack):
    logs = ltxv(stack, "dev", "logs", "api", "-n", "3")
    assert logs.returncode == 0
    assert logs.stdout and all(line.startswith("api | ") for line in logs.stdout.splitlines())
    status = ltxv(stack, "dev", "status", "--components", "api")
    assert f"api          running  127.0.0.1:{stack.port('api')}" in status.stdout


# --- the Python client --------------------------------------------------------------------


def test_client_submit_wait_download_list_and_cancel(worker, client, tmp_path):
    job = client.submit("a windmill", num_frames=9, height=64, width=96, metadata={"run": "1"})
    seen = []
    done = client.wait(job["job_id"], timeout=120, poll_interval=0.2, on_progress=seen.append)
    assert done["state"] == "succeeded" and done["request"]["metadata"] == {"run": "1"}
    assert seen[0]["state"] in ("queued", "running") and seen[-1]["state"] == "succeeded"
    path = client.download(done, tmp_path / "w.mp4")
    assert probe(path).num_frames == 9
    assert not list(tmp_path.glob(".*.partial"))

    others = [
        client.submit(f"prompt {n}", **{"num_frames": 9, "height": 64, "width": 96})
        for n in range(3)
    ]
    first = client.list(page_size=2)
    assert len(first.jobs) == 2 and first.next_page_token
    every = [j["job_id"] for j in client.iter_jobs(page_size=2)]
    assert sorted(every) == sorted([job["job_id"], *(o["job_id"] for o in others)])
    for other in others:
        client.wait(other["job_id"], timeout=120, poll_interval=0.2)
    with pytest.raises(ApiError) as conflict:
        client.cancel(job["job_id"])
    assert (conflict.value.status, conflict.value.code) == (409, "conflict")


def test_client_errors_carry_the_api_details(stack, client):
    with pytest.raises(ApiError) as invalid:
        client.submit("x", height=100, num_frames=10)
    assert invalid.value.status == 422
    assert {d["path"] for d in invalid.value.details} == {"$.height", "$.num_frames"}
    with pytest.raises(ApiError) as missing:
        client.get("nosuchjob000000000000000000")
    assert missing.value.status == 404
    with pytest.raises(ServiceUnavailable, match="cannot reach the API"):
        Client(f"http://127.0.0.1:{_closed_port()}", "k").list()


def test_client_wait_times_out_with_the_last_state(no_worker, client):
    job = client.submit("patience", num_frames=9, height=64, width=96)
    with pytest.raises(WaitTimedOut) as timed_out:
        client.wait(job["job_id"], timeout=0.5, poll_interval=0.1)
    assert timed_out.value.job["state"] == "queued"
    assert client.cancel(job["job_id"])["state"] == "canceled"


def test_prompt_drops_follow_the_receipt_of_their_own_upload(worker, clean_firestore, tmp_path):
    drops = PromptDrops(worker.settings.prompts, worker.storage_client())
    source = tmp_path / "one.json"
    source.write_text('{"prompt": "a single job", "num_frames": 9}')
    name, generation = drops.drop(source)
    receipt = drops.receipt(name, generation, timeout=60)
    assert receipt["generation"] == generation and len(receipt["accepted"]) == 1


class _Flaky(BaseHTTPRequestHandler):
    """Answers 503 to the first two POSTs, then 202; records each Idempotency-Key."""

    keys: list[str] = []

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        type(self).keys.append(self.headers["Idempotency-Key"])
        status = 503 if len(self.keys) <= 2 else 202
        body = json.dumps(
            {"error": {"code": "unavailable", "message": "busy", "details": []}}
            if status == 503
            else {"job_id": "j1", "state": "queued"}
        ).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


def test_client_retries_a_busy_service_with_one_idempotency_key():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Flaky)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        job = Client(f"http://127.0.0.1:{server.server_address[1]}", "k").submit("x")
    finally:
        server.shutdown()
        server.server_close()
    assert job["job_id"] == "j1"
    assert len(_Flaky.keys) == 3 and len(set(_Flaky.keys)) == 1


def _closed_port() -> int:
    with socket.socket() as probe_socket:
        probe_socket.bind(("127.0.0.1", 0))
        return probe_socket.getsockname()[1]


def test_dev_logs_follow_prints_new_lines_as_they_come(stack):
    env = user_env(LTXV_STATE_DIR=str(stack.state_dir), PYTHONUNBUFFERED="1")
    follower = subprocess.Popen(
        [*LTXV, "dev", "logs", "api", "-f", "-n", "0"],
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        time.sleep(1.5)  # let it take the log's current end as its start
        Client(stack.api_url, stack.api_key).health()
        line = follower.stdout.readline()  # blocks until the request's log line arrives
        assert line.startswith("api | {") and '"requestUrl": "/healthz"' in line
    finally:
        follower.terminate()
        follower.wait(10)
