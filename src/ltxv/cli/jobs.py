"""`ltxv submit | status | list | cancel | download | drop`: the jobs, over the API, and
prompt files, through the prompts bucket."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from ltxv.cli.batch_wait import follow_batch
from ltxv.cli.common import EXIT_FAILED, UserError, client_for, err, out, read_input
from ltxv.cli.conditions import add_media_flags, conditions_from_args
from ltxv.cli.job_text import describe_job, describe_outcome, list_table
from ltxv.client.client import Client, PromptDrops
from ltxv.core import schemas
from ltxv.core.jobs import State

if TYPE_CHECKING:
    from tqdm import tqdm

REQUEST_SCHEMA = schemas.load("job-request")
# Request fields become flags (`--num-frames`); prompt is the positional argument;
# conditions have their own flags (cli/conditions.py), extend its own command.
REQUEST_FLAGS = [
    name for name in REQUEST_SCHEMA["properties"] if name not in ("prompt", "conditions", "extend")
]


def _field_type(spec: dict[str, Any]) -> Callable[[str], Any]:
    types = spec["type"] if isinstance(spec["type"], list) else [spec["type"]]
    return int if "integer" in types else float if "number" in types else str


def _metadata_item(raw: str) -> tuple[str, str]:
    key, sep, value = raw.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {raw!r}")
    return key, value


def add_request_flags(parser: argparse.ArgumentParser) -> None:
    fields = parser.add_argument_group(
        "request fields (the old /predict body; omitted ones take the model profile's values)"
    )
    for name in REQUEST_FLAGS:
        spec = REQUEST_SCHEMA["properties"][name]
        flag = "--" + name.replace("_", "-")
        text = (spec.get("description") or "").split(". ")[0].rstrip(".")
        if spec.get("type") == "object":
            fields.add_argument(
                flag,
                dest=name,
                metavar="KEY=VALUE",
                type=_metadata_item,
                action="append",
                help=f"{text} (repeatable)",
            )
        elif "array" in (spec["type"] if isinstance(spec["type"], list) else [spec["type"]]):
            choices = spec.get("items", {}).get("enum")
            fields.add_argument(
                flag, dest=name, choices=choices, action="append", help=f"{text} (repeatable)"
            )
        else:
            kind = _field_type(spec)
            metavar = "N" if kind is int else "X" if kind is float else name.split("_")[-1].upper()
            fields.add_argument(flag, dest=name, type=kind, metavar=metavar, help=text)


def request_body(args: argparse.Namespace) -> dict[str, Any]:
    body: dict[str, Any] = {}
    if args.body:
        try:
            body = json.loads(read_input(args.body))
        except ValueError as exc:
            raise UserError(f"{args.body} is not JSON: {exc}") from None
        if not isinstance(body, dict):
            raise UserError(f"{args.body} must hold a JSON object (the request body)")
    if args.prompt is not None:
        body["prompt"] = args.prompt
    body.update(request_fields(args))
    if "prompt" not in body:
        raise UserError("no prompt: give it as the first argument, or in --body")
    return body


def request_fields(args: argparse.Namespace) -> dict[str, Any]:
    """The request fields given as flags (the prompt aside); a flag given as 0 or "" too."""
    return {
        name: dict(value) if name == "metadata" else value
        for name in REQUEST_FLAGS
        if (value := getattr(args, name)) is not None
    }


def cmd_submit(args: argparse.Namespace) -> int:
    client = client_for(args)
    body = request_body(args)
    conditions = conditions_from_args(args, client.upload)
    if conditions:
        body["conditions"] = conditions
    job = client.submit(idempotency_key=args.idempotency_key, **body)
    err(f"submitted job {job['job_id']} ({job['state']})")
    return follow_new_job(client, job, args)


def follow_new_job(client: Client, job: dict[str, Any], args: argparse.Namespace) -> int:
    """After a submit or a retry: wait (--wait, --out), save the video (--out), print the
    job; 0 accepted or succeeded, 1 the job failed or was canceled."""
    if args.wait or args.out:
        job = _wait(client, job, args.timeout)
        if job["state"] == State.SUCCEEDED and args.out:
            path = client.download(job, _out_path(args.out, job))
            err(f"saved {path} ({path.stat().st_size:,} bytes)")
    out(json.dumps(job, indent=2) if args.json else job["job_id"])
    return 0 if job["state"] in (State.SUCCEEDED, State.QUEUED, State.RUNNING) else EXIT_FAILED


def _out_path(raw: str, job: dict[str, Any]) -> Path:
    path = Path(raw)
    return path / f"{job['job_id']}.mp4" if path.is_dir() else path


def _wait(client: Client, job: dict[str, Any], timeout: float | None) -> dict[str, Any]:
    progress = Progress(job["job_id"], job["request"].get("num_inference_steps"))
    try:
        job = client.wait(
            job["job_id"], timeout=timeout, poll_interval=0.5, on_progress=progress.update
        )
    finally:
        progress.close()
    err(describe_outcome(job))
    return job


class Progress:
    """State and denoising step: a live bar on a terminal, a line per change otherwise."""

    def __init__(self, job_id: str, steps: int | None, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr
        self.bar: tqdm[Any] | None = None
        self.last = ""
        if self.stream.isatty():
            from tqdm import tqdm

            self.bar = tqdm(
                total=steps or 1,
                desc="queued",
                unit="step",
                file=self.stream,
                bar_format="{desc:<9} |{bar}| {n_fmt}/{total_fmt} steps  {elapsed}",
                dynamic_ncols=True,
            )

    def update(self, job: dict[str, Any]) -> None:
        state = job["state"]
        progress: dict[str, Any] = job.get("progress") or {}
        if self.bar is not None:
            self.bar.set_description_str(state, refresh=False)
            if progress.get("total"):
                self.bar.total = progress["total"]
            # total: steps or 1, or the job's truthy progress total (never None here)
            done = (self.bar.total or 0) if state == "succeeded" else 0
            self.bar.n = progress.get("step", done)
            self.bar.refresh()
            return
        line = state + (f" {progress['step']}/{progress['total']}" if progress else "")
        if line != self.last:
            err(line)
            self.last = line

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


# --- ltxv status | list | cancel | download ---------------------------------------------------


def cmd_status(args: argparse.Namespace) -> int:
    job = client_for(args).get(args.job_id)
    if args.json:
        out(json.dumps(job, indent=2))
    else:
        for name, value in describe_job(job):
            out(f"{name:<10}{value}")
    return EXIT_FAILED if job["state"] in (State.FAILED, State.CANCELED) else 0


def cmd_list(args: argparse.Namespace) -> int:
    client = client_for(args)
    jobs = []
    for job in client.iter_jobs(state=args.state, page_size=min(args.limit, 100)):
        jobs.append(job)
        if len(jobs) >= args.limit:
            break
    if args.json:
        out(json.dumps(jobs, indent=2))
        return 0
    if not jobs:
        err("no jobs" + (f" in state {args.state}" if args.state else ""))
        return 0
    for line in list_table(jobs):
        out(line)
    return 0


def cmd_cancel(args: argparse.Namespace) -> int:
    job = client_for(args).cancel(args.job_id)
    if job["state"] == State.CANCELED:
        err(f"job {job['job_id']} canceled")
    else:
        err(f"job {job['job_id']} is {job['state']}: it stops at its next denoising step")
    out(json.dumps(job, indent=2) if args.json else job["job_id"])
    return 0


def cmd_download(args: argparse.Namespace) -> int:
    client = client_for(args)
    job = client.get(args.job_id)
    if args.wait and not State(job["state"]).terminal:
        job = _wait(client, job, args.timeout)
    what = "poster" if args.poster else "extended" if args.extended else "video"
    suffix = {"poster": ".jpg", "extended": "-extended.mp4"}.get(what, ".mp4")
    default = f"{job['job_id']}{suffix}"
    path = Path(args.out or default)
    if path.is_dir():
        path = path / default
    path = client.download(job, path, what=what)
    err(f"saved {path} ({path.stat().st_size:,} bytes)")
    out(str(path))
    return 0


# --- ltxv drop -------------------------------------------------------------------------------


def cmd_drop(args: argparse.Namespace) -> int:
    drops = PromptDrops.configured(args.bucket)
    if not Path(args.file).is_file():
        raise UserError(f"{args.file}: no such file")
    name, generation = drops.drop(args.file, args.name)
    err(f"uploaded gs://{drops.bucket.name}/{name} (generation {generation})")
    if args.no_wait:
        out(f"gs://{drops.bucket.name}/{name}")
        return 0
    receipt = drops.receipt(name, generation, timeout=args.timeout or 120)
    if args.wait and not receipt.get("error"):
        return follow_batch(drops, name, generation, args)
    if args.json:
        out(json.dumps(receipt, indent=2))
    else:
        if receipt.get("error"):
            out(f"file rejected: {receipt['error']['code']}: {receipt['error']['message']}")
        for entry in receipt["accepted"]:
            out(f"line {entry['line']}: job {entry['job_id']}")
        for entry in receipt["rejected"]:
            for error in entry["errors"]:
                out(f"line {entry['line']}: rejected: {error['path']}: {error['message']}")
    rejected = receipt.get("error") or receipt["rejected"]
    return EXIT_FAILED if rejected else 0


# --- the parsers ----------------------------------------------------------------------------


def _wait_options(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("--wait", action="store_true", help=f"{what}, showing progress")
    parser.add_argument(
        "--timeout", type=float, metavar="S", help="stop waiting after S seconds (exit 4)"
    )


def add_commands(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    service: list[argparse.ArgumentParser],
) -> None:
    submit = commands.add_parser(
        "submit", parents=service, help="submit a prompt; prints the job id"
    )
    submit.add_argument("prompt", nargs="?", help="what the video shows")
    add_request_flags(submit)
    add_media_flags(submit)
    submit.add_argument("--body", metavar="FILE", help="a JSON request body (a file, or -)")
    submit.add_argument("--idempotency-key", help="a repeat with this key returns the same job")
    _wait_options(submit, "wait until the job settles")
    submit.add_argument("--out", metavar="PATH", help="wait, then save the video here")
    submit.set_defaults(run=cmd_submit)

    status = commands.add_parser("status", parents=service, help="show one job")
    status.add_argument("job_id")
    status.set_defaults(run=cmd_status)

    listing = commands.add_parser("list", parents=service, help="this key's jobs, newest first")
    listing.add_argument("--state", choices=[s.value for s in State])
    listing.add_argument("--limit", type=int, default=20, help="at most this many (default 20)")
    listing.set_defaults(run=cmd_list)

    cancel = commands.add_parser("cancel", parents=service, help="cancel a job")
    cancel.add_argument("job_id")
    cancel.set_defaults(run=cmd_cancel)

    download = commands.add_parser("download", parents=service, help="save a job's video")
    download.add_argument("job_id")
    download.add_argument("--out", metavar="PATH", help="file or directory (default: JOB.mp4)")
    which = download.add_mutually_exclusive_group()
    which.add_argument("--poster", action="store_true", help="the first frame, as JPEG")
    which.add_argument(
        "--extended", action="store_true", help="an extend's whole video: earlier frames + its own"
    )
    _wait_options(download, "wait for a job still queued or running")
    download.set_defaults(run=cmd_download)

    drop = commands.add_parser(
        "drop", help="upload a .json/.jsonl prompt file and print its receipt"
    )
    drop.add_argument("file")
    drop.add_argument("--bucket", help="the prompts bucket (default: LTXV_PROMPTS_BUCKET)")
    drop.add_argument("--name", help="object name under incoming/ (default: the file's name)")
    waits = drop.add_mutually_exclusive_group()
    waits.add_argument("--no-wait", action="store_true", help="upload only")
    waits.add_argument(
        "--wait", action="store_true", help="wait until every job settled; print the manifest"
    )
    drop.add_argument(
        "--timeout", type=float, metavar="S", help="stop waiting after S seconds (receipt: 120)"
    )
    drop.add_argument("--json", action="store_true", help="print the receipt (manifest) as JSON")
    drop.set_defaults(run=cmd_drop)
