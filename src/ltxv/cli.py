"""`ltxv`: the command line for the pipeline.

    ltxv webhook verify --body body.json --headers headers.txt
    ltxv webhook listen --port 8099 [--save DIR]
    ltxv dev dead-letter JOB_ID

Settings come from flags, then the environment, then `.local/stack.env` (written by
`make dev`), so against the local stack nothing needs to be passed. User mistakes end with
a one-line message and exit code 2; a failed verification exits 1.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

from .webhooks import WebhookVerificationError, verify_webhook

EXIT_FAILED = 1
EXIT_USAGE = 2


class UserError(Exception):
    """A mistake the user can fix; printed without a traceback."""


# --- configuration ------------------------------------------------------------------------


def stack_env_file() -> Path:
    state = os.environ.get("LTXV_STATE_DIR")
    return Path(state) / "stack.env" if state else Path.cwd() / ".local" / "stack.env"


def read_stack_env(path: Path | None = None) -> dict[str, str]:
    """`KEY=value` lines (values shell-quoted) as `make dev` writes them; {} if absent."""
    path = path or stack_env_file()
    try:
        text = path.read_text()
    except FileNotFoundError:
        return {}
    values = {}
    for line in text.splitlines():
        key, sep, raw = line.partition("=")
        if sep and key.strip() and not key.startswith("#"):
            parts = shlex.split(raw)
            values[key.strip()] = parts[0] if parts else ""
    return values


def setting(name: str, flag: str | None = None) -> str | None:
    """A flag's value, else the environment's, else `.local/stack.env`'s."""
    return flag or os.environ.get(name) or read_stack_env().get(name) or None


def _secret(args: argparse.Namespace) -> str:
    secret = setting("LTXV_WEBHOOK_SECRET", args.secret)
    if not secret:
        raise UserError(
            "no webhook secret: pass --secret, set LTXV_WEBHOOK_SECRET, or run `make dev` "
            "(which writes it to .local/stack.env)"
        )
    return secret


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


# --- ltxv dev -------------------------------------------------------------------------------


def cmd_dev_dead_letter(args: argparse.Namespace) -> int:
    """Publish a job's message to the dead-letter topic, as Pub/Sub does after N attempts."""
    from google.cloud import pubsub_v1

    from .notify import DELIVERY_COUNT_ATTRIBUTE
    from .settings import Settings

    host = setting("PUBSUB_EMULATOR_HOST")
    if not host:
        raise UserError("no local stack: run `make dev` first (this command never touches GCP)")
    os.environ["PUBSUB_EMULATOR_HOST"] = host
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
        CloudPubSubDeadLetterSourceSubscription=settings.subscription,
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ltxv", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

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
    listen.set_defaults(run=cmd_webhook_listen)

    dev = commands.add_parser("dev", help="helpers for the local stack")
    dev_commands = dev.add_subparsers(dest="dev_command", required=True)
    dead = dev_commands.add_parser(
        "dead-letter", help="send a job to the dead-letter topic as Pub/Sub would"
    )
    dead.add_argument("job_id")
    dead.add_argument("--attempts", type=int, default=5, help="delivery count to report")
    dead.set_defaults(run=cmd_dev_dead_letter)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except UserError as exc:
        print(f"ltxv: {exc}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
