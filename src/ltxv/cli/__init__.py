"""`ltxv`: the command line for the pipeline, on the local stack or a deployed service.

    ltxv submit "a red fox in snow" --num-frames 41 --wait --out fox.mp4
    ltxv status JOB_ID          ltxv list [--state running]
    ltxv cancel JOB_ID          ltxv download JOB_ID --out fox.mp4
    ltxv retry JOB_ID [--wait]  (a failed or canceled job's request, as a new job)
    ltxv submit "a fox wakes" --image first.png --image-at 0 --image last.png --image-at -1
    ltxv upload first.png       (into your part of the inputs bucket; prints its gs:// URI)
    ltxv extend JOB_ID [--frames 9] [--prompt ...] [--wait]  (continue its video)
    ltxv drop prompts.jsonl     (upload into the prompts bucket, print its receipt;
                                 --wait: and the manifest once every job settled)
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
import os
import sys
from collections.abc import Sequence

from ltxv.cli import dev, jobs, media, retry, webhook
from ltxv.cli.common import (
    EXIT_INTERRUPTED,
    EXIT_TIMEOUT,
    EXIT_UNAVAILABLE,
    EXIT_USAGE,
    UserError,
    err,
    service_options,
)
from ltxv.client.client import (
    ApiError,
    ClientError,
    ConfigurationError,
    ServiceUnavailable,
    WaitTimedOut,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ltxv",
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    service = [service_options()]
    jobs.add_commands(commands, service)
    retry.add_commands(commands, service)
    media.add_commands(commands, service)
    webhook.add_commands(commands, service)
    dev.add_commands(commands)
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
