"""`python -m gpu_worker`: one worker process per GPU (systemd runs one per GPU on a VM)."""

from __future__ import annotations

import os
import signal
import socket
import sys
import uuid
from pathlib import Path

import google.cloud.pubsub_v1 as pubsub_v1

from gpu_worker.lifecycle import JobLifecycle
from ltxv.core.compose import job_store, settings_for, storage_client
from ltxv.core.profiles import all_profiles
from ltxv.core.settings import Settings

from . import health
from .compile_cache import CompileCache
from .generation import Renderer
from .messages import JobMessages
from .worker import Worker


def worker_id() -> str:
    """Unique per process: a restarted worker on the same VM is another lease owner."""
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


def compose(settings: Settings, status: health.Health | None = None) -> Worker:
    """The worker process's composition root (the benchmark builds its worker here too).

    Its clients are built at once: the model's load dwarfs them, and every job uses all."""
    storage = storage_client(settings)
    compile_cache = None
    if settings.compile_cache_uri:
        compile_cache = CompileCache(storage, settings.compile_cache_uri, settings.worker_model)
    return Worker(
        settings,
        lifecycle=JobLifecycle(
            job_store(settings),
            settings.worker_id or worker_id(),
            settings.lease_seconds,
            model=settings.worker_model,
        ),
        storage_client=storage,
        messages=JobMessages(
            pubsub_v1.SubscriberClient(),
            settings.lane_subscription_paths,
            settings.ack_extension_seconds,
            pool=(settings.worker_model, settings.default_model),
            aging_seconds=settings.lane_aging_seconds,
        ),
        renderer=Renderer(
            all_profiles()[settings.worker_model],
            model_dir=Path(settings.model_dir) if settings.model_dir else None,
            compile_cache=compile_cache,
        ),
        health=status,
    )


def main() -> int:
    settings = settings_for("gpu_worker")
    # Up before the model loads, so that a probe hears "loading" (503), not silence.
    status = health.Health(
        model=settings.worker_model,
        stall_seconds=settings.health_stall_seconds,
        busy_seconds=settings.health_busy_seconds,
        failing_seconds=settings.health_failing_seconds,
    )
    if settings.worker_health_port:
        health.serve(status, settings.health_host, settings.worker_health_port)
    worker = compose(settings, status)
    signal.signal(signal.SIGTERM, lambda *_: worker.request_stop())
    signal.signal(signal.SIGINT, lambda *_: worker.request_stop())
    return worker.run()


if __name__ == "__main__":
    sys.exit(main())
