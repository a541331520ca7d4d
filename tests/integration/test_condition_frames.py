"""Preparing conditioning frames stays fast for large inputs (gpu_worker/condition_frames.py):
a cropped frame over twice the output is shrunk first, then takes Lightricks' steps; one
within twice the output takes exactly Lightricks' path; a video's frames are prepared on a
thread pool, in order, with only a few full-size frames held at once. Compared with the
transcription of Lightricks' code in conditioning_media, from media stored in fake GCS."""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any

import numpy as np
import pytest
from google.cloud import storage

from gpu_worker import condition_frames, conditioning
from ltxv.core.inputs import upload_name

from . import conditioning_media as media
from .test_conditioning import assert_same_frame, pixels

pytestmark = pytest.mark.emulators

SIZE = (64, 96)  # output height, width: twice is 128 x 192


@pytest.fixture(scope="module")
def inputs_bucket(emulators) -> storage.Bucket:
    client = storage.Client(project=emulators.project)
    return media.ensure_bucket(client, emulators.settings.inputs)


def stored_video(bucket: storage.Bucket, frames: list[Any]) -> tuple[dict[str, Any], bytes]:
    data = media.video_bytes(frames)
    blob = media.store(bucket, upload_name("default", uuid.uuid4().hex), data, "video/mp4")
    entry = media.entry(
        blob, data, origin="conditions[0]", kind="video", content_type="video/mp4",
        size=frames[0].size, frames=len(frames), start=0, count=len(frames), frame_index=0,
    )  # fmt: skip
    return entry, data


def test_a_frame_within_twice_the_output_takes_lightricks_path_exactly():
    # Exactly twice (crop 192x128), and twice on the long side only (crop 192x120).
    for image in (media.picture(192, 128, seed=20), media.picture(192, 120, seed=21)):
        got = condition_frames.prepare(image, *SIZE)
        assert_same_frame(got, media.lightricks_frame(image, *SIZE))


def test_a_larger_frame_is_shrunk_to_twice_the_output_before_lightricks_steps():
    image = media.picture(500, 300, seed=22)  # crop 450x300: over 192x128
    got = condition_frames.prepare(image, *SIZE)
    assert_same_frame(got, media.reference_frame(image, *SIZE))
    # Not what Lightricks' own order gives at full size: the shrink took place.
    unshrunk = media.lightricks_frame(image, *SIZE)
    assert np.abs(pixels(got).astype(int) - unshrunk.astype(int)).max() > 1
    # And the cropped frame the shrink starts from is the centered one, as before.
    cropped = condition_frames.center_crop(image, *SIZE)
    assert condition_frames.shrink_to_scale(cropped, *SIZE).size == (192, 128)


@pytest.mark.parametrize("threads", [1, 4])
def test_a_large_videos_frames_reach_the_pipeline_prepared_and_in_order(
    inputs_bucket, monkeypatch, threads
):
    monkeypatch.setattr(condition_frames, "pool_size", lambda: threads)
    clip = media.moving(400, 260, 11, seed=23)  # each frame differs: order shows
    entry, data = stored_video(inputs_bucket, clip)

    (condition,) = conditioning.load_conditions(inputs_bucket.client, [entry], *SIZE)

    decoded = media.decoded_video(data)
    assert len(condition.video) == len(decoded) == 11
    for got, source in zip(condition.video, decoded, strict=True):
        assert_same_frame(got, media.reference_frame(source, *SIZE))
    swapped = media.reference_frame(decoded[1], *SIZE)
    assert np.abs(pixels(condition.video[0]).astype(int) - swapped.astype(int)).max() > 1


def test_the_pool_holds_at_most_twice_its_size_of_frames_not_yet_prepared(monkeypatch):
    """A long video is never all in memory at full size: decoding waits for the pool."""
    monkeypatch.setattr(condition_frames, "pool_size", lambda: 2)
    real = condition_frames.prepare
    lock, pending, most = threading.Lock(), [0], [0]

    def slow_prepare(frame: Any, height: int, width: int) -> Any:
        time.sleep(0.02)  # slower than decoding, as x264 at full size is
        result = real(frame, height, width)
        with lock:
            pending[0] -= 1
        return result

    monkeypatch.setattr(condition_frames, "prepare", slow_prepare)
    frames = [media.picture(120, 80, seed=s) for s in range(12)]

    def decode(submit: Any) -> list[Any]:
        futures = []
        for frame in frames:
            with lock:
                pending[0] += 1
                most[0] = max(most[0], pending[0])
            futures.append(submit(frame))
        return futures

    prepared = condition_frames.prepare_all(decode, *SIZE)

    assert len(prepared) == 12
    for got, frame in zip(prepared, frames, strict=True):
        assert_same_frame(got, media.lightricks_frame(frame, *SIZE))
    # Two running, two waiting, and the one just decoded, waiting for a slot.
    assert most[0] <= 2 * 2 + 1, most[0]


def test_a_failure_while_decoding_reaches_the_caller():
    def decode(submit: Any) -> list[Any]:
        submit(media.picture(96, 64, seed=30))
        raise conditioning.InputUnavailable("conditions[0]: gs://x/y could not be decoded")

    with pytest.raises(conditioning.InputUnavailable, match="could not be decoded"):
        condition_frames.prepare_all(decode, *SIZE)
