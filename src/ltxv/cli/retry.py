"""`ltxv retry JOB [--wait]`: a failed or canceled job's request again, as a new job."""

from __future__ import annotations

import argparse
import json

from ltxv.cli.common import EXIT_FAILED, client_for, err, out
from ltxv.cli.jobs import _out_path, _wait, _wait_options
from ltxv.core.jobs import State


def cmd_retry(args: argparse.Namespace) -> int:
    """Exit codes as `ltxv submit`'s: 0 accepted (or, with --wait, succeeded), 1 the new
    job failed or was canceled, 2 the job cannot be retried (409) or is unknown."""
    client = client_for(args)
    job = client.retry(args.job_id, idempotency_key=args.idempotency_key)
    err(f"retrying job {args.job_id} as job {job['job_id']} ({job['state']})")
    if args.wait or args.out:
        job = _wait(client, job, args.timeout)
        if job["state"] == State.SUCCEEDED and args.out:
            path = client.download(job, _out_path(args.out, job))
            err(f"saved {path} ({path.stat().st_size:,} bytes)")
    out(json.dumps(job, indent=2) if args.json else job["job_id"])
    return 0 if job["state"] in (State.SUCCEEDED, State.QUEUED, State.RUNNING) else EXIT_FAILED


def add_commands(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    service: list[argparse.ArgumentParser],
) -> None:
    retry = commands.add_parser(
        "retry",
        parents=service,
        help="run a failed or canceled job's request again; prints the new job's id",
    )
    retry.add_argument("job_id")
    retry.add_argument("--idempotency-key", help="a repeat with this key returns the same new job")
    _wait_options(retry, "wait until the new job settles")
    retry.add_argument("--out", metavar="PATH", help="wait, then save the video here")
    retry.set_defaults(run=cmd_retry)
