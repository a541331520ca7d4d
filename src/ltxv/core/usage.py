"""What a job cost: the GPU seconds its attempts took and their estimated price.

GPU seconds are what a worker held its GPU for a job: the model load (only the first job
a worker process renders pays it), the denoising steps and the encode, summed over the
job's attempts. The price is `LTXV_GPU_HOUR_USD` of the worker that ran the attempt, an
estimate at a list price, not a bill.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, TypedDict


class Usage(TypedDict):
    gpu_seconds: float
    cost_usd: float


def add_attempt(before: Usage | None, gpu_seconds: float, gpu_hour_usd: float) -> Usage:
    """`before` (a job's usage so far, None if none) plus one attempt's GPU seconds,
    priced by the GPU hour of the worker that ran it."""
    seconds = max(0.0, gpu_seconds)
    spent, cost = (before["gpu_seconds"], before["cost_usd"]) if before else (0.0, 0.0)
    return {
        "gpu_seconds": round(spent + seconds, 3),
        "cost_usd": round(cost + seconds / 3600 * gpu_hour_usd, 6),
    }


def page_total(jobs: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """The usage of the jobs of one page summed: GPU seconds, cost and how many jobs had
    any (a job that never reached a GPU has none)."""
    used = [job["usage"] for job in jobs if job.get("usage")]
    return {
        "gpu_seconds": round(sum(u.get("gpu_seconds") or 0.0 for u in used), 3),
        "cost_usd": round(sum(u.get("cost_usd") or 0.0 for u in used), 6),
        "jobs": len(used),
    }
