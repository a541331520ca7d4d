"""`ltxv webhook verify | listen | secret | redeliver`: check, receive, sign and resend
webhook deliveries."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from ltxv.cli.common import EXIT_FAILED, UserError, client_for, err, out, read_input
from ltxv.client.client import ApiError, WaitTimedOut, setting
from ltxv.core.webhooks import WebhookVerificationError, verify_webhook


def _secret(args: argparse.Namespace) -> str:
    secret = setting("LTXV_WEBHOOK_SECRET", args.secret)
    if not secret:
        raise UserError(
            "no webhook secret: pass --secret, set LTXV_WEBHOOK_SECRET (`ltxv webhook secret` "
            "prints your key's), or run `make dev` (which writes it to .local/stack.env)"
        )
    return secret


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
        headers.update(parse_header_lines(read_input(args.headers).decode("utf-8", "replace")))
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
    body = read_input(args.body)
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
    from ltxv.client.webhook_receiver import Delivery, WebhookReceiver

    save = Path(args.save) if args.save else None
    verified: list[Delivery] = []
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
    body = client_for(args).webhook_secret()
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


def cmd_webhook_redeliver(args: argparse.Namespace) -> int:
    """0 requested (with --wait: delivered), 1 the redelivery failed, 2 refused (409, 429).
    With --wait, a delivery still under way is waited for first, then the redelivery."""
    client = client_for(args)
    deadline = time.monotonic() + args.timeout

    def settled_record() -> dict[str, Any]:
        while True:
            record: dict[str, Any] = client.get(args.job_id)["webhook"]
            if record["state"] in ("delivered", "failed"):
                return record
            if time.monotonic() > deadline:
                raise WaitTimedOut(client.get(args.job_id), args.timeout)
            time.sleep(0.5)

    try:
        record = client.redeliver_webhook(args.job_id)
    except ApiError as exc:
        if not (args.wait and exc.code == "webhook_delivery_pending"):
            raise
        err(f"waiting for the delivery under way: {exc.message}")
        settled_record()
        record = client.redeliver_webhook(args.job_id)
    err(f"redelivery {len(record.get('redeliveries') or [])} of {record['event_id']} requested")
    if args.wait:
        record = settled_record()
        last = record["attempts"][-1] if record["attempts"] else {}
        err(f"{record['state']}: {last.get('status_code') or last.get('error') or ''}".strip())
    out(json.dumps(record, indent=2) if args.json else record["state"])
    return EXIT_FAILED if record["state"] == "failed" else 0


def add_commands(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    service: list[argparse.ArgumentParser],
) -> None:
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

    redeliver = webhook_commands.add_parser(
        "redeliver",
        parents=service,
        help="send a settled job's webhook event once more (same webhook-id)",
    )
    redeliver.add_argument("job_id")
    redeliver.add_argument(
        "--wait",
        action="store_true",
        help="wait for a delivery under way to settle first, then for the redelivery's outcome",
    )
    redeliver.add_argument(
        "--timeout", type=float, default=60.0, metavar="S", help="with --wait (default 60)"
    )
    redeliver.set_defaults(run=cmd_webhook_redeliver)
