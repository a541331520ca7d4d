"""Submit latency and throughput on the local stack, beside the floor measured in the same run.

The floor is what any intake must pay: one Firestore create plus one Pub/Sub publish,
issued with the same client libraries against the same emulators. The ratio says how
much the API adds on top (HTTP, auth, validation, the `published` mark, JSON).

    .venv/bin/python bench/submit.py [--requests 300] [--concurrency 8]

It always starts a private stack on free ports (and stops it), so the jobs it submits
never reach the worker of a `make dev` stack.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import requests
from google.cloud import firestore

from ltxv import compose_submit, schemas
from ltxv.jobs import new_job, new_job_id
from ltxv.local.stack import LocalStack
from ltxv.settings import Settings
from ltxv.validation import request_hash

BODY = schemas.old_predict_example()


def run(operation: Callable[[int], None], count: int, concurrency: int) -> dict[str, float]:
    latencies: list[float] = []

    def timed(i: int) -> None:
        started = time.perf_counter()
        operation(i)
        latencies.append(time.perf_counter() - started)

    for i in range(min(10, count)):  # warm connections and caches; not counted
        operation(-i - 1)
    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(timed, range(count)))
    elapsed = time.perf_counter() - started
    latencies.sort()
    return {
        "p50_ms": statistics.median(latencies) * 1000,
        "p99_ms": latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000,
        "per_s": count / elapsed,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args()

    private_dir = tempfile.TemporaryDirectory(prefix="ltxv-bench-")
    stack = LocalStack.with_free_ports(private_dir.name, components=["api"], echo=None)
    print("starting a private local stack ...", flush=True)
    stack.up()
    try:
        os.environ.update(stack.service_env())
        settings = Settings.from_env()
        session = requests.Session()
        session.mount("http://", requests.adapters.HTTPAdapter(pool_maxsize=args.concurrency))
        headers = {"X-API-Key": stack.api_key}

        def submit(_i: int) -> None:
            response = session.post(f"{stack.api_url}/v1/jobs", json=BODY, headers=headers)
            if response.status_code != 202:
                raise RuntimeError(f"submit answered {response.status_code}: {response.text}")

        # The intake's own store and dispatcher, as its composition root builds them; the
        # floor's jobs go to a collection of their own.
        floor_parts = compose_submit.parts(
            dataclasses.replace(settings, jobs_collection="bench-floor")
        )
        client, collection = floor_parts.firestore, floor_parts.store.collection
        dispatcher = floor_parts.dispatcher
        request = {**BODY, "model": "tiny-random"}
        digest = request_hash(request)

        def floor(_i: int) -> None:
            job = new_job(
                job_id=new_job_id(), request=request, request_hash=digest, api_key_id="bench"
            )
            collection.document(job["job_id"]).create(job)
            dispatcher.publish([job])

        def floor_and_mark(_i: int) -> None:
            """The floor plus the `published` mark intake writes after Pub/Sub has the job."""
            job = new_job(
                job_id=new_job_id(), request=request, request_hash=digest, api_key_id="bench"
            )
            ref = collection.document(job["job_id"])
            ref.create(job)
            dispatcher.publish([job])
            ref.update({"published": True, "published_at": firestore.SERVER_TIMESTAMP})

        def floor_mark_and_count(_i: int) -> None:
            """Plus the per-key in-flight count intake takes before it creates a job."""
            floor_parts.store.count_in_flight("bench", up_to=1000)
            floor_and_mark(_i)

        results = {
            "floor (Firestore create + Pub/Sub publish)": run(
                floor, args.requests, args.concurrency
            ),
            "floor + published mark (one more write)": run(
                floor_and_mark, args.requests, args.concurrency
            ),
            "floor + mark + in-flight count (one query)": run(
                floor_mark_and_count, args.requests, args.concurrency
            ),
            "POST /v1/jobs over HTTP": run(submit, args.requests, args.concurrency),
        }
        print(
            f"\n{args.requests} requests, concurrency {args.concurrency}, "
            f"{os.cpu_count()} CPUs, emulators on 127.0.0.1\n"
        )
        print(f"{'':45} {'p50 ms':>8} {'p99 ms':>8} {'req/s':>8}")
        for name, numbers in results.items():
            print(
                f"{name:45} {numbers['p50_ms']:8.1f} {numbers['p99_ms']:8.1f} "
                f"{numbers['per_s']:8.1f}"
            )
        base, *_, api = results.values()
        print(
            f"\nAPI / floor: p50 x{api['p50_ms'] / base['p50_ms']:.2f}, "
            f"p99 x{api['p99_ms'] / base['p99_ms']:.2f}, "
            f"throughput x{api['per_s'] / base['per_s']:.2f}"
        )
        client.recursive_delete(collection)
    finally:
        stack.down()
        private_dir.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
