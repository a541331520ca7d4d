"""`ltxv retry JOB [--wait]`: a failed or canceled job's request again, as a new job."""

from __future__ import annotations

import argparse

from ltxv.cli.common import client_for, err
from ltxv.cli.jobs import _wait_options, follow_new_job


def cmd_retry(args: argparse.Namespace) -> int:
    """Exit codes as `ltxv submit`'s: 0 accepted (or, with --wait, succeeded), 1 the new
    job failed or was canceled, 2 the job cannot be retried (409) or is unknown."""
    client = client_for(args)
    job = client.retry(args.job_id, idempotency_key=args.idempotency_key)
    err(f"retrying job {args.job_id} as job {job['job_id']} ({job['state']})")
    return follow_new_job(client, job, args)


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
