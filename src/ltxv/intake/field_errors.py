"""What a client is told about a body that breaks its JSON Schema: every problem, each with
the JSON path of the field it is about, in words that never echo a long value back.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from jsonschema import ValidationError

from ltxv.core import schemas
from ltxv.intake.conditions import schema_message

# Firestore keeps map keys of the form __name__ for itself.
RESERVED_KEY = re.compile(r"^__[\s\S]*__$")  # as the request schema spells it


@dataclass(frozen=True)
class FieldError:
    path: str
    message: str

    def as_dict(self) -> dict[str, str]:
        return {"path": self.path, "message": self.message}


class RequestInvalid(ValueError):
    def __init__(self, errors: list[FieldError]) -> None:
        self.errors = errors
        super().__init__("; ".join(f"{e.path}: {e.message}" for e in errors))


def short(value: Any, limit: int = 40) -> str:
    text = json.dumps(value, ensure_ascii=False) if not isinstance(value, str) else repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


_TYPE_NAMES = {
    "string": "a string",
    "integer": "an integer",
    "number": "a number",
    "object": "a JSON object",
    "array": "an array",
    "boolean": "true or false",
    "null": "null",
}
_PATTERN_MESSAGES = {
    "$.prompt": "must contain a non-space character",
    "$.gcs_destination": "must look like gs://bucket/path/video.mp4",
    "$.model": "must be a profile name (lowercase letters, digits, '.', '_', '-')",
}


def _schema_message(error: ValidationError) -> str:
    """A message that says what is expected without quoting a possibly huge value."""
    # Typed `Any | Unset`: unset only on an error built by hand, never on one iter_errors gives.
    kind = error.validator
    expected: Any = error.validator_value
    value: Any = error.instance
    if special := schema_message(error):
        return special
    if kind == "type":
        types: list[str] = expected if isinstance(expected, list) else [expected]
        return "must be " + " or ".join(_TYPE_NAMES.get(t, t) for t in types)
    if kind == "minLength":
        return "must not be empty" if expected == 1 else f"must be at least {expected} characters"
    if kind == "maxLength":
        return f"must be at most {expected} characters (got {len(value)})"
    if kind == "minimum":
        return f"must be at least {expected}"
    if kind == "maximum":
        return f"must be at most {expected}"
    if kind == "multipleOf":
        return f"must be divisible by {expected}"
    if kind == "maxProperties":
        return f"must have at most {expected} entries"
    if kind == "pattern":
        return _PATTERN_MESSAGES.get(error.json_path, f"must match {expected}")
    if kind == "enum":
        return f"must be one of {expected}"
    return error.message if len(error.message) <= 200 else f"is invalid ({kind})"


def _key_message(key: str) -> str:
    if RESERVED_KEY.match(key):
        return f"key {short(key)} is reserved: names of the form __name__ cannot be stored"
    return f"key {short(key)} must be 1 to 64 characters"


def schema_errors(body: dict[str, Any], schema: str, fields: Sequence[str]) -> list[FieldError]:
    """Every way `body` breaks `schema` (whose top-level fields are `fields`), by path."""
    errors: list[FieldError] = []
    for error in schemas.validator(schema).iter_errors(body):
        if error.validator == "additionalProperties" and not error.relative_path:
            allowed = ", ".join(fields)
            errors += [
                FieldError(f"$.{name}", f"unknown field; allowed fields are: {allowed}")
                for name in sorted(set(body) - set(fields))
            ]
        elif error.validator == "required":
            for name in error.validator_value:
                if name not in error.instance:
                    errors.append(FieldError(f"{error.json_path}.{name}", "is required"))
        elif "propertyNames" in error.schema_path:
            errors.append(FieldError(error.json_path, _key_message(error.instance)))
        else:
            errors.append(FieldError(error.json_path, _schema_message(error)))
    return errors
