"""`ltxv upload FILE` and `ltxv extend JOB`: media for conditions, and continuing a video."""

from __future__ import annotations

import argparse
import json

from ltxv.cli.common import client_for, err, out
from ltxv.cli.conditions import add_media_flags, conditions_from_args
from ltxv.cli.jobs import _wait_options, add_request_flags, follow_new_job, request_fields


def cmd_upload(args: argparse.Namespace) -> int:
    uri = client_for(args).upload(args.file, args.content_type)
    err(f"uploaded {args.file}")
    out(json.dumps({"uri": uri}) if args.json else uri)
    return 0


def cmd_extend(args: argparse.Namespace) -> int:
    """Exit codes as `ltxv submit`'s (2 for a job that cannot be continued: not this key's,
    not succeeded, too short)."""
    client = client_for(args)
    fields = request_fields(args)
    if args.prompt is not None:
        fields["prompt"] = args.prompt
    conditions = conditions_from_args(args, client.upload)
    if conditions:
        fields["conditions"] = conditions
    job = client.extend(args.job_id, args.frames, idempotency_key=args.idempotency_key, **fields)
    err(f"extending job {args.job_id} as job {job['job_id']} ({job['state']})")
    return follow_new_job(client, job, args)


def add_commands(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    service: list[argparse.ArgumentParser],
) -> None:
    upload = commands.add_parser(
        "upload",
        parents=service,
        help="upload an image or video for conditions; prints its gs:// URI",
    )
    upload.add_argument("file")
    upload.add_argument(
        "--content-type", help="default: found from the bytes (PNG, JPEG, WebP, MP4, WebM, MOV)"
    )
    upload.set_defaults(run=cmd_upload)

    extend = commands.add_parser(
        "extend",
        parents=service,
        help="continue a succeeded job's video from its last frames; prints the new job's id",
        description="A new job conditioned at frame 0 on the last --frames frames of JOB. "
        "Prompt, model, size, length, steps and fps are JOB's unless given (the length at "
        "least --frames + 8).",
    )
    extend.add_argument("job_id", metavar="JOB")
    extend.add_argument(
        "--frames", type=int, default=9, metavar="N", help="its last N frames (8k + 1; default 9)"
    )
    extend.add_argument("--prompt", help="what happens next (default: JOB's prompt)")
    add_request_flags(extend)
    add_media_flags(extend)
    extend.add_argument("--idempotency-key", help="a repeat with this key returns the same job")
    _wait_options(extend, "wait until the new job settles")
    extend.add_argument("--out", metavar="PATH", help="wait, then save the video here")
    extend.set_defaults(run=cmd_extend)
