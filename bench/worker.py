"""What the worker spends outside the model, and how busy it keeps the model with a backlog.

    .venv/bin/python bench/worker.py [--jobs 12] [--l4-render-seconds 40]

A private local stack (emulators only) and an in-process worker on `tiny-random`: a
backlog of jobs is queued first, then drained. Per job it measures, in ms, the claim,
the lease/progress writes, encoding, uploads and the settling writes (Firestore state and
result.json); the model's own time is the render. It prints these beside the render time
and as a share of an L4-sized render (`--l4-render-seconds`: an assumption, since no GPU
runs here; the default is our estimate for LTX-Video 2B distilled, 121 frames at
704x1216, 8 steps, on one L4 — replace it with a measured number when you have one).
The busy fraction is model time / wall time while the backlog drains: with encoding and
uploads overlapping the next render it approaches 1.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Callable

from gpu_worker import worker as worker_module
from gpu_worker.__main__ import compose as compose_worker
from ltxv.core.settings import Settings
from ltxv.intake import compose as compose_submit
from ltxv.local.components import EMULATORS
from ltxv.local.stack import LocalStack

REQUEST = {
    "prompt": "a red fox in snow",
    "height": 256,
    "width": 384,
    "num_frames": 25,
    "num_inference_steps": 6,
    "fps": 24,
}


class Clock:
    """Accumulates seconds per named phase across threads."""

    def __init__(self) -> None:
        self.seconds: dict[str, list[float]] = defaultdict(list)
        self.lock = threading.Lock()

    def wrap(self, name: str, function: Callable) -> Callable:
        def timed(*args, **kwargs):
            started = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                with self.lock:
                    self.seconds[name].append(time.perf_counter() - started)

        return timed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=12)
    parser.add_argument("--l4-render-seconds", type=float, default=40.0)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="ltxv-bench-") as state:
        stack = LocalStack.with_free_ports(state, components=list(EMULATORS), echo=None)
        print("starting the emulators ...", flush=True)
        stack.up()
        try:
            os.environ.update(stack.service_env())
            # The worker as `python -m gpu_worker` builds it, as one lease owner, its model
            # in the private state folder.
            settings = dataclasses.replace(
                Settings.from_env(), worker_id="bench-worker", model_dir=f"{state}/model"
            )
            intake = compose_submit.parts(settings).intake
            worker = compose_worker(settings)
            clock = Clock()

            lifecycle, renderer, store = worker.lifecycle, worker.renderer, worker.lifecycle.store
            for name in ("claim", "renew", "succeed"):
                setattr(lifecycle, name, clock.wrap(name, getattr(lifecycle, name)))
            renderer.render = clock.wrap("render", renderer.render)
            worker_module.encode_mp4 = clock.wrap("encode", worker_module.encode_mp4)
            worker_module.write_poster = clock.wrap("poster", worker_module.write_poster)
            worker_module.write_result_once = clock.wrap(
                "result.json", worker_module.write_result_once
            )
            worker.outputs.upload = clock.wrap("upload", worker.outputs.upload)

            job_ids = [
                intake.submit_http(REQUEST, api_key_id="bench").job["job_id"]
                for _ in range(args.jobs)
            ]
            renderer.load()
            thread = threading.Thread(target=worker.run, daemon=True)
            started = time.perf_counter()
            thread.start()
            while any(store.get(j)["state"] != "succeeded" for j in job_ids):
                time.sleep(0.05)
            wall = time.perf_counter() - started
            worker.request_stop()
            thread.join(timeout=60)
        finally:
            stack.down()

    render = statistics.mean(clock.seconds["render"])
    phases = ["claim", "renew", "encode", "poster", "upload", "succeed", "result.json"]
    print(
        f"\n{args.jobs} jobs of {REQUEST['num_frames']} frames at "
        f"{REQUEST['width']}x{REQUEST['height']}, {REQUEST['num_inference_steps']} steps, "
        f"tiny-random on {os.cpu_count()} CPUs, emulators on 127.0.0.1\n"
    )
    print(f"{'per job':24} {'ms':>9} {'share of L4 render':>20}")
    outside = 0.0
    for phase in phases:
        total = sum(clock.seconds[phase]) / args.jobs
        outside += total
        share = total / args.l4_render_seconds
        print(f"{phase:24} {total * 1000:9.1f} {share:19.2%}")
    print(
        f"{'outside the model':24} {outside * 1000:9.1f} {outside / args.l4_render_seconds:19.2%}"
    )
    print(f"{'render (model)':24} {render * 1000:9.1f}")
    busy = sum(clock.seconds["render"]) / wall
    print(
        f"\nwall {wall:.2f}s for {args.jobs} jobs; model busy {busy:.1%} of the time "
        f"(baseline without overlap: {render / (render + outside):.1%})"
    )
    print(f"L4 render assumed: {args.l4_render_seconds:.0f}s per video")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
