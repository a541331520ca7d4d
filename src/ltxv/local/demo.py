"""`make demo`: the pipeline end to end on the local stack, then everything stopped.

It starts a private stack (its own state directory and free ports, so a running `make dev`
is left alone), submits the old /predict example over HTTP, replays it with the same
Idempotency-Key, shows a rejected request, drops a .jsonl prompt file into the prompts
bucket and reads its receipt, follows the jobs while the worker renders them, and
downloads the videos into ./out/. Exits non-zero if any of that did not happen.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path

import requests
from google.api_core import exceptions as gexc

from gpu_worker.encoding import probe

from .. import schemas
from ..jobs import State
from .stack import REPO_ROOT, LocalStack, StackError

OLD_EXAMPLE = schemas.old_predict_example()
PROMPT_FILE = [
    {"prompt": "A red fox trotting through fresh snow, morning light"},
    {"prompt": "Waves rolling onto a black sand beach at dusk", "seed": 7},
    {"prompt": "A paper boat in a rain gutter", "height": 100},  # not divisible by 32
    {"prompt": "Neon signs reflected in a puddle", "num_frames": 17, "fps": 12},
]


OUT = Path("out")


class DemoFailed(RuntimeError):
    pass


def say(line: str = "") -> None:
    print(line, flush=True)


def check(condition: bool, message: str) -> None:
    if not condition:
        raise DemoFailed(message)


def wait_for_receipt(stack: LocalStack, name: str, timeout: float = 60) -> dict:
    bucket = stack.storage_client().bucket(stack.settings.prompts)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            return json.loads(bucket.blob(name).download_as_bytes())
        except gexc.NotFound:
            time.sleep(0.2)
    raise DemoFailed(f"no receipt gs://{bucket.name}/{name} after {timeout:.0f}s")


def run(stack: LocalStack) -> None:
    api = requests.Session()
    api.headers["X-API-Key"] = stack.api_key
    base = stack.api_url

    say("\n1. The old /predict body, sent to POST /v1/jobs with an Idempotency-Key")
    say(f"   {json.dumps(OLD_EXAMPLE)}")
    response = api.post(f"{base}/v1/jobs", json=OLD_EXAMPLE, headers={"Idempotency-Key": "demo-1"})
    check(response.status_code == 202, f"expected 202, got {response.status_code}")
    job = response.json()
    say(f"   202 Accepted  Location: {response.headers['Location']}  state: {job['state']}")

    replay = api.post(f"{base}/v1/jobs", json=OLD_EXAMPLE, headers={"Idempotency-Key": "demo-1"})
    check(replay.json()["job_id"] == job["job_id"], "the replay created a second job")
    say(f"   replayed: same job {job['job_id']} (Idempotent-Replayed: true)")

    say("\n2. A request with mistakes: every one is named by its JSON path")
    bad = api.post(f"{base}/v1/jobs", json={"prompt": "", "height": 700, "num_frames": 120})
    check(bad.status_code == 422, f"expected 422, got {bad.status_code}")
    for detail in bad.json()["error"]["details"]:
        say(f"   {bad.status_code}  {detail['path']:<14} {detail['message']}")

    say("\n3. A .jsonl prompt file dropped into the prompts bucket (line 3 is wrong)")
    name = f"incoming/demo-{int(time.time())}.jsonl"
    bucket = stack.storage_client().bucket(stack.settings.prompts)
    bucket.blob(name).upload_from_string("\n".join(json.dumps(line) for line in PROMPT_FILE))
    say(f"   uploaded gs://{bucket.name}/{name}")
    receipt = wait_for_receipt(stack, "receipts/" + name.removeprefix("incoming/") + ".json")
    for entry in receipt["accepted"]:
        say(f"   line {entry['line']}: job {entry['job_id']}")
    for entry in receipt["rejected"]:
        for error in entry["errors"]:
            say(f"   line {entry['line']}: rejected, {error['path']} {error['message']}")
    check(len(receipt["accepted"]) == 3, "expected three accepted lines")
    check([e["line"] for e in receipt["rejected"]] == [3], "expected line 3 rejected")

    expected = {job["job_id"], *(e["job_id"] for e in receipt["accepted"])}
    say(f"\n4. The worker renders them (tiny-random on the CPU); {len(expected)} jobs")
    jobs = wait_until_settled(api, base, expected)

    say("\n5. Videos downloaded through their signed URLs into ./out/")
    OUT.mkdir(exist_ok=True)
    say(
        f"   {'job':<28} {'source':<7} {'state':<10} {'frames':>6} {'size':>10} "
        f"{'render s':>8} {'encode s':>8}  file"
    )
    for item in jobs:
        request, timings = item["request"], item.get("timings") or {}
        source = "http" if item["source"] == "http" else f"file:{item['source_line']}"
        path = OUT / f"{item['job_id']}.mp4"
        info = None
        if item["state"] == "succeeded":
            path.write_bytes(requests.get(item["video_url"], timeout=60).content)
            info = probe(path)
            check(info.num_frames == request["num_frames"], f"{path}: wrong frame count")
            check(
                (info.width, info.height) == (request["width"], request["height"]),
                f"{path}: wrong size",
            )
        size = f"{request['width']}x{request['height']}"
        say(
            f"   {item['job_id']:<28} {source:<7} {item['state']:<10} "
            f"{(info.num_frames if info else request['num_frames']):>6} {size:>10} "
            f"{timings.get('generate_seconds', 0):>8.1f} {timings.get('encode_seconds', 0):>8.1f}"
            f"  {path if info else '-'}"
        )
    failed = [item["job_id"] for item in jobs if item["state"] != "succeeded"]
    check(not failed, f"jobs did not succeed: {failed}")
    say(
        "\n   tiny-random is the real LTX-Video pipeline at miniature size with random weights:\n"
        "   its videos are noise. On a CUDA machine, LTXV_DEFAULT_MODEL=ltx-video-2b-distilled\n"
        "   renders real video (weights from the hub on first use); see README.md."
    )


def wait_until_settled(api: requests.Session, base: str, job_ids: set[str]) -> list[dict]:
    deadline = time.monotonic() + 600
    last = ""
    while time.monotonic() < deadline:
        jobs = [api.get(f"{base}/v1/jobs/{job_id}").json() for job_id in sorted(job_ids)]
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
        time.sleep(1)
    raise DemoFailed("jobs did not settle within 10 minutes")


def main() -> int:
    state_dir = REPO_ROOT / ".local" / "demo"
    shutil.rmtree(state_dir, ignore_errors=True)  # a fresh stack each time
    stack = LocalStack.with_free_ports(Path(state_dir))
    say("Starting the local stack (emulators, functions, event bridge, worker) ...")
    try:
        stack.up()
        run(stack)
    except (DemoFailed, StackError) as exc:
        say(f"\nDEMO FAILED: {exc}")
        say(f"logs: {stack.state_dir / 'logs'}")
        return 1
    finally:
        say("\nStopping what the demo started ...")
        stack.down()
    say("\nDemo finished: every job succeeded; the videos are in ./out/.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
