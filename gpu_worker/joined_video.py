"""The joined output of an extend: `extended.mp4`, the earlier video and its continuation
as one longer video, so a user who extends "to make a longer one" need not stitch.

Its frames: the earlier video's frames before the extend's selection (`select.start`),
then every frame of this job's video, at this job's fps: select.start + num_frames frames.
The frames the two share (the earlier video's last N) come from the new render, which was
conditioned on them. The earlier video is decoded from the bytes conditioning already read
and checked (the pinned generation, its sha256): it is not downloaded twice.

An earlier video of another size is center-cropped to this job's aspect ratio and resized
as conditioning frames are (gpu_worker/condition_frames.py), without the blur and the CRF
round trip: those prepare a frame for the model, not for a viewer. Frames are decoded and
encoded one at a time (Mp4Writer): host memory holds one earlier frame at a time, never the
whole prefix (at most the profile's max_video_frames - 1 = 256 frames of the earlier video).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from ltxv.core.jobs import Input, Job
from ltxv.core.media import VideoInfo

from . import condition_frames
from .conditioning import decode_frames
from .encoding import Mp4Writer

log = logging.getLogger(__name__)

EXTENDED_NAME = "extended.mp4"


def extend_input(job: Job) -> Input | None:
    """The job's `inputs` entry that an extend resolved to, if it has one."""
    return next((entry for entry in job.get("inputs") or [] if entry["from"] == "extend"), None)


def write_joined(
    job: Job, earlier: bytes | None, frames: np.ndarray, folder: Path, encoder: str
) -> VideoInfo | None:
    """Write folder/extended.mp4 for a job with an extend input (`earlier`: the bytes its
    conditioning read); None, and no file, for any other job."""
    entry = extend_input(job)
    if entry is None:
        return None
    if earlier is None:
        raise ValueError(f"job {job['job_id']} extends a video whose bytes were not kept")
    count, height, width, _ = frames.shape
    start = int(entry["select"]["start"])
    path = folder / EXTENDED_NAME
    with Mp4Writer(path, job["request"]["fps"], width, height, encoder=encoder) as writer:
        for image in decode_frames(earlier, entry, 0, start):
            same_size = image.size == (width, height)
            writer.write(
                np.asarray(image.convert("RGB"))
                if same_size
                else condition_frames.fit(image, height, width)
            )
        if writer.count != start:
            # Conditioning decoded past these frames already: the decoder disagrees with itself.
            raise RuntimeError(f"{entry['uri']} gave {writer.count} of its first {start} frames")
        for frame in frames:
            writer.write(frame)
    log.info(
        "joined video written",
        extra={"job_id": job["job_id"], "earlier_frames": start, "frames": start + count},
    )
    return writer.info
