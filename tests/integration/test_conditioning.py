"""The worker renders with the job's conditioning inputs (issue 17, item 4): media stored in
fake GCS, read at the recorded generation, prepared as Lightricks' inference prepares them,
and handed to the real LTXConditionPipeline (tiny-random on the CPU). The pipeline is spied
on at its own __call__ (the real one runs): what it received is compared with an independent
computation from the stored bytes."""

from __future__ import annotations

import dataclasses
import functools
import uuid
from typing import Any

import numpy as np
import pytest
from google.cloud import storage

from gpu_worker import conditioning, tiny_random
from gpu_worker.conditioning import InputUnavailable
from gpu_worker.generation import Renderer, RenderRefused
from ltxv.core.inputs import upload_name
from ltxv.core.profiles import all_profiles

from . import conditioning_media as media

pytestmark = pytest.mark.emulators

PROFILE = all_profiles()["tiny-random"]
REQUEST = {
    "prompt": "a red car on a city street at night",
    "negative_prompt": "",
    "seed": 7,
    "height": 64,
    "width": 96,
    "num_frames": 17,
    "num_inference_steps": 2,
    "fps": 8,
}
SIZE = (REQUEST["height"], REQUEST["width"])


@pytest.fixture(scope="module")
def renderer(tmp_path_factory: pytest.TempPathFactory) -> Renderer:
    model_dir = tiny_random.ensure(tmp_path_factory.getbasetemp() / "tiny-random")
    renderer = Renderer(PROFILE, model_dir=model_dir)
    renderer.load()
    return renderer


@pytest.fixture(scope="module")
def inputs_bucket(emulators) -> storage.Bucket:
    client = storage.Client(project=emulators.project)
    return media.ensure_bucket(client, emulators.settings.inputs)


@pytest.fixture
def received(renderer: Renderer, monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """The `conditions` each call of the real pipeline got (None: none passed)."""
    cls = type(renderer.pipe)
    real = cls.__call__
    calls: list[Any] = []

    @functools.wraps(real)
    def spy(self: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append(kwargs.get("conditions"))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(cls, "__call__", spy)
    return calls


def put_image(bucket, image, *, fmt="PNG", frame_index=0, strength=1.0, origin="conditions[0]"):
    data = media.image_bytes(image, fmt)
    content_type = "image/png" if fmt == "PNG" else "image/jpeg"
    blob = media.store(bucket, upload_name("default", uuid.uuid4().hex), data, content_type)
    return media.entry(
        blob, data, origin=origin, kind="image", content_type=content_type, size=image.size,
        frames=1, start=0, count=1, frame_index=frame_index, strength=strength,
    )  # fmt: skip


def put_video(bucket, frames, *, start, count, frame_index, strength=1.0, origin="conditions[0]"):
    data = media.video_bytes(frames)
    blob = media.store(bucket, upload_name("default", uuid.uuid4().hex), data, "video/mp4")
    return media.entry(
        blob, data, origin=origin, kind="video", content_type="video/mp4", size=frames[0].size,
        frames=len(frames), start=start, count=count, frame_index=frame_index, strength=strength,
    )  # fmt: skip


def job_with(inputs: list[dict[str, Any]], **request: Any) -> dict[str, Any]:
    return {"job_id": "x" * 26, "request": {**REQUEST, **request}, "inputs": inputs}


def render(renderer: Renderer, client: storage.Client, job: dict[str, Any]) -> np.ndarray:
    conditions = conditioning.for_job(client, job, renderer)
    return renderer.render(job["request"], conditions).frames


def stored(bucket: storage.Bucket, entry: dict[str, Any]) -> bytes:
    return bucket.blob(entry["uri"].split("/", 3)[3]).download_as_bytes()


def pixels(image: Any) -> np.ndarray:
    return np.asarray(image.convert("RGB"))


def assert_same_frame(got: Any, expected: np.ndarray) -> None:
    """Equal to the reference up to float summation order: at most one level, rarely."""
    diff = np.abs(pixels(got).astype(int) - expected.astype(int))
    assert got.size == (expected.shape[1], expected.shape[0])
    assert diff.max() <= 1 and (diff > 0).mean() < 0.01, (diff.max(), (diff > 0).mean())


# -- what reaches the pipeline --------------------------------------------------------------


def test_the_pipeline_receives_exactly_the_conditions_the_inputs_name(
    renderer, inputs_bucket, received
):
    wide, tall = media.picture(150, 70, seed=1), media.picture(60, 130, seed=2)
    clip = media.moving(80, 80, 9, seed=3)
    inputs = [
        put_image(inputs_bucket, wide, frame_index=0, strength=1.0),
        put_image(inputs_bucket, tall, fmt="JPEG", frame_index=16, strength=0.6,
                  origin="conditions[1]"),
        put_video(inputs_bucket, clip, start=0, count=9, frame_index=8, strength=0.8,
                  origin="conditions[2]"),
    ]  # fmt: skip
    frames = render(renderer, inputs_bucket.client, job_with(inputs))
    assert frames.shape == (17, *SIZE, 3)
    (conditions,) = received
    assert [(c.frame_index, c.strength) for c in conditions] == [(0, 1.0), (16, 0.6), (8, 0.8)]
    assert conditions[0].video is None and conditions[1].video is None
    assert conditions[2].image is None and len(conditions[2].video) == 9
    assert_same_frame(conditions[0].image, media.lightricks_frame(wide, *SIZE))
    tall_decoded = media.Image.open(media.io.BytesIO(stored(inputs_bucket, inputs[1])))
    assert_same_frame(conditions[1].image, media.lightricks_frame(tall_decoded, *SIZE))
    stored_clip = media.decoded_video(stored(inputs_bucket, inputs[2]))
    for got, source in zip(conditions[2].video, stored_clip, strict=True):
        assert_same_frame(got, media.lightricks_frame(source, *SIZE))


def test_prepared_frames_are_cropped_to_the_output_aspect_then_resized():
    """A band of colour outside the centered crop never reaches the model: a wide image's
    left and right edges, a tall one's top and bottom."""
    from gpu_worker.condition_frames import prepare

    wide = np.full((64, 300, 3), 128, np.uint8)
    wide[:, :50], wide[:, -50:] = (255, 0, 0), (0, 0, 255)
    out = pixels(prepare(media.Image.fromarray(wide), 64, 96))
    assert out.shape == (64, 96, 3)
    assert np.abs(out.astype(int) - 128).max() <= 6  # grey only; CRF moves a few levels
    tall = np.full((300, 96, 3), 128, np.uint8)
    tall[:40], tall[-40:] = (0, 255, 0), (255, 0, 255)
    assert np.abs(pixels(prepare(media.Image.fromarray(tall), 64, 96)).astype(int) - 128).max() <= 6


# -- what the conditions do to the video ----------------------------------------------------


def test_a_condition_changes_the_video_and_the_same_condition_gives_it_again(
    renderer, inputs_bucket
):
    client = inputs_bucket.client
    plain = renderer.render(REQUEST).frames
    first = put_image(inputs_bucket, media.picture(120, 80, seed=4))
    conditioned = render(renderer, client, job_with([first]))
    assert np.abs(conditioned.astype(int) - plain.astype(int)).mean() > 1.0
    again = render(renderer, client, job_with([dict(first)]))
    assert np.array_equal(conditioned, again)
    other = put_image(inputs_bucket, media.picture(120, 80, seed=5))
    another = render(renderer, client, job_with([other]))
    assert np.abs(another.astype(int) - conditioned.astype(int)).mean() > 1.0


def test_first_and_last_keyframes_render(renderer, inputs_bucket, received):
    last = REQUEST["num_frames"] - 1
    inputs = [
        put_image(inputs_bucket, media.picture(96, 64, seed=6), frame_index=0),
        put_image(inputs_bucket, media.picture(96, 64, seed=7), frame_index=last,
                  origin="conditions[1]"),
    ]  # fmt: skip
    frames = render(renderer, inputs_bucket.client, job_with(inputs))
    assert frames.shape == (17, *SIZE, 3)
    assert [c.frame_index for c in received[0]] == [0, 16]
    only_first = render(renderer, inputs_bucket.client, job_with(inputs[:1]))
    assert not np.array_equal(frames, only_first)  # the last keyframe took part


def test_a_video_condition_renders(renderer, inputs_bucket, received):
    clip = media.moving(96, 64, 9, seed=8)
    entry = put_video(inputs_bucket, clip, start=0, count=9, frame_index=0)
    frames = render(renderer, inputs_bucket.client, job_with([entry]))
    assert frames.shape == (17, *SIZE, 3)
    assert len(received[0][0].video) == 9


def test_an_extend_shaped_input_pins_the_videos_last_frames_at_frame_zero(
    renderer, inputs_bucket, received
):
    """What extend resolves to: an earlier video's last N frames, at frame 0."""
    earlier = media.moving(96, 64, 25, seed=9)
    entry = put_video(inputs_bucket, earlier, start=16, count=9, frame_index=0, origin="extend")
    frames = render(renderer, inputs_bucket.client, job_with([entry]))
    assert frames.shape == (17, *SIZE, 3)
    got = received[0][0].video
    decoded = media.decoded_video(stored(inputs_bucket, entry))
    assert len(decoded) == 25 and len(got) == 9
    for frame, source in zip(got, decoded[16:25], strict=True):
        assert_same_frame(frame, media.lightricks_frame(source, *SIZE))


def test_a_model_without_conditions_refuses_the_job_before_reading_its_inputs(
    tmp_path_factory, inputs_bucket, monkeypatch
):
    """A job with inputs, for a profile whose pipeline has no `conditions` (LTXPipeline; a
    job stored before its profile changed): refused as such, and nothing is read."""
    model_dir = tiny_random.ensure(tmp_path_factory.getbasetemp() / "tiny-random")
    plain = dataclasses.replace(
        PROFILE, pipeline=all_profiles()["ltx-video-2b"].pipeline, conditioning=None
    )
    entry = put_image(inputs_bucket, media.picture(64, 64, seed=13))
    read: list[str] = []
    monkeypatch.setattr(conditioning, "read_input", lambda client, e: read.append(e["uri"]))
    with pytest.raises(RenderRefused, match="cannot render conditions") as caught:
        conditioning.for_job(
            inputs_bucket.client, job_with([entry]), Renderer(plain, model_dir=model_dir)
        )
    assert not isinstance(caught.value, InputUnavailable)
    assert read == []


# -- inputs that are not as recorded ----------------------------------------------------------


def test_a_replaced_object_is_input_unavailable_not_read(inputs_bucket):
    entry = put_image(inputs_bucket, media.picture(64, 64, seed=10))
    name = entry["uri"].split("/", 3)[3]
    inputs_bucket.blob(name).upload_from_string(media.image_bytes(media.picture(64, 64, seed=11)))
    with pytest.raises(InputUnavailable, match="no longer exists") as caught:
        conditioning.read_input(inputs_bucket.client, entry)
    assert caught.value.code == "input_unavailable"
    assert entry["from"] in str(caught.value)


@pytest.mark.parametrize("change", [{"sha256": "0" * 64}, {"bytes": 10}, {"bytes": 10**6}], ids=str)
def test_bytes_that_are_not_what_was_checked_are_input_unavailable(inputs_bucket, change):
    entry = {**put_image(inputs_bucket, media.picture(64, 64, seed=12)), **change}
    with pytest.raises(InputUnavailable, match="size or sha256 differs"):
        conditioning.read_input(inputs_bucket.client, entry)


def test_a_video_shorter_than_its_selection_is_input_unavailable(inputs_bucket):
    entry = put_video(inputs_bucket, media.moving(32, 32, 9, seed=13), start=8, count=9,
                      frame_index=0)  # fmt: skip
    with pytest.raises(InputUnavailable, match="has 9 decodable frames"):
        conditioning.load_conditions(inputs_bucket.client, [entry], *SIZE)
