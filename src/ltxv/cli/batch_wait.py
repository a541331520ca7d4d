"""`ltxv drop FILE --wait`: after the receipt, wait for the batch manifest and summarize it.

Exit codes as for one job: 0 when every line became a job that succeeded, 1 when a job
failed or was canceled or a line was rejected, 4 when the wait ran out (the jobs go on).
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from ltxv.cli.common import EXIT_FAILED, EXIT_TIMEOUT, err, out
from ltxv.client.batch_manifests import ManifestTimedOut, wait_for_manifest
from ltxv.client.client import PromptDrops


def follow_batch(drops: PromptDrops, name: str, generation: str, args: argparse.Namespace) -> int:
    err(f"waiting for gs://{drops.bucket.name}/results/{name.removeprefix('incoming/')}.jsonl")
    try:
        header, *lines = wait_for_manifest(drops.bucket, name, generation, timeout=args.timeout)
    except ManifestTimedOut as exc:
        err(f"ltxv: {exc}")
        return EXIT_TIMEOUT
    if args.json:
        for row in (header, *lines):
            out(json.dumps(row))
    else:
        for line in lines:
            out(describe(line))
    summary = header["summary"]
    err(
        f"batch {header['batch_id']}: {summary['lines']} lines, {summary['succeeded']} "
        f"succeeded, {summary['failed']} failed, {summary['canceled']} canceled, "
        f"{summary['rejected']} rejected; manifest {header['manifest']}"
    )
    return 0 if summary["succeeded"] == summary["lines"] else EXIT_FAILED


def describe(line: dict[str, Any]) -> str:
    number, state = line["line"], line["state"]
    if state == "rejected":
        details = line["error"].get("details") or []
        why = "; ".join(f"{d['path']}: {d['message']}" for d in details)
        return f"line {number}: rejected: {why}"
    if state == "succeeded":
        video = (line["outputs"] or {}).get("video", "")
        return f"line {number}: succeeded {line['job_id']} {video}".rstrip()
    error = line["error"] or {}
    return f"line {number}: {state} {line['job_id']}: {error.get('code')}: {error.get('message')}"
