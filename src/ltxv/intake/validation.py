"""Request validation: the JSON Schema, then the model profile's LTX rules and limits.

Every problem is reported, each with the JSON path of the field it is about, so a client
can fix a request in one round trip. Messages never echo a long value back.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ltxv.core.profiles import ModelProfile
from ltxv.core.results import destination_prefix
from ltxv.core.urlsafety import (
    LookupTimedOut,
    Resolver,
    UnsafeURL,
    check_webhook_url,
    system_resolver,
)
from ltxv.intake.conditions import (
    CONDITION_FIELDS,
    LTX_FRAME_STEP,
    check_request,
    frame_count_problem,
)
from ltxv.intake.field_errors import FieldError, RequestInvalid, schema_errors, short

# The request fields a model profile gives a default to.
PROFILE_DEFAULTED = (
    "negative_prompt",
    "seed",
    "height",
    "width",
    "num_frames",
    "num_inference_steps",
    "fps",
)
REQUEST_FIELDS = (
    "prompt",
    *PROFILE_DEFAULTED,
    "gcs_destination",
    "webhook_url",
    "metadata",
    "model",
    "priority",
    "max_queue_seconds",
    "max_run_seconds",
    "webhook_events",
    *CONDITION_FIELDS,
)
DEFAULT_PRIORITY = "normal"
DEFAULT_WEBHOOK_EVENTS = ("settled",)
MAX_METADATA_BYTES = 4096
MAX_OBJECT_NAME_BYTES = 1024
# Firestore stores 64-bit integers.
INT64 = range(-(2**63), 2**63)


@dataclass(frozen=True)
class IntakePolicy:
    """What the deployment allows, beyond the schema."""

    profiles: Mapping[str, ModelProfile]
    default_model: str
    outputs_bucket: str
    # Further buckets a gcs_destination may name: bucket -> the API key ids that may.
    destination_buckets: Mapping[str, frozenset[str]] = dataclasses.field(default_factory=dict)
    allow_http_loopback_webhooks: bool = False
    inputs_bucket: str = ""  # conditions: each key's own prefix there, and input_buckets
    input_buckets: Mapping[str, frozenset[str]] = dataclasses.field(default_factory=dict)
    resolver: Resolver = system_resolver

    def destinations_of(self, api_key_id: str) -> list[str]:
        """Where `api_key_id`'s gcs_destination may point, as gs:// prefixes."""
        own = f"gs://{self.outputs_bucket}/{destination_prefix(api_key_id)}"
        buckets = sorted(self.destination_buckets.items())
        extra = [f"gs://{bucket}/" for bucket, keys in buckets if api_key_id in keys]
        return [own, *extra]


def _check_range(
    errors: list[FieldError], request: dict[str, Any], field: str, profile: ModelProfile
) -> None:
    bounds = profile.limits[field]
    value = request[field]
    if value not in bounds:
        errors.append(
            FieldError(
                f"$.{field}",
                f"must be between {bounds.min} and {bounds.max} for model {profile.name} "
                f"(got {value})",
            )
        )


def _profile_errors(request: dict[str, Any], profile: ModelProfile) -> list[FieldError]:
    errors: list[FieldError] = []
    for field in ("height", "width", "num_frames", "num_inference_steps", "fps"):
        _check_range(errors, request, field, profile)
    frames = request["num_frames"]
    if (problem := frame_count_problem(frames)) is not None:
        errors.append(FieldError("$.num_frames", problem))
    pixels = request["height"] * request["width"] * frames
    pixel_steps = pixels * request["num_inference_steps"]
    if not errors and pixels > profile.max_video_pixels:
        errors.append(
            FieldError(
                "$",
                f"height x width x num_frames = {pixels} exceeds model {profile.name}'s limit "
                f"of {profile.max_video_pixels}; lower the size or the frame count",
            )
        )
    elif not errors and pixel_steps > profile.max_pixel_steps:
        # A render's GPU time grows with its steps as much as with its size.
        errors.append(
            FieldError(
                "$",
                f"height x width x num_frames x num_inference_steps = {pixel_steps} exceeds "
                f"model {profile.name}'s limit of {profile.max_pixel_steps}; lower the size, "
                "the frame count or the steps",
            )
        )
    return errors


def _destination_errors(
    destination: str, policy: IntakePolicy, api_key_id: str
) -> list[FieldError]:
    """A custom destination is confined to what the caller owns: its own prefix of the
    outputs bucket (never another key's, never a job's `jobs/` tree), or a bucket the
    deployment allows for its key. (The worker also never overwrites what is there.)"""
    bucket, _, name = destination.removeprefix("gs://").partition("/")
    problems = []
    own = destination_prefix(api_key_id)
    if bucket == policy.outputs_bucket:
        allowed = name.startswith(own)
    else:
        allowed = api_key_id in policy.destination_buckets.get(bucket, frozenset())
    if not allowed:
        places = " or ".join(policy.destinations_of(api_key_id))
        problems.append(f"this API key may write only under {places}")
    parts = name.split("/")
    if any(part in ("", ".", "..") for part in parts):
        problems.append("object path must not contain empty, '.' or '..' segments")
    if len(name.encode("utf-8")) > MAX_OBJECT_NAME_BYTES:
        problems.append(f"object name must be at most {MAX_OBJECT_NAME_BYTES} bytes")
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in name):
        problems.append("object name must not contain control characters")
    return [FieldError("$.gcs_destination", p) for p in problems]


def _first_per_path(errors: list[FieldError]) -> list[FieldError]:
    first: dict[str, FieldError] = {}
    for error in errors:
        first.setdefault(error.path, error)
    return list(first.values())


def _storable_errors(value: Any, path: str = "$") -> list[FieldError]:
    """Values JSON can carry that cannot be stored or sent on: lone UTF-16 surrogates
    (legal in JSON escapes), numbers that are not finite (1e999 parses to infinity, which
    no JSON response could then hold), integers beyond 64 bits (Firestore's)."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return [FieldError(path, "contains an unpaired UTF-16 surrogate escape")]
        return []
    if isinstance(value, bool):
        return []
    if isinstance(value, int) and value not in INT64:
        return [FieldError(path, "must be between -2^63 and 2^63 - 1 (a 64-bit integer)")]
    if isinstance(value, float) and not math.isfinite(value):
        return [FieldError(path, "must be a finite number")]
    if isinstance(value, dict):
        return [
            error
            for key, item in value.items()
            for error in _storable_errors(key, path) + _storable_errors(item, f"{path}.{key}")
        ]
    if isinstance(value, list):
        return [e for i, item in enumerate(value) for e in _storable_errors(item, f"{path}[{i}]")]
    return []


def validate_request(
    body: Any, policy: IntakePolicy, *, api_key_id: str, inline: dict[str, bytes] | None = None
) -> dict[str, Any]:
    """Return the request with every field resolved, or raise RequestInvalid with all
    errors. `api_key_id` is whose request it is (what its gcs_destination may name)."""
    if not isinstance(body, dict):
        raise RequestInvalid([FieldError("$", "request body must be a JSON object")])
    unstorable = _storable_errors(body)
    if unstorable:
        raise RequestInvalid(unstorable)
    errors = _first_per_path(schema_errors(body, "job-request", REQUEST_FIELDS))
    # The top-level field of each error: `$.metadata.key`'s is metadata.
    bad = {re.split(r"[.\[]", e.path.removeprefix("$."))[0] for e in errors}
    model = body.get("model") or policy.default_model
    profile = policy.profiles.get(model) if isinstance(model, str) else None
    if profile is None:
        if "model" not in bad:
            errors.append(
                FieldError(
                    "$.model",
                    f"unknown model {short(model)}; available: {sorted(policy.profiles)}",
                )
            )
        raise RequestInvalid(errors)

    request: dict[str, Any] = {field: body.get(field) for field in REQUEST_FIELDS}
    for field in PROFILE_DEFAULTED:
        if request[field] is None or field in bad:
            # A field that failed the schema is checked no further; the default stands
            # in for it so the other fields' rules can still be checked and reported.
            request[field] = profile.defaults[field]
    for field in ("seed", "height", "width", "num_frames", "num_inference_steps", "fps"):
        request[field] = int(request[field])  # JSON 704.0 is a valid integer; store 704.
    request["model"] = model
    request["metadata"] = request["metadata"] if "metadata" not in bad else None
    request["metadata"] = request["metadata"] or {}
    if request["priority"] is None or "priority" in bad:
        request["priority"] = DEFAULT_PRIORITY
    for field in ("max_queue_seconds", "max_run_seconds"):
        if field in bad:
            request[field] = None
        elif request[field] is not None:
            request[field] = int(request[field])
    if request["webhook_url"] is None:
        # No receiver, no events: stored as null.
        if request["webhook_events"] is not None and "webhook_events" not in bad:
            errors.append(FieldError("$.webhook_events", "needs webhook_url: nowhere to send to"))
        request["webhook_events"] = None
    elif request["webhook_events"] is None or "webhook_events" in bad:
        request["webhook_events"] = list(DEFAULT_WEBHOOK_EVENTS)
    else:
        request["webhook_events"] = sorted(request["webhook_events"])

    errors += [e for e in _profile_errors(request, profile) if e.path != "$" or not bad]
    errors += [FieldError(*p) for p in check_request(request, bad, policy, api_key_id, inline)]
    if request["gcs_destination"] and "gcs_destination" not in bad:
        errors += _destination_errors(request["gcs_destination"], policy, api_key_id)
    metadata_size = len(json.dumps(request["metadata"], separators=(",", ":")).encode())
    if metadata_size > MAX_METADATA_BYTES:
        errors.append(
            FieldError(
                "$.metadata",
                f"must be at most {MAX_METADATA_BYTES} bytes as JSON (got {metadata_size})",
            )
        )
    if request["webhook_url"] is not None and "webhook_url" not in bad:
        try:
            check_webhook_url(
                request["webhook_url"],
                allow_http_loopback=policy.allow_http_loopback_webhooks,
                resolver=policy.resolver,
            )
        except LookupTimedOut:
            if errors:  # what is certainly wrong is worth knowing before any retry
                raise RequestInvalid(errors) from None
            raise  # no verdict: the caller decides (503 for a client, a line's rejection)
        except UnsafeURL as exc:
            errors.append(FieldError("$.webhook_url", str(exc)))
    if errors:
        raise RequestInvalid(errors)
    return request


def request_rules(profiles: Mapping[str, ModelProfile], default_model: str) -> dict[str, Any]:
    """The profile rules `validate_request` applies beyond the schema, as data, so that a
    client (the web page) can check a request before sending it. The server stays the
    authority; this only saves a round trip."""
    return {
        "default_model": default_model,
        "num_frames_step": LTX_FRAME_STEP,
        "models": {
            name: {
                "description": profile.description,
                "defaults": {field: profile.defaults[field] for field in PROFILE_DEFAULTED},
                "limits": {
                    field: {"min": bounds.min, "max": bounds.max}
                    for field, bounds in profile.limits.items()
                },
                "max_video_pixels": profile.max_video_pixels,
                "max_pixel_steps": profile.max_pixel_steps,
            }
            for name, profile in sorted(profiles.items())
        },
    }


def request_hash(request: Mapping[str, Any]) -> str:
    """Identify a validated request, so that an Idempotency-Key replay can be compared."""
    canonical = json.dumps(request, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()
