"""Reading and checking a request's conditioning media at submit, so that a bad input is
refused to its client, not discovered on a GPU.

Each gs:// medium's metadata is read first (it must exist and fit max_input_bytes before
any byte is downloaded), then exactly that generation is downloaded, hashed, sniffed and
decoded (`media_probe`). An inline data: URL is decoded, checked the same way, and stored
create-only in the inputs bucket under its digest, and the request names that gs:// URI
from then on: the stored request, its hash (Idempotency-Key replays), result.json and
webhooks never carry the bytes. An extend names a succeeded job of the same key, whose
video is read like any other input.

Each download and decode holds a turn (`inspection_slots`: a per-process bound, one at a
time per key). Each object of the inputs bucket a request pins has its custom_time
renewed (`input_retention`), so the lifecycle does not delete it from under the job.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import logging
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import google.cloud.storage as storage
from google.api_core import exceptions as gexc

from ltxv.core.jobs import Input, State
from ltxv.core.profiles import ConditioningLimits, ModelProfile
from ltxv.core.signing import split_gs_uri
from ltxv.core.store import JobStore
from ltxv.intake.conditions import conditioned, media_key, resolve_frame_index, trimmed_count
from ltxv.intake.field_errors import FieldError, RequestInvalid
from ltxv.intake.input_retention import keep, now_stamp
from ltxv.intake.inspection_slots import InspectionSlots
from ltxv.intake.media_probe import MediaInfo, MediaRefused, TooManyFrames, probe
from ltxv.intake.refusals import unavailable_on_error

log = logging.getLogger(__name__)

RPC_SECONDS = 30.0  # one metadata read, upload or download call


class InputRefused(ValueError):
    """This input cannot be used; the message says why, for the client."""


@dataclass(frozen=True)
class Resolved:
    """A request's conditioning media, checked: the job's `inputs`, and the job an extend
    continues (its parent_job_id)."""

    inputs: list[Input] = field(default_factory=list)
    extends: str | None = None


@dataclass(frozen=True)
class Medium:
    """A checked medium: what its `inputs` entry records (the bytes are not kept)."""

    uri: str
    generation: int
    size: int
    sha256: str
    info: MediaInfo


class InputInspector:
    def __init__(
        self,
        storage_client: storage.Client,
        store: JobStore,
        *,
        inputs_bucket: str,
        max_inspections: int = 2,
        wait_seconds: float = 5.0,
        inspection_seconds: float = 30.0,
    ) -> None:
        self.storage = storage_client
        self.store = store
        self.inputs_bucket = inputs_bucket
        self.inspection_seconds = inspection_seconds
        self.slots = InspectionSlots(max_inspections, wait_seconds)

    def resolve(
        self,
        request: dict[str, Any],
        profile: ModelProfile,
        api_key_id: str,
        inline: Mapping[str, bytes] | None = None,
    ) -> Resolved:
        """Check every medium `request` names (validated: each data: URL already names
        its stored copy, whose bytes `inline` holds by that URI) and pin each to one
        object generation, storing the inline ones. RequestInvalid names each input that
        cannot be used; InspectionsBusy or Unavailable when no verdict could be reached."""
        limits = profile.conditioning
        if limits is None or not conditioned(request):
            return Resolved()
        inline = inline or {}
        errors: list[FieldError] = []
        inputs: list[Input] = []
        for i, item in enumerate(request.get("conditions") or []):
            key = media_key(item)
            try:
                medium = self._condition(item[key], key, inline, limits, api_key_id)
            except InputRefused as exc:
                errors.append(FieldError(f"$.conditions[{i}].{key}", str(exc)))
                continue
            frame = resolve_frame_index(item["frame_index"], request["num_frames"])
            available = min(medium.info.frames, request["num_frames"] - frame)
            select = {"start": 0, "count": trimmed_count(available)}
            inputs.append(_entry(f"conditions[{i}]", medium, select, frame, item["strength"]))
        extends = None
        if request.get("extend"):
            try:
                inputs.append(self._extend(request["extend"], limits, api_key_id))
                extends = request["extend"]["job_id"]
            except RequestInvalid as exc:
                errors += exc.errors
        if errors:
            raise RequestInvalid(errors)
        return Resolved(inputs, extends)

    # --- conditions -----------------------------------------------------------------------

    def _condition(
        self,
        value: str,
        key: str,
        inline: Mapping[str, bytes],
        limits: ConditioningLimits,
        api_key_id: str,
    ) -> Medium:
        if value in inline:
            medium = self._store_inline(value, inline[value], limits, api_key_id)
        else:
            medium = self._read(*split_gs_uri(value), limits, api_key_id)
        if medium.info.kind != key:
            raise InputRefused(
                f"is a {medium.info.content_type}, not an {key}; name it as {medium.info.kind}"
                if key == "image"
                else f"is a {medium.info.content_type}, not a {key}; name it as image"
            )
        return medium

    def _store_inline(
        self, uri: str, data: bytes, limits: ConditioningLimits, api_key_id: str
    ) -> Medium:
        """Check inline bytes, then store them once at `uri`, the name validation gave them
        from their digest (conditions.inline_uri): the same data: URL sent again (a replay,
        a retry, another job) names the same object generation."""
        with self.slots.hold(api_key_id):
            info = self._probe(data, limits, time.monotonic() + self.inspection_seconds)
        digest = hashlib.sha256(data).hexdigest()
        _, name = split_gs_uri(uri)
        blob = self.storage.bucket(self.inputs_bucket).blob(name)
        blob.custom_time = now_stamp()  # the lifecycle counts from here (input_retention)
        with unavailable_on_error("inputs bucket"):
            try:
                blob.upload_from_string(
                    data, content_type=info.content_type, if_generation_match=0, timeout=RPC_SECONDS
                )
                stored: storage.Blob | None = blob  # the upload's answer: generation, md5
            except gexc.PreconditionFailed:
                # Stored by an earlier request: pinned again now, so kept alive again.
                stored = self.storage.bucket(self.inputs_bucket).get_blob(name, timeout=RPC_SECONDS)
                stored = keep(stored) if stored is not None else None
        md5 = base64.b64encode(hashlib.md5(data, usedforsecurity=False).digest()).decode()
        if stored is None or stored.size != len(data) or stored.md5_hash != md5:
            # Only intake writes inline/: another object there means something else did.
            raise InputRefused(f"{uri} holds other bytes; send it again")
        return Medium(uri, int(stored.generation or 0), len(data), digest, info)

    def _read(
        self,
        bucket: str,
        name: str,
        limits: ConditioningLimits,
        api_key_id: str,
        generation: int | None = None,
    ) -> Medium:
        """One object's current generation (or exactly `generation`), if it exists and is
        within the limits."""
        uri = f"gs://{bucket}/{name}"
        deadline = time.monotonic() + self.inspection_seconds
        with _reading(uri):
            blob = self.storage.bucket(bucket).get_blob(
                name, generation=generation, timeout=RPC_SECONDS
            )
        if blob is None and generation is not None:
            raise InputRefused(f"{uri} is no longer the video that job wrote")
        if blob is None:
            raise InputRefused(f"{uri} does not exist")
        size = int(blob.size or 0)
        if size > limits.max_input_bytes:
            raise InputRefused(f"is {size} bytes; the limit is {limits.max_input_bytes}")
        if size == 0:
            raise InputRefused(f"{uri} is empty")
        if bucket == self.inputs_bucket:
            blob = keep(blob)  # before the generation is pinned (input_retention)
        generation = int(blob.generation or 0)
        with self.slots.hold(api_key_id):
            pinned = self.storage.bucket(bucket).blob(name, generation=generation)
            # Replaced or deleted since its metadata was read: that version is gone.
            with _reading(uri, gone=f"{uri} changed while it was read; send the request again"):
                data = pinned.download_as_bytes(
                    end=limits.max_input_bytes,  # never more than the limit and a byte
                    timeout=max(1.0, min(RPC_SECONDS, deadline - time.monotonic())),
                )
            if len(data) > limits.max_input_bytes:
                raise InputRefused(f"is over {limits.max_input_bytes} bytes, the limit")
            info = self._probe(data, limits, deadline)
            digest = hashlib.sha256(data).hexdigest()
        return Medium(uri, generation, len(data), digest, info)

    # --- extend ---------------------------------------------------------------------------

    def _extend(self, extend: dict[str, Any], limits: ConditioningLimits, api_key_id: str) -> Input:
        job_id, frames = extend["job_id"], extend["frames"]
        with unavailable_on_error("job store"):
            job = self.store.get(job_id)
        outputs = (job.get("outputs") if job else None) or {}
        usable = job and job["api_key_id"] == api_key_id and job["state"] == State.SUCCEEDED
        if not usable or not outputs.get("video"):
            # Another key's job reads exactly like a missing one: ids leak nothing.
            raise RequestInvalid(
                [FieldError("$.extend.job_id", f"no succeeded job {job_id} of this API key")]
            )
        # An extend's joined video (outputs.extended) is the whole chain so far: continuing
        # it keeps one video growing.
        joined = bool(outputs.get("extended"))
        kind = "extended" if joined else "video"
        bucket, name = split_gs_uri(str(outputs[kind]))
        # Exactly what that job wrote: a name in a shared destination bucket may since hold
        # another's object. Jobs stored before generations were recorded read the current.
        written = outputs.get(f"{kind}_generation")
        try:
            medium = self._read(bucket, name, limits, api_key_id, int(written) if written else None)
        except InputRefused as exc:
            raise RequestInvalid([_unusable(job_id, joined, exc, limits)]) from exc
        if medium.info.kind != "video":
            raise RequestInvalid([FieldError("$.extend.job_id", f"job {job_id} has no video")])
        if frames > medium.info.frames:
            whole = "whole (extended) video's " if joined else ""
            message = f"must be at most job {job_id}'s {whole}{medium.info.frames} frames"
            message += f", got {frames}"
            raise RequestInvalid([FieldError("$.extend.frames", message)])
        select = {"start": medium.info.frames - frames, "count": frames}
        return _entry("extend", medium, select, 0, 1.0)

    # --- plumbing -------------------------------------------------------------------------

    @staticmethod
    def _probe(data: bytes, limits: ConditioningLimits, deadline: float) -> MediaInfo:
        try:
            return probe(data, limits, deadline=deadline)
        except MediaRefused as exc:
            raise InputRefused(str(exc)) from exc


@contextlib.contextmanager
def _reading(uri: str, gone: str | None = None) -> Iterator[None]:
    """A bucket the deployment may not read, or a name the store refuses, is the request's
    fault (or its bucket owner's): InputRefused. Any other backend error is an outage."""
    with unavailable_on_error("storage"):
        try:
            yield
        except (gexc.Forbidden, gexc.Unauthorized) as exc:
            message = f"{uri} cannot be read by this deployment (its owner must grant read)"
            raise InputRefused(message) from exc
        except gexc.BadRequest as exc:
            raise InputRefused(f"{uri} is not a valid object name") from exc
        except gexc.NotFound as exc:
            raise InputRefused(gone or f"{uri} does not exist") from exc


def _unusable(
    job_id: str, joined: bool, exc: InputRefused, limits: ConditioningLimits
) -> FieldError:
    if joined and isinstance(exc.__cause__, TooManyFrames):
        # Continuing only the job's own video would quietly drop the chain's start from
        # the joined output; say so instead.
        message = (
            f"job {job_id}'s whole video (extended.mp4, its chain of extends so far) has more "
            f"than {limits.max_video_frames} frames, the most this model can read back: the "
            "chain is too long to continue; download it and extend a shorter part of it "
            "(conditions with a video of its last frames)"
        )
        return FieldError("$.extend.job_id", message)
    which = "whole (extended) video" if joined else "video"
    return FieldError("$.extend.job_id", f"job {job_id}'s {which} cannot be used: {exc}")


def _entry(
    origin: str, medium: Medium, select: dict[str, int], frame_index: int, strength: float
) -> Input:
    return {
        "from": origin,
        "kind": medium.info.kind,
        "uri": medium.uri,
        "generation": medium.generation,
        "content_type": medium.info.content_type,
        "bytes": medium.size,
        "sha256": medium.sha256,
        "width": medium.info.width,
        "height": medium.info.height,
        "frames": medium.info.frames,
        "select": {"start": select["start"], "count": select["count"]},
        "frame_index": frame_index,
        "strength": strength,
    }
