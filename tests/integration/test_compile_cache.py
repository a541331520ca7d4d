"""Compiled blocks shared between VMs through Cloud Storage (fake-gcs-server): the first
worker to compile publishes Inductor's cache; a worker on a new VM (an empty local cache
directory) restores it and warms up without compiling again.

Each worker is a fresh process with compile on (tiny-random, Inductor on the CPU)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid

import pytest
from google.cloud import storage

from gpu_worker import tiny_random

pytestmark = [pytest.mark.emulators, pytest.mark.timeout(600)]

WORKER = """
import dataclasses, json, logging, sys
from google.cloud import storage
from gpu_worker.compile_cache import CompileCache
from gpu_worker.generation import Renderer
from ltxv.core.profiles import all_profiles

events = []
class Events(logging.Handler):
    def emit(self, record):
        events.append(record.getMessage())
logging.getLogger("gpu_worker").addHandler(Events())
logging.getLogger("gpu_worker").setLevel(logging.INFO)

profile = all_profiles()["tiny-random"]
profile = dataclasses.replace(profile, fit={**profile.fit, "compile": True})
cache = CompileCache(storage.Client(), sys.argv[2], profile.name)
renderer = Renderer(profile, model_dir=sys.argv[1], compile_cache=cache)
seconds = renderer.load()
print(json.dumps({"load_seconds": seconds, "events": events, "fit": renderer.applied}))
"""


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return tiny_random.ensure(tmp_path_factory.getbasetemp() / "tiny-random")


def start_worker(model_dir, uri, cache_dir) -> dict:
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(cache_dir)}
    run = subprocess.run(
        [sys.executable, "-c", WORKER, str(model_dir), uri],
        env=env, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(run.stdout.strip().splitlines()[-1])


def test_a_new_vm_warms_up_from_the_first_workers_compile(emulators, model_dir, tmp_path):
    bucket = emulators.settings.model_cache
    prefix = f"compile-cache-{uuid.uuid4().hex[:8]}"
    uri = f"gs://{bucket}/{prefix}"

    first = start_worker(model_dir, uri, tmp_path / "vm-1")
    assert first["fit"]["compile"]
    assert "no shared compile cache yet" in first["events"]
    assert "compile cache published" in first["events"]
    (archive,) = storage.Client().list_blobs(bucket, prefix=prefix)
    assert archive.name.startswith(f"{prefix}/tiny-random/") and archive.size > 0

    # A new VM: nothing in its local cache directory.
    second = start_worker(model_dir, uri, tmp_path / "vm-2")
    assert "compile cache restored" in second["events"]
    assert "compile cache published" not in second["events"]
    assert second["load_seconds"] < first["load_seconds"] / 2, (first, second)

    # A restart on that VM finds its cache local: no download, and still no compile.
    third = start_worker(model_dir, uri, tmp_path / "vm-2")
    assert not any("compile cache" in event for event in third["events"])
    assert third["load_seconds"] < first["load_seconds"] / 2, (first, third)
    (still,) = storage.Client().list_blobs(bucket, prefix=prefix)
    assert still.generation == archive.generation  # create-only: never replaced


def test_workers_restoring_at_once_leave_whole_files_and_no_staging(tmp_path):
    """The workers of a multi-GPU VM unpack the same archive into one cache at once: each
    file lands by an atomic rename, whole, and nothing of the staging is left."""
    import io
    import tarfile
    import threading

    from gpu_worker.compile_cache import _unpack

    payload = {f"fxgraph/{n:02d}/entry": bytes([n]) * 200_000 for n in range(20)}
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w:gz") as tar:
        for name, data in payload.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    cache = tmp_path / "cache"
    cache.mkdir()
    errors = []

    def restore():
        try:
            _unpack(io.BytesIO(raw.getvalue()), cache)
        except Exception as exc:
            errors.append(exc)

    workers = [threading.Thread(target=restore) for _ in range(4)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert not errors
    assert {str(p.relative_to(cache)) for p in cache.rglob("*") if p.is_file()} == set(payload)
    assert all((cache / name).read_bytes() == data for name, data in payload.items())
    assert not [p for p in cache.iterdir() if p.name.startswith(".restore-")]
