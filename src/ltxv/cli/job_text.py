"""How the CLI writes a job for a person: `ltxv status`'s rows, `ltxv list`'s table and the
one line a waited-for job ends with."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from ltxv.core.jobs import State
from ltxv.core.usage import page_total


def _seconds_between(start: str | None, end: str | None) -> float | None:
    if not (start and end):
        return None
    parse = datetime.fromisoformat
    return (parse(end.replace("Z", "+00:00")) - parse(start.replace("Z", "+00:00"))).total_seconds()


def _eta(at: str | None) -> str:
    """An estimated time with how far off it is, or "unknown" (no basis for one)."""
    seconds = _seconds_between(datetime.now(UTC).isoformat(), at)
    if seconds is None:
        return "unknown"
    return f"{at} (in {round(seconds)} s)" if seconds >= 0 else f"{at} ({round(-seconds)} s ago)"


def describe_outcome(job: dict[str, Any]) -> str:
    seconds = _seconds_between(job.get("created_at"), job.get("updated_at"))
    took = f" {seconds:.1f}s after it was submitted" if seconds is not None else ""
    if job["state"] == State.SUCCEEDED:
        return f"job {job['job_id']} succeeded{took}"
    error = job.get("error") or {}
    reason = f": {error.get('code')}: {error.get('message')}" if error else ""
    return f"job {job['job_id']} {job['state']}{reason}"


def describe_job(job: dict[str, Any]) -> list[tuple[str, str]]:
    request, progress = job["request"], job.get("progress")
    rows = [("job", job["job_id"]), ("state", job["state"])]
    if progress:
        rows.append(("progress", f"step {progress['step']} of {progress['total']}"))
    queue = job.get("queue")
    if queue:
        queued = job["state"] == State.QUEUED
        place = f"{queue['position']} ahead in its lane" if queued else "running"
        place = "place unknown" if queue["position"] is None else place
        start, finish = (_eta(queue[f"estimated_{w}_at"]) for w in ("start", "finish"))
        rows.append(("queue", f"{place}; start {start}; finish {finish}"))
        rows.append(("estimate", queue["basis"]))
    rows.append(("prompt", request.get("prompt", "")))
    rows.append(
        (
            "video",
            f"{request.get('width')}x{request.get('height')}, {request.get('num_frames')} frames "
            f"at {request.get('fps')} fps, {request.get('num_inference_steps')} steps, "
            f"seed {request.get('seed')}, model {job.get('model')}",
        )
    )
    if job.get("parent_job_id"):
        rows.append(("retry of", job["parent_job_id"]))
    source = job.get("source")
    if source and source != "http":
        rows.append(("source", f"{source} line {job.get('source_line')}"))
    rows.append(("created", job.get("created_at", "")))
    timings = job.get("timings") or {}
    if timings:
        rows.append(
            (
                "timings",
                "  ".join(f"{k.removesuffix('_seconds')} {v:.1f}s" for k, v in timings.items()),
            )
        )
    if job.get("error"):
        rows.append(("error", f"{job['error']['code']}: {job['error']['message']}"))
    if job.get("cancel_requested") and job["state"] == State.RUNNING:
        rows.append(("cancel", "requested; the worker stops at the next denoising step"))
    for name in ("video", "extended", "poster", "result"):
        uri = (job.get("outputs") or {}).get(name)
        if uri:
            rows.append((name if name != "video" else "output", uri))
    if job.get("video_url"):
        rows.append(("download", f"ltxv download {job['job_id']} --out video.mp4"))
    if job.get("extended_url"):
        rows.append(("whole video", f"ltxv download {job['job_id']} --extended --out whole.mp4"))
    webhook = job.get("webhook")
    if webhook:
        attempts = len(webhook.get("attempts") or [])
        rows.append(("webhook", f"{webhook['state']} ({attempts} attempt(s)) {webhook['url']}"))
    return rows


def list_table(jobs: list[dict[str, Any]]) -> list[str]:
    """`ltxv list`'s table: a line per job, with the GPU seconds and cost it used, then
    their total over the jobs listed."""
    head = f"{'JOB':<28} {'STATE':<10} {'PROGRESS':<9} {'CREATED':<20}"
    lines = [f"{head} {'GPU S':>8} {'COST $':>9}  PROMPT"]
    for job in jobs:
        progress = job.get("progress")
        step = f"{progress['step']}/{progress['total']}" if progress else "-"
        prompt = job["request"].get("prompt", "")
        prompt = prompt if len(prompt) <= 40 else prompt[:39] + "…"
        created = (job.get("created_at") or "")[:19].replace("T", " ")
        usage = job.get("usage") or {}
        seconds = f"{usage['gpu_seconds']:.1f}" if usage else "-"
        cost = f"{usage['cost_usd']:.4f}" if usage else "-"
        lines.append(
            f"{job['job_id']:<28} {job['state']:<10} {step:<9} {created:<20} "
            f"{seconds:>8} {cost:>9}  {prompt}"
        )
    total = page_total(jobs)
    lines.append(
        f"{'total':<70} {total['gpu_seconds']:>8.1f} {total['cost_usd']:>9.4f}  "
        f"{total['jobs']} of {len(jobs)} job(s) used a GPU"
    )
    return lines
