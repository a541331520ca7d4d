"""Request bodies as strict JSON: an API body and a prompt-file line are parsed the same
way, refusing what no job can hold (NaN, Infinity, integers longer than 64 bits)."""

from __future__ import annotations

import json
from typing import Any

# Long enough for any 64-bit integer with its sign; JSON allows any length, and Python's
# int() refuses past 4300 digits with an error that names a config knob, not the input.
MAX_INT_DIGITS = 20


class JsonSyntaxError(ValueError):
    """Text that is not JSON a job can be made from; the message says where or why."""


def _refuse_constant(name: str) -> None:
    raise JsonSyntaxError(f"{name} is not valid JSON")


def _bounded_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise JsonSyntaxError(f"a number has more than {MAX_INT_DIGITS} digits")
    return int(text)


def parse_json(text: str) -> Any:
    """Parse a request (an API body, a prompt-file line) as strict JSON: no NaN or Infinity,
    no integers longer than any a job can hold. Raises JsonSyntaxError."""
    try:
        return json.loads(text, parse_constant=_refuse_constant, parse_int=_bounded_int)
    except JsonSyntaxError:
        raise
    except json.JSONDecodeError as exc:
        raise JsonSyntaxError(f"{exc.msg} at line {exc.lineno} column {exc.colno}") from exc
    except RecursionError as exc:
        raise JsonSyntaxError("nested too deeply") from exc
