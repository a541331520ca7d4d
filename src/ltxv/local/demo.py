"""`make demo`: the pipeline end to end on the local stack, then everything stopped.

It starts a private stack (its own state directory and free ports, so a running `make dev`
is left alone) and a webhook receiver, submits the old /predict example over HTTP with a
webhook, replays it with the same Idempotency-Key, shows a rejected request, drops a
.jsonl prompt file into the prompts bucket and reads its receipt, follows the jobs while
the worker renders them, downloads the videos into ./out/, checks every webhook's
signature, and prints a table. Exits non-zero if any of that did not happen.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from ltxv.client import ApiError, Client, ClientError, PromptDrops
from ltxv.client.webhook_receiver import WebhookReceiver
from ltxv.core import schemas
from ltxv.core.jobs import State
from ltxv.core.media import probe
from ltxv.local.stack import REPO_ROOT, LocalStack, StackError

OLD_EXAMPLE = schemas.old_predict_example()
PROMPT_FILE: list[dict[str, Any]] = [
    {"prompt": "A red fox trotting through fresh snow, morning light"},
    {"prompt": "Waves rolling onto a black sand beach at dusk", "seed": 7},
    {"prompt": "A paper boat in a rain gutter", "height": 100},  # not divisible by 32
    {"prompt": "Neon signs reflected in a puddle", "num_frames": 17, "fps": 12},
]
NOISE_NOTICE = (
    "tiny-random is the real LTX-Video pipeline at miniature size with random weights, so\n"
    "its videos are noise: it proves the plumbing, not the model. On a machine with a CUDA\n"
    "GPU, `LTXV_DEFAULT_MODEL=ltx-video-2b-distilled make demo` renders real video (weights\n"
    "download from the Hugging Face hub on first use); see README.md, Model profiles."
)
OUT = Path("out")
SETTLE_TIMEOUT = 600.0
WEBHOOK_TIMEOUT = 60.0


class DemoFailed(RuntimeError):
    pass


def say(line: str = "") -> None:
    print(line, flush=True)


def check(condition: bool, message: str) -> None:
    if not condition:
        raise DemoFailed(message)


def run(stack: LocalStack, receiver: WebhookReceiver, out: Path = OUT) -> list[dict[str, Any]]:
    client = Client(stack.api_url, stack.api_key)
    request = {**OLD_EXAMPLE, "webhook_url": receiver.url}

    say("\n1. The old /predict body, sent to POST /v1/jobs with a webhook and an Idempotency-Key")
    say(f"   {json.dumps(request)}")
    job = client.submit(idempotency_key="demo-1", **request)
    say(f"   202 Accepted  job {job['job_id']}  state: {job['state']}")
    replay = client.submit(idempotency_key="demo-1", **request)
    check(replay["job_id"] == job["job_id"], "the replay created a second job")
    say(f"   sent again with the same key: the same job {replay['job_id']}, no second render")

    say("\n2. A request with mistakes: every one is named by its JSON path")
    try:
        client.submit("", height=700, num_frames=120)
        raise DemoFailed("an invalid request was accepted")
    except ApiError as exc:
        check(exc.status == 422, f"expected 422, got {exc.status}")
        for detail in exc.details:
            say(f"   {exc.status}  {detail['path']:<14} {detail['message']}")

    say("\n3. A .jsonl prompt file dropped into the prompts bucket (line 3 is wrong)")
    drops = PromptDrops(stack.settings.prompts, stack.storage_client())
    with tempfile.TemporaryDirectory() as scratch:
        source = Path(scratch) / f"demo-{int(time.time())}.jsonl"
        lines = [{**line, "webhook_url": receiver.url} for line in PROMPT_FILE]
        source.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
        name, generation = drops.drop(source)
    say(f"   uploaded gs://{drops.bucket.name}/{name}")
    receipt = drops.receipt(name, generation, timeout=60)
    for entry in receipt["accepted"]:
        say(f"   line {entry['line']}: job {entry['job_id']}")
    for entry in receipt["rejected"]:
        for error in entry["errors"]:
            say(f"   line {entry['line']}: rejected, {error['path']} {error['message']}")
    check(len(receipt["accepted"]) == 3, "expected three accepted lines")
    check([e["line"] for e in receipt["rejected"]] == [3], "expected line 3 rejected")

    expected = [job["job_id"], *(e["job_id"] for e in receipt["accepted"])]
    say(f"\n4. The worker renders them (tiny-random, on the CPU): {len(expected)} jobs")
    jobs = wait_until_settled(client, expected)

    say("\n5. Webhooks: one signed event per job, checked with the stack's whsec_ secret")
    events = wait_for_webhooks(receiver, expected)
    for job_id in expected:
        event = events[job_id]
        say(f"   {event['webhook_id']}  {event['type']:<14} signature valid")

    say(f"\n6. Videos downloaded through their signed URLs into ./{out}/")
    out.mkdir(exist_ok=True)
    rows = [download_and_probe(client, item, out) for item in jobs]
    print_table(rows)
    failed = [item["job_id"] for item in jobs if item["state"] != State.SUCCEEDED]
    check(not failed, f"jobs did not succeed: {failed}")
    return jobs


def wait_until_settled(client: Client, job_ids: list[str]) -> list[dict[str, Any]]:
    deadline = time.monotonic() + SETTLE_TIMEOUT
    last = ""
    while time.monotonic() < deadline:
        jobs = [client.get(job_id) for job_id in job_ids]
        line = "   " + "  ".join(
            f"{j['job_id'][:6]}:{j['state']}"
            + (f" {j['progress']['step']}/{j['progress']['total']}" if j.get("progress") else "")
            for j in jobs
        )
        if line != last:
            say(line)
            last = line
        if all(State(j["state"]).terminal for j in jobs):
            return jobs
        time.sleep(0.5)
    raise DemoFailed(f"jobs did not settle within {SETTLE_TIMEOUT:.0f}s")


def wait_for_webhooks(receiver: WebhookReceiver, job_ids: list[str]) -> dict[str, dict[str, Any]]:
    """job id -> {"webhook_id", "type"} of its verified delivery; fails on any forgery."""
    deadline = time.monotonic() + WEBHOOK_TIMEOUT
    while True:
        deliveries = receiver.wait_for(len(job_ids), max(0.0, deadline - time.monotonic()))
        rejected = [d for d in deliveries if d.event is None]
        check(not rejected, f"a webhook failed verification: {rejected[:1]}")
        verified = {
            d.event["data"]["job_id"]: {"webhook_id": d.webhook_id, "type": d.event["type"]}
            for d in deliveries
            if d.event is not None  # none is: checked above
        }
        if set(job_ids) <= set(verified):
            return verified
        if time.monotonic() >= deadline:
            missing = sorted(set(job_ids) - set(verified))
            raise DemoFailed(f"no webhook within {WEBHOOK_TIMEOUT:.0f}s for jobs {missing}")
        time.sleep(0.2)


def download_and_probe(client: Client, job: dict[str, Any], out: Path) -> dict[str, Any]:
    request, timings = job["request"], job.get("timings") or {}
    row = {
        "job": job["job_id"],
        "source": "http" if job["source"] == "http" else f"file:{job['source_line']}",
        "state": job["state"],
        "frames": request["num_frames"],
        "size": f"{request['width']}x{request['height']}",
        "kb": None,
        "queue": timings.get("queue_seconds"),
        "render": timings.get("generate_seconds"),
        "encode": timings.get("encode_seconds"),
        "file": "-",
    }
    if job["state"] == State.SUCCEEDED:
        path = client.download(job, out / f"{job['job_id']}.mp4")
        info = probe(path)
        check(info.num_frames == request["num_frames"], f"{path}: {info.num_frames} frames")
        check(
            (info.width, info.height) == (request["width"], request["height"]),
            f"{path}: {info.width}x{info.height}",
        )
        row.update(frames=info.num_frames, kb=path.stat().st_size / 1024, file=str(path))
    return row


def print_table(rows: list[dict[str, Any]]) -> None:
    def seconds(value: float | None) -> str:
        return "-" if value is None else f"{value:.1f}"

    say(
        f"   {'job':<26} {'source':<7} {'state':<10} {'frames':>6} {'size':>9} {'KB':>6} "
        f"{'queue s':>7} {'render s':>8} {'encode s':>8}  file"
    )
    for r in rows:
        kb = "-" if r["kb"] is None else f"{r['kb']:.0f}"
        say(
            f"   {r['job']:<26} {r['source']:<7} {r['state']:<10} {r['frames']:>6} "
            f"{r['size']:>9} {kb:>6} {seconds(r['queue']):>7} {seconds(r['render']):>8} "
            f"{seconds(r['encode']):>8}  {r['file']}"
        )


def main() -> int:
    state_dir = REPO_ROOT / ".local" / "demo"
    shutil.rmtree(state_dir, ignore_errors=True)  # a fresh stack each time
    stack = LocalStack.with_free_ports(Path(state_dir))
    say(NOISE_NOTICE)
    say("\nStarting the local stack (emulators, functions, event bridge, worker) ...")
    receiver = WebhookReceiver(stack.webhook_secret)
    try:
        stack.up()
        receiver.start()
        say(f"webhook receiver on {receiver.url}")
        run(stack, receiver)
    except (DemoFailed, StackError, ClientError) as exc:
        say(f"\nDEMO FAILED: {exc}")
        say(f"logs: {stack.state_dir / 'logs'}")
        return 1
    finally:
        say("\nStopping what the demo started ...")
        receiver.stop()
        stack.down()
    say(f"\n{NOISE_NOTICE}")
    say("\nDemo finished: every job succeeded and its webhook was verified; videos in ./out/.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
