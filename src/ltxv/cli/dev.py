"""`ltxv dev up | down | status | logs | dead-letter`: the local stack (`ltxv.local`)."""

from __future__ import annotations

import argparse
import json
import os
import time

from ltxv.cli.common import UserError, out
from ltxv.client.client import setting, use_local_emulators
from ltxv.core.resources import worker_delivery


def cmd_dev_stack(args: argparse.Namespace) -> int:
    """up, down and status: the same code `make dev` and `make down` run."""
    from ltxv.local import stack

    argv = [args.dev_command]
    if args.components:
        argv += ["--components", args.components]
    return stack.main(argv)


def cmd_dev_logs(args: argparse.Namespace) -> int:
    """The components' logs, newest lines last; --follow keeps printing as they grow."""
    from ltxv.local.stack import default_state_dir

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
    import google.cloud.pubsub_v1 as pubsub_v1

    from ltxv.core.settings import Settings
    from ltxv.notify.dead_letters import DELIVERY_COUNT_ATTRIBUTE

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


def add_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
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
