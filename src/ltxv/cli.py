"""`ltxv`: the command line for the pipeline, on the local stack or a deployed service.

    ltxv submit "a red fox in snow" --num-frames 41 --wait --out fox.mp4
    ltxv status JOB_ID          ltxv list [--state running]
    ltxv cancel JOB_ID          ltxv download JOB_ID --out fox.mp4
    ltxv drop prompts.jsonl     (upload into the prompts bucket, print its receipt)
    ltxv webhook verify|listen|secret
    ltxv dev up|down|status|logs|dead-letter

Settings come from flags, then the environment (LTXV_API_URL, LTXV_API_KEY, ...), then
`.local/stack.env` (written by `make dev`), so against the local stack nothing needs to
be passed. Data goes to stdout (a job id, a table, or JSON with --json); progress and
messages go to stderr.

Exit codes: 0 done; 1 the job failed or was canceled, a prompt-file line or a signature
was rejected; 2 a mistake to fix (a flag, an invalid request, a wrong key, an unknown
job); 3 the service could not be reached or failed; 4 --wait timed out (the job goes on);
130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from . import schemas
from .client import (
    ApiError,
    Client,
    ClientError,
    ConfigurationError,
    PromptDrops,
    ServiceUnavailable,
    WaitTimedOut,
    setting,
    use_local_emulators,
)
from .jobs import State
from .resources import worker_delivery
from .webhooks import WebhookVerificationError, verify_webhook

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_UNAVAILABLE = 3
EXIT_TIMEOUT = 4
EXIT_INTERRUPTED = 130


class UserError(Exception):
    """A mistake the user can fix; printed without a traceback."""


def err(line: str = "") -> None:
    print(line, file=sys.stderr, flush=True)


def out(line: str = "") -> None:
    print(line, flush=True)


def _secret(args: argparse.Namespace) -> str:
    secret = setting("LTXV_WEBHOOK_SECRET", args.secret)
    if not secret:
        raise UserError(
            "no webhook secret: pass --secret, set LTXV_WEBHOOK_SECRET (`ltxv webhook secret` "
            "prints your key's), or run `make dev` (which writes it to .local/stack.env)"
        )
    return secret


def _client(args: argparse.Namespace) -> Client:
    return Client.configured(args.url, args.api_key, timeout=args.http_timeout)


# --- ltxv submit -----------------------------------------------------------------------------

REQUEST_SCHEMA = schemas.load("job-request")
# Request fields become flags (`--num-frames`); prompt is the positional argument.
REQUEST_FLAGS = [name for name in REQUEST_SCHEMA["properties"] if name != "prompt"]


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
        else:
            kind = _field_type(spec)
            metavar = "N" if kind is int else "X" if kind is float else name.split("_")[-1].upper()
            fields.add_argument(flag, dest=name, type=kind, metavar=metavar, help=text)


def request_body(args: argparse.Namespace) -> dict[str, Any]:
    body: dict[str, Any] = {}
    if args.body:
        try:
            body = json.loads(_read(args.body))
        except ValueError as exc:
            raise UserError(f"{args.body} is not JSON: {exc}") from None
        if not isinstance(body, dict):
            raise UserError(f"{args.body} must hold a JSON object (the request body)")
    if args.prompt is not None:
        body["prompt"] = args.prompt
    for name in REQUEST_FLAGS:
        value = getattr(args, name)
        if value is not None:
            body[name] = dict(value) if name == "metadata" else value
    if "prompt" not in body:
        raise UserError("no prompt: give it as the first argument, or in --body")
    return body


def cmd_submit(args: argparse.Namespace) -> int:
    client = _client(args)
    body = request_body(args)
    job = client.submit(idempotency_key=args.idempotency_key, **body)
    err(f"submitted job {job['job_id']} ({job['state']})")
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

    def __init__(self, job_id: str, steps: int | None, stream=None) -> None:
        self.stream = stream or sys.stderr
        self.bar = None
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
        state, progress = job["state"], job.get("progress") or {}
        if self.bar is not None:
            self.bar.set_description_str(state, refresh=False)
            if progress.get("total"):
                self.bar.total = progress["total"]
            self.bar.n = progress.get("step", self.bar.total if state == "succeeded" else 0)
            self.bar.refresh()
            return
        line = state + (f" {progress['step']}/{progress['total']}" if progress else "")
        if line != self.last:
            err(line)
            self.last = line

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _seconds_between(start: str | None, end: str | None) -> float | None:
    if not (start and end):
        return None
    parse = datetime.fromisoformat
    return (parse(end.replace("Z", "+00:00")) - parse(start.replace("Z", "+00:00"))).total_seconds()


def describe_outcome(job: dict[str, Any]) -> str:
    took = _seconds_between(job.get("created_at"), job.get("updated_at"))
    took = f" {took:.1f}s after it was submitted" if took is not None else ""
    if job["state"] == State.SUCCEEDED:
        return f"job {job['job_id']} succeeded{took}"
    error = job.get("error") or {}
    reason = f": {error.get('code')}: {error.get('message')}" if error else ""
    return f"job {job['job_id']} {job['state']}{reason}"


# --- ltxv status | list | cancel | download ---------------------------------------------------


def cmd_status(args: argparse.Namespace) -> int:
    job = _client(args).get(args.job_id)
    if args.json:
        out(json.dumps(job, indent=2))
    else:
        for name, value in describe_job(job):
            out(f"{name:<10}{value}")
    return EXIT_FAILED if job["state"] in (State.FAILED, State.CANCELED) else 0


def describe_job(job: dict[str, Any]) -> list[tuple[str, str]]:
    request, progress = job["request"], job.get("progress")
    rows = [("job", job["job_id"]), ("state", job["state"])]
    if progress:
        rows.append(("progress", f"step {progress['step']} of {progress['total']}"))
    rows.append(("prompt", request.get("prompt", "")))
    rows.append(
        (
            "video",
            f"{request.get('width')}x{request.get('height')}, {request.get('num_frames')} frames "
            f"at {request.get('fps')} fps, {request.get('num_inference_steps')} steps, "
            f"seed {request.get('seed')}, model {job.get('model')}",
        )
    )
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
    for name in ("video", "poster", "result"):
        uri = (job.get("outputs") or {}).get(name)
        if uri:
            rows.append((name if name != "video" else "output", uri))
    if job.get("video_url"):
        rows.append(("download", f"ltxv download {job['job_id']} --out video.mp4"))
    webhook = job.get("webhook")
    if webhook:
        attempts = len(webhook.get("attempts") or [])
        rows.append(("webhook", f"{webhook['state']} ({attempts} attempt(s)) {webhook['url']}"))
    return rows


def cmd_list(args: argparse.Namespace) -> int:
    client = _client(args)
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
    out(f"{'JOB':<28} {'STATE':<10} {'PROGRESS':<9} {'CREATED':<20} PROMPT")
    for job in jobs:
        progress = job.get("progress")
        step = f"{progress['step']}/{progress['total']}" if progress else "-"
        prompt = job["request"].get("prompt", "")
        prompt = prompt if len(prompt) <= 40 else prompt[:39] + "…"
        created = (job.get("created_at") or "")[:19].replace("T", " ")
        out(f"{job['job_id']:<28} {job['state']:<10} {step:<9} {created:<20} {prompt}")
    return 0


def cmd_cancel(args: argparse.Namespace) -> int:
    job = _client(args).cancel(args.job_id)
    if job["state"] == State.CANCELED:
        err(f"job {job['job_id']} canceled")
    else:
        err(f"job {job['job_id']} is {job['state']}: it stops at its next denoising step")
    out(json.dumps(job, indent=2) if args.json else job["job_id"])
    return 0


def cmd_download(args: argparse.Namespace) -> int:
    client = _client(args)
    job = client.get(args.job_id)
    if args.wait and not State(job["state"]).terminal:
        job = _wait(client, job, args.timeout)
    what = "poster" if args.poster else "video"
    default = f"{job['job_id']}.{'jpg' if args.poster else 'mp4'}"
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
    receipt = drops.receipt(name, generation, timeout=args.timeout)
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


# --- ltxv webhook ---------------------------------------------------------------------------


def parse_header_lines(text: str) -> dict[str, str]:
    """`Name: value` lines (a `curl -D` dump, or what `listen --save` wrote)."""
    headers = {}
    for line in text.splitlines():
        name, sep, value = line.partition(":")
        if sep and not line.startswith("HTTP/"):
            headers[name.strip().lower()] = value.strip()
    return headers


def cmd_webhook_verify(args: argparse.Namespace) -> int:
    headers: dict[str, str] = {}
    if args.headers:
        headers.update(parse_header_lines(_read(args.headers).decode("utf-8", "replace")))
    for name, value in (
        ("webhook-id", args.id),
        ("webhook-timestamp", args.timestamp),
        ("webhook-signature", args.signature),
    ):
        if value:
            headers[name] = value
    missing = [
        n for n in ("webhook-id", "webhook-timestamp", "webhook-signature") if n not in headers
    ]
    if missing:
        raise UserError(
            f"missing {', '.join(missing)}: pass --headers FILE or --id/--timestamp/--signature"
        )
    body = _read(args.body)
    try:
        event = verify_webhook(
            _secret(args), headers, body, check_timestamp=not args.ignore_timestamp
        )
    except WebhookVerificationError as exc:
        print(f"invalid: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except UnicodeDecodeError:
        print("invalid: the body is not UTF-8", file=sys.stderr)
        return EXIT_FAILED
    data = event.get("data") or {}
    print(f"valid: {headers['webhook-id']} {event.get('type')} job {data.get('job_id')}")
    if args.print:
        print(json.dumps(event, indent=2))
    return 0


def cmd_webhook_listen(args: argparse.Namespace) -> int:
    from .webhook_receiver import Delivery, WebhookReceiver

    save = Path(args.save) if args.save else None
    verified: list = []
    if save:
        save.mkdir(parents=True, exist_ok=True)

    def show(delivery: Delivery) -> None:
        if delivery.event:
            data = delivery.event.get("data") or {}
            line = (
                f"{delivery.webhook_id} {delivery.event.get('type')} job {data.get('job_id')} "
                f"verified, answered {delivery.status}"
            )
        else:
            line = f"{delivery.webhook_id or '-'} REJECTED: {delivery.error}"
        print(line, flush=True)
        if save and delivery.webhook_id:
            name = "".join(c for c in delivery.webhook_id if c.isalnum() or c in "_-")
            if not delivery.event:  # kept apart, so a forgery never overwrites the real one
                name += ".rejected"
            (save / f"{name}.json").write_bytes(delivery.body)
            lines = [f"{k}: {v}" for k, v in delivery.headers.items() if k.startswith("webhook-")]
            (save / f"{name}.headers").write_text("\n".join(lines) + "\n")
        if delivery.event:
            verified.append(delivery)
            if args.count and len(verified) >= args.count:
                receiver.stop()  # from this handler's thread: serve_forever returns

    receiver = WebhookReceiver(
        _secret(args), host=args.host, port=args.port, path=args.path, on_delivery=show
    )
    print(f"listening on {receiver.url}; Ctrl-C stops", flush=True)
    try:
        receiver.serve_forever()
    except OSError as exc:
        raise UserError(f"cannot listen on {args.host}:{args.port}: {exc.strerror}") from None
    except KeyboardInterrupt:
        pass
    return 0


def cmd_webhook_secret(args: argparse.Namespace) -> int:
    body = _client(args).webhook_secret()
    if args.json:
        out(json.dumps(body, indent=2))
        return 0
    if len(body["secrets"]) > 1:
        err(
            f"a rotation is under way: each delivery carries {len(body['secrets'])} signatures; "
            "this is the current secret (--json lists every one)"
        )
    out(body["secret"])
    return 0


# --- ltxv dev ---------------------------------------------------------------------------------


def cmd_dev_stack(args: argparse.Namespace) -> int:
    """up, down and status: the same code `make dev` and `make down` run."""
    from .local import stack

    argv = [args.dev_command]
    if args.components:
        argv += ["--components", args.components]
    return stack.main(argv)


def cmd_dev_logs(args: argparse.Namespace) -> int:
    """The components' logs, newest lines last; --follow keeps printing as they grow."""
    from .local.stack import default_state_dir

    logs = default_state_dir() / "logs"
    available = sorted(p.stem for p in logs.glob("*.log"))
    if not available:
        raise UserError(f"no logs under {logs}: start the stack with `make dev` first")
    unknown = sorted(set(args.component) - set(available))
    if unknown:
        raise UserError(f"no log for {', '.join(unknown)}; there are: {', '.join(available)}")
    names = args.component or available
    width = max(map(len, names))
    offsets = dict.fromkeys(names, 0)

    def new_lines(name: str) -> list[str]:
        """Whole lines written since the last call (the first call: the whole log)."""
        try:
            with (logs / f"{name}.log").open("rb") as log:
                if os.fstat(log.fileno()).st_size < offsets[name]:  # truncated or replaced
                    offsets[name] = 0
                log.seek(offsets[name])
                chunk = log.read()
        except FileNotFoundError:
            return []
        complete = chunk.rfind(b"\n") + 1  # hold back a half-written line
        offsets[name] += complete
        return chunk[:complete].decode(errors="replace").splitlines()

    def show(name: str, lines: list[str]) -> None:
        for line in lines:
            out(f"{name:<{width}} | {line}")

    for name in names:
        lines = new_lines(name)
        show(name, lines[max(0, len(lines) - args.lines) :])
    while args.follow:
        time.sleep(0.5)
        for name in names:
            show(name, new_lines(name))
    return 0


def cmd_dev_dead_letter(args: argparse.Namespace) -> int:
    """Publish a job's message to the dead-letter topic, as Pub/Sub does after N attempts."""
    from google.cloud import pubsub_v1

    from .dead_letters import DELIVERY_COUNT_ATTRIBUTE
    from .settings import Settings

    if "PUBSUB_EMULATOR_HOST" not in use_local_emulators():
        raise UserError("no local stack: run `make dev` first (this command never touches GCP)")
    settings = Settings(
        project=setting("LTXV_PROJECT") or Settings.project,
        prefix=setting("LTXV_PREFIX") or Settings.prefix,
    )
    publisher = pubsub_v1.PublisherClient()
    topic = publisher.topic_path(settings.project, settings.dead_letter_topic)
    future = publisher.publish(
        topic,
        json.dumps({"job_id": args.job_id}).encode(),
        job_id=args.job_id,
        # The default model's worker subscription, as stack.env names it.
        CloudPubSubDeadLetterSourceSubscription=setting("LTXV_SUBSCRIPTION")
        or settings.subscription,
        **{DELIVERY_COUNT_ATTRIBUTE: str(args.attempts)},
    )
    print(f"published job {args.job_id} to {settings.dead_letter_topic} ({future.result(30)})")
    return 0


# --- plumbing -------------------------------------------------------------------------------


def _read(path: str) -> bytes:
    if path == "-":
        return sys.stdin.buffer.read()
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror}") from None


def _service_options() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    group = common.add_argument_group("service")
    group.add_argument("--url", help="the API's URL (default: LTXV_API_URL, .local/stack.env)")
    group.add_argument("--api-key", help="the API key (default: LTXV_API_KEY, .local/stack.env)")
    group.add_argument(
        "--http-timeout", type=float, default=30.0, metavar="S", help="per HTTP request"
    )
    group.add_argument("--json", action="store_true", help="print the API's JSON")
    return common


def _wait_options(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("--wait", action="store_true", help=f"{what}, showing progress")
    parser.add_argument(
        "--timeout", type=float, metavar="S", help="stop waiting after S seconds (exit 4)"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ltxv",
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    service = [_service_options()]

    submit = commands.add_parser(
        "submit", parents=service, help="submit a prompt; prints the job id"
    )
    submit.add_argument("prompt", nargs="?", help="what the video shows")
    add_request_flags(submit)
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
    download.add_argument("--poster", action="store_true", help="the first frame, as JPEG")
    _wait_options(download, "wait for a job still queued or running")
    download.set_defaults(run=cmd_download)

    drop = commands.add_parser(
        "drop", help="upload a .json/.jsonl prompt file and print its receipt"
    )
    drop.add_argument("file")
    drop.add_argument("--bucket", help="the prompts bucket (default: LTXV_PROMPTS_BUCKET)")
    drop.add_argument("--name", help="object name under incoming/ (default: the file's name)")
    drop.add_argument("--no-wait", action="store_true", help="upload only")
    drop.add_argument("--timeout", type=float, default=120, help="for the receipt (seconds)")
    drop.add_argument("--json", action="store_true", help="print the receipt's JSON")
    drop.set_defaults(run=cmd_drop)

    webhook = commands.add_parser("webhook", help="verify or receive webhook deliveries")
    webhook_commands = webhook.add_subparsers(dest="webhook_command", required=True)
    verify = webhook_commands.add_parser(
        "verify", help="check a delivery's Standard Webhooks signature"
    )
    verify.add_argument("--body", required=True, help="the raw request body (a file, or -)")
    verify.add_argument("--headers", help="a file of 'Name: value' lines (e.g. curl -D)")
    verify.add_argument("--id", help="the webhook-id header")
    verify.add_argument("--timestamp", help="the webhook-timestamp header")
    verify.add_argument("--signature", help="the webhook-signature header")
    verify.add_argument("--secret", help="the whsec_ secret (default: LTXV_WEBHOOK_SECRET)")
    verify.add_argument(
        "--ignore-timestamp",
        action="store_true",
        help="check the signature only (a captured delivery older than five minutes)",
    )
    verify.add_argument("--print", action="store_true", help="print the verified event")
    verify.set_defaults(run=cmd_webhook_verify)

    listen = webhook_commands.add_parser(
        "listen", help="a local receiver that verifies and prints each delivery"
    )
    listen.add_argument("--host", default="127.0.0.1")
    listen.add_argument("--port", type=int, default=8099)
    listen.add_argument("--path", default="/webhook")
    listen.add_argument("--secret", help="the whsec_ secret (default: LTXV_WEBHOOK_SECRET)")
    listen.add_argument("--save", metavar="DIR", help="keep each body and its headers here")
    listen.add_argument(
        "--count", type=int, metavar="N", help="exit after N verified deliveries (scripts)"
    )
    listen.set_defaults(run=cmd_webhook_listen)

    secret = webhook_commands.add_parser(
        "secret", parents=service, help="print this API key's webhook signing secret"
    )
    secret.set_defaults(run=cmd_webhook_secret)

    dev = commands.add_parser("dev", help="the local stack: up, down, status, logs")
    dev_commands = dev.add_subparsers(dest="dev_command", required=True)
    for name, text in (
        ("up", "start the local stack in the background (what `make dev` runs)"),
        ("down", "stop it (what `make down` runs)"),
        ("status", "show what runs where"),
    ):
        sub = dev_commands.add_parser(name, help=text)
        sub.add_argument("--components", help="comma-separated subset (default: all)")
        sub.set_defaults(run=cmd_dev_stack)
    logs = dev_commands.add_parser("logs", help="print the components' logs")
    logs.add_argument("component", nargs="*", help="e.g. api worker (default: all)")
    logs.add_argument("-n", "--lines", type=int, default=20, help="last N lines of each")
    logs.add_argument("-f", "--follow", action="store_true", help="keep printing new lines")
    logs.set_defaults(run=cmd_dev_logs)
    dead = dev_commands.add_parser(
        "dead-letter", help="send a job to the dead-letter topic as Pub/Sub would"
    )
    dead.add_argument("job_id")
    dead.add_argument(
        "--attempts",
        type=int,
        default=worker_delivery().max_delivery_attempts,
        help="delivery count to report (default: max_delivery_attempts, %(default)s)",
    )
    dead.set_defaults(run=cmd_dev_dead_letter)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except (UserError, ConfigurationError) as exc:
        err(f"ltxv: {exc}")
        return EXIT_USAGE
    except ApiError as exc:
        err(f"ltxv: {exc.message} ({exc.status} {exc.code})")
        for detail in exc.details:
            err(f"  {detail.get('path')}: {detail.get('message')}")
        return EXIT_USAGE
    except WaitTimedOut as exc:
        err(f"ltxv: {exc}")
        return EXIT_TIMEOUT
    except ServiceUnavailable as exc:
        err(f"ltxv: {exc}")
        return EXIT_UNAVAILABLE
    except ClientError as exc:
        err(f"ltxv: {exc}")
        return EXIT_USAGE
    except KeyboardInterrupt:
        err("\nltxv: interrupted; a submitted job goes on (ltxv list shows it)")
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # `ltxv list | head`: the reader has gone; say nothing more on that pipe.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
