"""What every `ltxv` command group shares: exit codes, output, input files, the client and
the service options."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ltxv.client.client import Client

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


def read_input(path: str) -> bytes:
    """A file's bytes, or stdin's for `-`."""
    if path == "-":
        return sys.stdin.buffer.read()
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror}") from None


def client_for(args: argparse.Namespace) -> Client:
    return Client.configured(args.url, args.api_key, timeout=args.http_timeout)


def service_options() -> argparse.ArgumentParser:
    """The parent parser of every command that calls the API."""
    common = argparse.ArgumentParser(add_help=False)
    group = common.add_argument_group("service")
    group.add_argument("--url", help="the API's URL (default: LTXV_API_URL, .local/stack.env)")
    group.add_argument("--api-key", help="the API key (default: LTXV_API_KEY, .local/stack.env)")
    group.add_argument(
        "--http-timeout", type=float, default=30.0, metavar="S", help="per HTTP request"
    )
    group.add_argument("--json", action="store_true", help="print the API's JSON")
    return common
