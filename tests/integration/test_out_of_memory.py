"""Out of memory in the worker process (tiny-random on the CPU, against the emulators):
retried once in a fresh process, then the job fails with `out_of_memory`; never retried
until the dead-letter limit.

The one thing faked is the GPU running out of memory: a `sitecustomize` on the worker's
PYTHONPATH makes the pipeline call raise torch.OutOfMemoryError, as the CUDA allocator
does, for the prompts the test names. Everything else is the real worker process."""

from __future__ import annotations

import os

import pytest

from ..bodies import SMALL
from . import test_worker
from .test_worker import submit, wait_state

# The worker process fixtures of test_worker.py, shared as they are.
tiny_model_dir = test_worker.tiny_model_dir
start_worker = test_worker.start_worker
topic_names = test_worker.topic_names

pytestmark = pytest.mark.emulators

NEVER_FITS = {**SMALL, "prompt": "a request that never fits"}
FITS_WHEN_FRESH = {**SMALL, "prompt": "a request that fits a fresh process"}

SITECUSTOMIZE = """
import torch
import gpu_worker.generation as generation

_render = generation.Renderer._render
_renders = []


def _out_of_memory(self, params, *args):
    _renders.append(params["prompt"])
    prompt = params["prompt"]
    if prompt == "a request that never fits" or (
        prompt == "a request that fits a fresh process" and len(_renders) > 1
    ):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
    return _render(self, params, *args)


generation.Renderer._render = _out_of_memory
"""


@pytest.fixture
def out_of_memory_path(tmp_path) -> str:
    folder = tmp_path / "oom"
    folder.mkdir()
    (folder / "sitecustomize.py").write_text(SITECUSTOMIZE)
    return os.pathsep.join(p for p in (str(folder), os.environ.get("PYTHONPATH")) if p)


def test_a_request_that_does_not_fit_a_fresh_process_fails_at_once(
    client, auth, service, start_worker, out_of_memory_path
):
    worker = start_worker(PYTHONPATH=out_of_memory_path)
    job_id = submit(client, auth, NEVER_FITS)  # the process's first render
    job = wait_state(service, job_id, {"failed"}, timeout=60)
    assert job["attempts"] == 1
    assert job["error"]["code"] == "out_of_memory" and job["error"]["retryable"] is False
    assert "does not fit" in job["error"]["message"]
    assert worker.proc.poll() is None  # nothing wrong with this process: it goes on


def test_out_of_memory_after_other_renders_is_retried_in_a_fresh_process(
    client, auth, service, start_worker, out_of_memory_path
):
    first = start_worker(PYTHONPATH=out_of_memory_path)
    warm = submit(client, auth, SMALL)
    wait_state(service, warm, {"succeeded"})
    # Out of memory in a process that has rendered before: requeued, and the worker exits
    # so that a fresh process (systemd's restart) gets the device's memory whole.
    job_id = submit(client, auth, FITS_WHEN_FRESH)
    queued = wait_state(service, job_id, {"queued"}, timeout=60, attempts=1)
    assert queued["error"]["code"] == "out_of_memory" and queued["error"]["retryable"]
    assert first.proc.wait(30) == 75  # EX_TEMPFAIL: restart me
    second = start_worker(PYTHONPATH=out_of_memory_path)
    job = wait_state(service, job_id, {"succeeded"}, timeout=60)
    assert job["attempts"] == 2
    # Out of memory again in a fresh process fails the job: there it never fits.
    second.stop()
    never = submit(client, auth, NEVER_FITS)
    third = start_worker(PYTHONPATH=out_of_memory_path)
    failed = wait_state(service, never, {"failed"}, timeout=60)
    assert failed["error"]["code"] == "out_of_memory" and failed["attempts"] == 1
    assert third.proc.poll() is None
