"""Submit latency and throughput on the local stack, beside the floor measured in the same run.

The floor is what any intake must pay: one Firestore create plus one Pub/Sub publish,
issued with the same client libraries against the same emulators. The ratio says how
much the API adds on top (HTTP, auth, validation, the in-flight count, JSON).

    .venv/bin/python bench/submit.py [--requests 300] [--concurrency 8] [--rounds 5] [--warmup 300]

The arms take turns, a slice of each arm's requests per round, so that whatever else the
machine does at the time weighs on every arm alike; p50 and p99 are over all of an arm's
requests, and "x floor" is also given per round (median and range).

Each arm first runs `--warmup` calls that are not counted. The emulators are JVMs: each
RPC's code path is compiled as it runs, and a few hundred calls of each are needed before
its time settles (at concurrency 1, the floor's p50 was 3.8-4.7 ms after 10 calls, 3.2-3.3
after 300: docs/benchmarks.md).
A short warm-up measures the compiler, and each arm's share of it differs.

It always starts a private stack on free ports (and stops it), so the jobs it submits
never reach the worker of a `make dev` stack. No worker drains them either, so the stack's
per-key limit of jobs in flight is raised: with the default 1000, the 600-odd jobs the API
arms leave queued would put the key past half its limit, where every submit counts its
key's jobs (`ltxv.intake.in_flight`), and the later rounds would measure that path instead
of a key's usual one. The third arm measures what such a count costs.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import glob
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import requests
from google.cloud import firestore

from ltxv.core import schemas
from ltxv.core.jobs import new_job, new_job_id
from ltxv.core.settings import Settings
from ltxv.intake import compose as compose_submit
from ltxv.intake.validation import request_hash
from ltxv.local.stack import LocalStack

BODY = schemas.old_predict_example()


def run(operation: Callable[[int], None], count: int, concurrency: int) -> list[float]:
    """The latencies of `count` calls of `operation`, `concurrency` at a time."""
    latencies: list[float] = []

    def timed(i: int) -> None:
        started = time.perf_counter()
        operation(i)
        latencies.append(time.perf_counter() - started)

    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(timed, range(count)))
    return latencies


# Which process of the stack a command line is, for the CPU table.
ROLES = (
    ("cloud-firestore-emulator", "Firestore emulator"),
    ("firestore", "Firestore emulator"),
    ("pubsub", "Pub/Sub emulator"),
    ("functions-framework", "functions (api)"),
    ("gcs", "fake-gcs-server"),
)


def process_cpu() -> dict[str, float]:
    """CPU seconds used so far by this process and each of the stack's processes it
    started (read from /proc), by role: where a request's work is done on this machine."""
    ticks = os.sysconf("SC_CLK_TCK")
    parents, used, names = {}, {}, {}
    for stat in glob.glob("/proc/[0-9]*/stat"):
        try:
            with open(stat) as f:
                pid_part, rest = f.read().rsplit(")", 1)
            with open(stat.replace("stat", "cmdline"), "rb") as f:
                cmdline = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        pid, fields = int(pid_part.split()[0]), rest.split()
        parents[pid] = int(fields[1])
        used[pid] = (int(fields[11]) + int(fields[12])) / ticks
        names[pid] = cmdline
    me, totals = os.getpid(), {}
    for pid in used:
        ancestor = pid
        while ancestor not in (me, 0, 1) and ancestor in parents:
            ancestor = parents[ancestor]
        if ancestor != me:
            continue
        role = "bench client" if pid == me else "other"
        for marker, name in ROLES:
            if pid != me and marker in names[pid]:
                role = name
                break
        totals[role] = totals.get(role, 0.0) + used[pid]
    return totals


def percentile(latencies: list[float], share: float) -> float:
    ordered = sorted(latencies)
    return ordered[min(len(ordered) - 1, int(len(ordered) * share))] * 1000


def interleaved(
    arms: dict[str, Callable[[int], None]], count: int, concurrency: int, rounds: int, warmup: int
) -> tuple[dict[str, list[float]], list[dict[str, float]]]:
    """Every arm's latencies, and each round's p50 per arm, the arms rotating each round."""
    for operation in arms.values():  # connections, caches, the emulators' JIT; not counted
        run(lambda i, op=operation: op(-i - 1), warmup, concurrency)
    latencies: dict[str, list[float]] = {name: [] for name in arms}
    per_round: list[dict[str, float]] = []
    names = list(arms)
    for r in range(rounds):
        medians = {}
        for name in names[r % len(names) :] + names[: r % len(names)]:
            before = process_cpu()
            measured = run(arms[name], max(1, count // rounds), concurrency)
            after = process_cpu()
            for role, seconds in after.items():
                CPU[name][role] = CPU[name].get(role, 0.0) + seconds - before.get(role, 0.0)
            latencies[name] += measured
            medians[name] = statistics.median(measured) * 1000
        per_round.append(medians)
    return latencies, per_round


# Arm -> role -> CPU seconds its requests used, filled by `interleaved`.
CPU: collections.defaultdict[str, dict[str, float]] = collections.defaultdict(dict)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--warmup", type=int, default=300, help="uncounted calls per arm before measuring"
    )
    args = parser.parse_args()

    os.environ["LTXV_MAX_JOBS_IN_FLIGHT"] = str(1_000_000)  # the private stack's (above)
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

        def submit(_i: int, **extra: str) -> None:
            response = session.post(
                f"{stack.api_url}/v1/jobs", json=BODY, headers={**headers, **extra}
            )
            if response.status_code != 202:
                raise RuntimeError(f"submit answered {response.status_code}: {response.text}")

        def submit_keyed(_i: int) -> None:
            """With an Idempotency-Key (a fresh one), whose job is created before it is
            published: the order that lets a replay find it."""
            submit(_i, **{"Idempotency-Key": new_job_id()})

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

        def floor_side_by_side(_i: int) -> None:
            """The floor's two calls at once, as intake makes them for a fresh job: what
            running them side by side wins on this machine."""
            job = new_job(
                job_id=new_job_id(), request=request, request_hash=digest, api_key_id="bench"
            )
            started = dispatcher.start([job])
            collection.document(job["job_id"]).create(job)
            dispatcher.wait(started)

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

        floor_name, api_name = (
            "floor (Firestore create + Pub/Sub publish)",
            "POST /v1/jobs over HTTP",
        )

        def http_hop(_i: int) -> None:
            """What any HTTP intake adds before doing anything: a request the function
            answers at once (client, gunicorn, Flask, functions-framework)."""
            response = session.get(f"{stack.api_url}/healthz")
            if response.status_code != 200:
                raise RuntimeError(f"healthz answered {response.status_code}")

        arms = {
            floor_name: floor,
            "floor, create and publish side by side": floor_side_by_side,
            "floor + published mark (one more write)": floor_and_mark,
            "floor + mark + in-flight count (one query)": floor_mark_and_count,
            api_name: submit,
            "POST /v1/jobs with an Idempotency-Key": submit_keyed,
            "the HTTP hop alone (GET /healthz)": http_hop,
        }
        latencies, per_round = interleaved(
            arms, args.requests, args.concurrency, args.rounds, args.warmup
        )
        print(
            f"\n{args.requests} requests per arm in {args.rounds} interleaved rounds after "
            f"{args.warmup} uncounted, concurrency {args.concurrency}, {os.cpu_count()} CPUs, "
            "emulators on 127.0.0.1\n"
        )
        print(f"{'':45} {'p50 ms':>8} {'p99 ms':>8} {'x floor p50':>12} {'x floor p99':>12}")
        base = latencies[floor_name]
        for name, measured in latencies.items():
            p50, p99 = percentile(measured, 0.5), percentile(measured, 0.99)
            print(
                f"{name:45} {p50:8.1f} {p99:8.1f} {p50 / percentile(base, 0.5):12.2f} "
                f"{p99 / percentile(base, 0.99):12.2f}"
            )
        roles = sorted({role for used in CPU.values() for role in used})
        print("\nCPU ms per request, by process (2 cores: what saturates them at concurrency):")
        print(f"{'':45} " + " ".join(f"{role[:16]:>16}" for role in roles) + f" {'total':>8}")
        for name, used in CPU.items():
            each = [used.get(role, 0.0) * 1000 / len(latencies[name]) for role in roles]
            print(f"{name:45} " + " ".join(f"{v:16.2f}" for v in each) + f" {sum(each):8.2f}")
        ratios = sorted(round_[api_name] / round_[floor_name] for round_ in per_round)
        print(
            f"\nAPI / floor p50 per round: median x{statistics.median(ratios):.2f} "
            f"(x{ratios[0]:.2f} .. x{ratios[-1]:.2f})"
        )
        client.recursive_delete(collection)
    finally:
        stack.down()
        private_dir.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
