"""The job's conditioning media, read from GCS and made into diffusers' LTXVideoCondition.

Intake resolved and checked each medium when it accepted the job and pinned it to one
object generation (the job's `inputs`, job.schema.json#/$defs/input). The worker reads
exactly that generation, checks its size and sha256 against what intake recorded, decodes
only the frames the entry selects, and prepares each frame as Lightricks' inference does
(gpu_worker/condition_frames.py). A medium that is gone, replaced or not what was checked
fails the job with `input_unavailable`: another attempt would read the same.
"""

from __future__ import annotations

import hashlib
import io
import logging
from collections.abc import Callable, Iterator
from functools import partial
from typing import Any

from google.api_core import exceptions as gexc

from ltxv.core.jobs import Input, Job
from ltxv.core.signing import split_gs_uri

from . import condition_frames
from .generation import Renderer, RenderRefused

log = logging.getLogger(__name__)


class InputUnavailable(RenderRefused):
    """A conditioning medium is not there as the job recorded it (deleted, overwritten,
    not readable by the worker, or not the bytes intake checked)."""

    code = "input_unavailable"


def for_job(
    client: Any, job: Job, renderer: Renderer, downloads: dict[str, bytes] | None = None
) -> list[Any]:
    """The job's conditions at the size its render will have; `downloads` gets the bytes
    of the video an extend continues, under "extend" (its joined output decodes them again);
    the other inputs' bytes are let go as soon as their frames are prepared."""
    params = renderer.parameters(job["request"])
    if job.get("inputs"):
        # Intake refuses conditions for such a model; a job stored before a profile change
        # is refused here, before its media are read and prepared.
        renderer.refuse_unless_conditioned()
    for entry in job.get("inputs") or []:
        # Intake resolves frame_index inside the video; a job written by other means must
        # not be rendered with its condition quietly outside it.
        if not 0 <= entry["frame_index"] < params["num_frames"]:
            raise RenderRefused(
                f"{entry['from']}: frame_index {entry['frame_index']} is outside the video "
                f"(frames 0 to {params['num_frames'] - 1})"
            )
    inputs = job.get("inputs")
    return load_conditions(client, inputs, params["height"], params["width"], downloads)


def load_conditions(
    client: Any,
    inputs: list[Input] | None,
    height: int,
    width: int,
    downloads: dict[str, bytes] | None = None,
) -> list[Any]:
    """LTXVideoCondition for each input, in the inputs' order, frames at height x width."""
    from diffusers.pipelines.ltx.pipeline_ltx_condition import LTXVideoCondition

    conditions = []
    for entry in inputs or []:
        data = read_input(client, entry)
        if downloads is not None and entry["from"] == "extend":
            downloads["extend"] = data  # only this one is needed after the render
        frames = condition_frames.prepare_all(partial(selected_frames, data, entry), height, width)
        media = {"image": frames[0]} if entry["kind"] == "image" else {"video": frames}
        conditions.append(
            LTXVideoCondition(
                **media, frame_index=int(entry["frame_index"]), strength=float(entry["strength"])
            )
        )
        log.info(
            "conditioning input loaded",
            extra={"uri": entry["uri"], "generation": entry["generation"], "frames": len(frames)},
        )
    return conditions


def read_input(client: Any, entry: Input) -> bytes:
    """The bytes of exactly the recorded generation, checked against its size and digest."""
    uri = entry["uri"]
    bucket, name = split_gs_uri(uri)
    blob = client.bucket(bucket).blob(name, generation=int(entry["generation"]))
    size = int(entry["bytes"])
    try:
        # One byte past the recorded size: a longer object shows without reading it all.
        data = blob.download_as_bytes(start=0, end=size, timeout=60)
    except gexc.NotFound as exc:
        raise InputUnavailable(
            f"{entry['from']}: {uri} generation {entry['generation']} no longer exists"
        ) from exc
    except gexc.Forbidden as exc:
        raise InputUnavailable(f"{entry['from']}: the worker may not read {uri}") from exc
    if len(data) != size or hashlib.sha256(data).hexdigest() != entry["sha256"]:
        raise InputUnavailable(
            f"{entry['from']}: {uri} generation {entry['generation']} is not the object "
            "that was checked when the job was accepted (size or sha256 differs)"
        )
    return data


def selected_frames(
    data: bytes, entry: Input, prepare: Callable[[Any], Any] = lambda frame: frame
) -> list[Any]:
    """The entry's selected frames (PIL images) decoded from `data`, each through `prepare`
    as it is decoded: a long video at full size is never all in memory at once."""
    start, count = int(entry["select"]["start"]), int(entry["select"]["count"])
    frames = [prepare(frame) for frame in decode_frames(data, entry, start, count)]
    if len(frames) != count:
        raise InputUnavailable(
            f"{entry['from']}: {entry['uri']} has {start + len(frames)} decodable frames; "
            f"the job uses frames {start} to {start + count - 1}"
        )
    return frames


def decode_frames(data: bytes, entry: Input, start: int, count: int) -> Iterator[Any]:
    """Frames `start` to `start + count - 1` of the entry's medium, as PIL images, one at a
    time; InputUnavailable if it does not decode."""
    import av
    from PIL import Image

    try:
        if entry["kind"] == "image":
            with Image.open(io.BytesIO(data)) as image:
                if start == 0 and count == 1:
                    image.load()
                    yield image.convert("RGB")
            return
        size = (entry.get("width"), entry.get("height"))  # as intake checked it
        with av.open(io.BytesIO(data), "r") as container:
            for index, frame in enumerate(container.decode(container.streams.video[0])):
                if index >= start + count:
                    return
                if None not in size and (frame.width, frame.height) != size:
                    # H.264 and VP9 may change size midstream; intake saw the first frame.
                    raise InputUnavailable(
                        f"{entry['from']}: {entry['uri']} changes its frame size at frame "
                        f"{index} ({frame.width}x{frame.height}, not {size[0]}x{size[1]})"
                    )
                if index >= start:
                    yield frame.to_image()
    except (OSError, ValueError, av.FFmpegError) as exc:
        raise InputUnavailable(
            f"{entry['from']}: {entry['uri']} could not be decoded ({type(exc).__name__})"
        ) from exc
