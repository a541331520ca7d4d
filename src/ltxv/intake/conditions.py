"""What a request's `conditions` and `extend` may say, checked without any I/O.

Against the model profile (can it condition at all, how many items) and the request
itself (each frame index resolved onto LTX's frame grid inside the video, extend's frame
count), and where each medium may come from: the inputs bucket under the caller's own
prefix, a bucket the deployment allows the caller, or a small inline data: URL. Reading
and decoding the media is `input_inspection`'s part, once all of this holds.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from jsonschema import ValidationError

from ltxv.core.inputs import inline_name, input_prefix
from ltxv.core.profiles import ModelProfile
from ltxv.core.signing import split_gs_uri

CONDITION_FIELDS = ("conditions", "extend")
# LTX's VAE compresses time 8x: a valid length is 8k + 1 frames, and frames are pinned
# to 0 or a multiple of 8.
LTX_FRAME_STEP = 8
DEFAULT_FRAME_INDEX = 0
DEFAULT_STRENGTH = 1.0
DEFAULT_EXTEND_FRAMES = 9
# A data: URL rides in the request body (LTXV_MAX_BODY_BYTES, 64 KiB by default): its
# decoded bytes are capped well inside that, and anything bigger is uploaded.
MAX_INLINE_BYTES = 48 * 1024
MAX_OBJECT_NAME_BYTES = 1024
DATA_URL = re.compile(r"^data:([a-z]+/[a-z0-9.+-]+)?((?:;[a-z0-9-]+=[^;,]*)*);base64,", re.I)
MEDIA_PATH = re.compile(r"^\$\.conditions\[\d+\]\.(image|video)$")


@dataclass(frozen=True)
class Source:
    """Where a condition's medium is: a gs:// object, or inline bytes."""

    bucket: str = ""
    name: str = ""
    inline: bytes | None = None


class SourceRefused(ValueError):
    pass


def schema_message(error: ValidationError) -> str | None:
    """Readable messages for the schema rules of conditions and extend (jsonschema's own
    would quote the item, data: URL and all)."""
    path = error.json_path
    if error.validator == "oneOf" and re.fullmatch(r"\$\.conditions\[\d+\]", path):
        return "must have exactly one of image or video"
    if error.validator == "maxLength" and MEDIA_PATH.match(path):
        return _too_big_inline()
    if error.validator == "pattern" and MEDIA_PATH.match(path):
        return "must be a gs://bucket/object URI or a data: URL"
    if error.validator == "pattern" and path == "$.extend.job_id":
        return "must be a job id (26 characters: a-z and 2-7)"
    return None


def media_key(item: dict[str, Any]) -> str:
    """Which of image or video a (schema-valid) condition item names."""
    return "image" if "image" in item else "video"


def conditioned(request: dict[str, Any]) -> bool:
    """Whether a validated request names media that must be read before it is accepted."""
    return bool(request.get("conditions") or request.get("extend"))


def inline_uri(inputs_bucket: str, api_key_id: str, data: bytes) -> str:
    """Where a data: URL's bytes are stored, and what the request names from then on: a
    pure function of the bytes, so the stored form of a request is known before any I/O."""
    return f"gs://{inputs_bucket}/{inline_name(api_key_id, hashlib.sha256(data).hexdigest())}"


def source_places(policy: Any, api_key_id: str) -> dict[str, Any]:
    """parse_source's keyword arguments for this caller under `policy` (IntakePolicy)."""
    return {
        "inputs_bucket": policy.inputs_bucket,
        "input_buckets": policy.input_buckets,
        "api_key_id": api_key_id,
    }


def resolve_frame_index(frame_index: int, num_frames: int) -> int:
    """-1 is the last frame (num_frames - 1), -9 the one 8 before, and so on."""
    return frame_index if frame_index >= 0 else num_frames + frame_index


def trimmed_count(available: int) -> int:
    """The longest 8k + 1 run within `available` frames (diffusers'
    trim_conditioning_sequence): 1 to 8 -> 1, 9 to 16 -> 9, ..."""
    return (available - 1) // LTX_FRAME_STEP * LTX_FRAME_STEP + 1


def frame_count_problem(frames: int) -> str | None:
    """What is wrong with `frames` as a video's length, or None if it is 8k + 1."""
    if not (frames - 1) % LTX_FRAME_STEP:
        return None
    lower = trimmed_count(frames)
    return f"must be 8k + 1 (e.g. {lower} or {lower + LTX_FRAME_STEP}), got {frames}"


def parse_source(
    value: str, *, inputs_bucket: str, input_buckets: Mapping[str, frozenset[str]], api_key_id: str
) -> Source:
    """The medium a condition names, if the key may use it; else SourceRefused."""
    if value.startswith("data:"):
        return Source(inline=decode_data_url(value))
    try:
        bucket, name = split_gs_uri(value)
    except ValueError:
        bucket, name = value.removeprefix("gs://"), ""  # refused below: no object path
    own = input_prefix(api_key_id)
    if bucket == inputs_bucket:
        allowed = name.startswith(own)
    else:
        allowed = api_key_id in input_buckets.get(bucket, frozenset())
    if not allowed:
        places = [f"gs://{inputs_bucket}/{own}"] + [
            f"gs://{b}/" for b, keys in sorted(input_buckets.items()) if api_key_id in keys
        ]
        raise SourceRefused(
            f"this API key may read conditions only from {' or '.join(places)} "
            "(POST /v1/uploads gives a URI there), or send a small data: URL"
        )
    if not name or any(part in ("", ".", "..") for part in name.split("/")):
        raise SourceRefused("object path must not be empty or contain empty, '.' or '..' segments")
    if len(name.encode("utf-8")) > MAX_OBJECT_NAME_BYTES:
        raise SourceRefused(f"object name must be at most {MAX_OBJECT_NAME_BYTES} bytes")
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in name):
        raise SourceRefused("object name must not contain control characters")
    return Source(bucket=bucket, name=name)


def decode_data_url(value: str) -> bytes:
    """The bytes of a base64 data: URL, at most MAX_INLINE_BYTES. Its declared media type
    is not trusted: the bytes are sniffed like any other input's."""
    match = DATA_URL.match(value)
    if not match:
        raise SourceRefused("a data: URL must be data:<media type>;base64,<data>")
    payload = value[match.end() :]
    if len(payload) > (MAX_INLINE_BYTES + 2) // 3 * 4:
        raise SourceRefused(_too_big_inline())
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise SourceRefused(f"the data: URL's base64 is malformed ({exc})") from exc
    if not data:
        raise SourceRefused("the data: URL holds no bytes")
    if len(data) > MAX_INLINE_BYTES:
        raise SourceRefused(_too_big_inline())
    return data


def _too_big_inline() -> str:
    return (
        f"a data: URL may hold at most {MAX_INLINE_BYTES} bytes ({MAX_INLINE_BYTES // 1024} KiB) "
        "decoded; upload bigger media (POST /v1/uploads) and name its gs:// URI"
    )


def conditioning_models(profiles: Mapping[str, ModelProfile]) -> list[str]:
    return sorted(name for name, profile in profiles.items() if profile.conditioning)


def condition_problems(
    request: dict[str, Any],
    profile: ModelProfile,
    profiles: Mapping[str, ModelProfile],
    sources: Mapping[str, Any],
    inline: dict[str, bytes] | None = None,
) -> list[tuple[str, str]]:
    """(path, message) for each rule `request`'s conditions and extend break, with the
    defaults filled into `request` (frame_index, strength, extend.frames) and each data:
    URL replaced by the gs:// URI of its stored copy (`inline_uri`), whose bytes go into
    `inline` by that URI: the request is in its stored form (and hash) from here on, and
    the bytes are decoded once. `sources` holds parse_source's keyword arguments."""
    conditions: list[dict[str, Any]] | None = request.get("conditions")
    extend: dict[str, Any] | None = request.get("extend")
    if conditions is None and extend is None:
        return []
    limits = profile.conditioning
    if limits is None:
        field = "conditions" if conditions is not None else "extend"
        able = ", ".join(conditioning_models(profiles)) or "none are deployed"
        return [(f"$.{field}", f"model {profile.name} cannot condition; models that can: {able}")]
    problems: list[tuple[str, str]] = []
    num_frames = request["num_frames"]
    count = len(conditions or []) + (extend is not None)
    if count > limits.max_conditions:
        problems.append(
            (
                "$.conditions" if conditions else "$.extend",
                f"at most {limits.max_conditions} conditions for model {profile.name}, extend "
                f"counting as one (got {count})",
            )
        )
    for i, item in enumerate(conditions or []):
        item.setdefault("frame_index", DEFAULT_FRAME_INDEX)
        item.setdefault("strength", DEFAULT_STRENGTH)
        item["frame_index"] = int(item["frame_index"])
        item["strength"] = float(item["strength"])
        path = f"$.conditions[{i}]"
        problems += _frame_problems(path, item["frame_index"], num_frames, extend is not None)
        key = media_key(item)
        try:
            source = parse_source(item[key], **sources)
        except SourceRefused as exc:
            problems.append((f"{path}.{key}", str(exc)))
            continue
        if source.inline is not None:
            item[key] = inline_uri(sources["inputs_bucket"], sources["api_key_id"], source.inline)
            if inline is not None:
                inline[item[key]] = source.inline
    if extend is not None:
        extend.setdefault("frames", DEFAULT_EXTEND_FRAMES)
        frames = extend["frames"] = int(extend["frames"])
        if (problem := frame_count_problem(frames)) is not None:
            problems.append(("$.extend.frames", problem))
        elif frames >= num_frames:
            problems.append(
                ("$.extend.frames", f"must be fewer than num_frames ({num_frames}), got {frames}")
            )
    return problems


def _frame_problems(
    path: str, frame_index: int, num_frames: int, extending: bool
) -> list[tuple[str, str]]:
    frame = resolve_frame_index(frame_index, num_frames)
    where = f"{frame_index}" if frame_index == frame else f"{frame_index} (frame {frame})"
    if not 0 <= frame < num_frames:
        return [
            (
                f"{path}.frame_index",
                f"{where} is outside the video's frames 0 to {num_frames - 1} "
                f"(-{num_frames} to -1)",
            )
        ]
    if frame % LTX_FRAME_STEP:
        lower = frame // LTX_FRAME_STEP * LTX_FRAME_STEP
        upper = min(lower + LTX_FRAME_STEP, num_frames - 1)
        return [
            (
                f"{path}.frame_index",
                f"{where} is not on LTX's frame grid (0 or a multiple of 8): "
                f"use {lower} or {upper}",
            )
        ]
    if extending and frame == 0:
        return [
            (
                f"{path}.frame_index",
                "frame 0 is where extend's frames go; pin this condition to a later frame",
            )
        ]
    return []


def check_request(
    request: dict[str, Any],
    bad: set[str],
    policy: Any,
    api_key_id: str,
    inline: dict[str, bytes] | None = None,
) -> list[tuple[str, str]]:
    """validate_request's step for conditions and extend: copies them into `request`
    (a field the schema refused, or null, is left out: a text-to-video request
    is stored, and hashed, exactly as before conditions existed) and checks them
    (condition_problems; `inline` gets the data: URLs' bytes).
    `policy` is validation.IntakePolicy (its inputs buckets and profiles)."""
    for field in CONDITION_FIELDS:
        value = request.pop(field, None)
        if value is not None and field not in bad:
            request[field] = [dict(v) for v in value] if field == "conditions" else dict(value)
    profile = policy.profiles[request["model"]]
    sources = source_places(policy, api_key_id)
    return condition_problems(request, profile, policy.profiles, sources, inline)
