"""Request-level rules of conditions and extend (no I/O), and what media_probe makes of
real and hostile bytes."""

from __future__ import annotations

import io
import struct
import time
import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ltxv.core import schemas
from ltxv.core.profiles import all_profiles
from ltxv.intake.conditions import MAX_INLINE_BYTES, SourceRefused, decode_data_url
from ltxv.intake.field_errors import RequestInvalid
from ltxv.intake.media_probe import MediaRefused, probe, sniff
from ltxv.intake.validation import IntakePolicy, validate_request
from tests import media_samples

PROFILES = all_profiles()
POLICY = IntakePolicy(
    profiles={n: PROFILES[n] for n in ("tiny-random", "ltx-video-2b", "ltx-video-2b-distilled")},
    default_model="tiny-random",
    outputs_bucket="ltxv-outputs",
    inputs_bucket="ltxv-inputs",
    input_buckets={"shared-media": frozenset({"default"})},
)
LIMITS = PROFILES["tiny-random"].conditioning
OWN = "gs://ltxv-inputs/keys/default/uploads/u1"
EXTEND = {"job_id": "a" * 26}


def body(**fields):
    return {"prompt": "a fox", "num_frames": 17, **fields}


def errors_of(request) -> dict[str, str]:
    with pytest.raises(RequestInvalid) as caught:
        validate_request(request, POLICY, api_key_id="default")
    return {e.path: e.message for e in caught.value.errors}


def test_defaults_are_filled_and_a_text_request_stays_as_it_was():
    request = validate_request(body(conditions=[{"image": OWN}]), POLICY, api_key_id="default")
    assert request["conditions"] == [{"image": OWN, "frame_index": 0, "strength": 1.0}]
    plain = validate_request(body(), POLICY, api_key_id="default")
    assert "conditions" not in plain and "extend" not in plain
    extended = validate_request(body(extend=EXTEND), POLICY, api_key_id="default")
    assert extended["extend"] == {"job_id": "a" * 26, "frames": 9}
    schemas.validator("job-request").validate(request)


@pytest.mark.parametrize(
    ("item", "path", "words"),
    [
        ({"image": OWN, "video": OWN}, "$.conditions[0]", "exactly one of image or video"),
        ({"frame_index": 8}, "$.conditions[0]", "exactly one of image or video"),
        ({"image": "https://example.com/a.png"}, "$.conditions[0].image", "gs://bucket/object"),
        ({"image": OWN, "frame_index": 3}, "$.conditions[0].frame_index", "use 0 or 8"),
        ({"image": OWN, "frame_index": 24}, "$.conditions[0].frame_index", "outside"),
        ({"image": OWN, "frame_index": -18}, "$.conditions[0].frame_index", "outside"),
        ({"image": OWN, "frame_index": -2}, "$.conditions[0].frame_index", "frame 15"),
        ({"image": OWN, "strength": 1.5}, "$.conditions[0].strength", "at most 1"),
        ({"image": OWN, "strength": -0.1}, "$.conditions[0].strength", "at least 0"),
        ({"image": "gs://ltxv-inputs/keys/other/uploads/u"}, "$.conditions[0].image", "only"),
        ({"image": "gs://ltxv-outputs/jobs/x/video.mp4"}, "$.conditions[0].image", "only"),
        ({"image": "gs://ltxv-inputs/keys/default/../other/u"}, "$.conditions[0].image", "'..'"),
        ({"image": "data:image/png,abc"}, "$.conditions[0].image", ";base64,"),
        ({"image": "data:image/png;base64,@@@"}, "$.conditions[0].image", "malformed"),
    ],
)
def test_each_bad_condition_is_named_by_item_and_field(item, path, words):
    errors = errors_of(body(conditions=[item]))
    assert path in errors, errors
    assert words in errors[path]


def test_an_allowed_bucket_is_allowed_for_its_keys_only():
    request = body(conditions=[{"image": "gs://shared-media/a.png"}])
    assert validate_request(request, POLICY, api_key_id="default")["conditions"]
    with pytest.raises(RequestInvalid) as caught:
        validate_request(request, POLICY, api_key_id="other")
    (error,) = caught.value.errors
    assert error.path == "$.conditions[0].image"
    assert "gs://ltxv-inputs/keys/other/" in error.message


def test_last_frame_is_on_the_grid():
    last = body(conditions=[{"image": OWN, "frame_index": -1}])
    (item,) = validate_request(last, POLICY, api_key_id="default")["conditions"]
    assert item["frame_index"] == -1  # stored as asked; the job's inputs hold frame 16


def test_a_model_that_cannot_condition_says_which_can():
    errors = errors_of(body(model="ltx-video-2b", conditions=[{"image": OWN}]))
    assert errors["$.conditions"] == (
        "model ltx-video-2b cannot condition; models that can: ltx-video-2b-distilled, tiny-random"
    )
    assert "$.extend" in errors_of(body(model="ltx-video-2b", extend=EXTEND))


def test_too_many_conditions_count_extend_as_one():
    four = [{"image": OWN, "frame_index": 8 * (i + 1)} for i in range(4)]
    errors = errors_of(body(num_frames=41, conditions=four, extend=EXTEND))
    assert "at most 4 conditions" in errors["$.conditions"]
    assert "(got 5)" in errors["$.conditions"]


@pytest.mark.parametrize(
    ("frames", "words"), [(8, "8k + 1"), (17, "fewer than num_frames (17)"), (25, "fewer")]
)
def test_extend_frames_are_8k_plus_1_and_fewer_than_num_frames(frames, words):
    errors = errors_of(body(extend={"job_id": "a" * 26, "frames": frames}))
    assert words in errors["$.extend.frames"]


def test_a_condition_at_frame_0_with_extend_is_refused():
    errors = errors_of(body(conditions=[{"image": OWN}], extend=EXTEND))
    assert "extend" in errors["$.conditions[0].frame_index"]
    ok = body(conditions=[{"image": OWN, "frame_index": -1}], extend=EXTEND)
    validate_request(ok, POLICY, api_key_id="default")


def test_extend_job_id_must_look_like_one():
    assert "job id" in errors_of(body(extend={"job_id": "nope"}))["$.extend.job_id"]


def test_data_url_cap_is_stated_and_enforced():
    fits = media_samples.data_url(b"x" * MAX_INLINE_BYTES)
    assert len(decode_data_url(fits)) == MAX_INLINE_BYTES
    with pytest.raises(SourceRefused, match=f"at most {MAX_INLINE_BYTES} bytes"):
        decode_data_url(media_samples.data_url(b"x" * (MAX_INLINE_BYTES + 1)))
    errors = errors_of(body(conditions=[{"image": media_samples.data_url(b"x" * 50_000)}]))
    assert "POST /v1/uploads" in errors["$.conditions[0].image"]


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.dictionaries(
            st.sampled_from(["image", "video", "frame_index", "strength", "x"]),
            st.one_of(
                st.integers(-2000, 2000),
                st.floats(-2, 2, allow_nan=False),
                st.sampled_from([OWN, "data:image/png;base64,AAAA", "gs://b/o", "data:", ""]),
            ),
        ),
        max_size=6,
    ),
    st.one_of(
        st.none(),
        st.fixed_dictionaries(
            {"job_id": st.just("a" * 26)}, optional={"frames": st.integers(-5, 300)}
        ),
    ),
    st.sampled_from([9, 17, 33, 121]),
)
def test_fuzz_conditions_are_accepted_or_refused_with_paths(conditions, extend, num_frames):
    request = body(num_frames=num_frames, conditions=conditions, extend=extend)
    try:
        resolved = validate_request(request, POLICY, api_key_id="default")
    except RequestInvalid as exc:
        assert all(e.path.startswith("$") and e.message for e in exc.errors)
    else:
        schemas.validator("job-request").validate(resolved)
        for item in resolved.get("conditions") or []:
            frame = (
                item["frame_index"] % num_frames if item["frame_index"] < 0 else item["frame_index"]
            )
            assert frame % 8 == 0 and frame < num_frames


# --- media_probe ---------------------------------------------------------------------------


def deadline() -> float:
    return time.monotonic() + 10


@pytest.mark.parametrize(
    ("data", "kind", "content_type", "frames"),
    [
        (media_samples.png(), "image", "image/png", 1),
        (media_samples.jpeg(), "image", "image/jpeg", 1),
        (media_samples.video(17), "video", "video/mp4", 17),
        (media_samples.video(9, container="webm"), "video", "video/webm", 9),
        (media_samples.video(10, container="mov"), "video", "video/quicktime", 10),
    ],
)
def test_real_media_are_measured(data, kind, content_type, frames):
    info = probe(data, LIMITS, deadline=deadline())
    assert (info.kind, info.content_type, info.frames) == (kind, content_type, frames)
    assert (info.width, info.height) == (64, 48)


def huge_png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height, with one tiny compressed row: what a
    decompression bomb looks like before it is expanded."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\0"))
        + chunk(b"IEND", b"")
    )


@pytest.mark.parametrize(
    ("data", "words"),
    [
        (b"hello, this is text named cat.png", "not an image or video"),
        (media_samples.png()[:60], "not a decodable image/png"),
        (huge_png_header(100_000, 100_000), "pixels; the limit is 16777216"),
        (huge_png_header(4097, 4096), "pixels; the limit is"),
        (media_samples.video(17)[:400], "not a decodable video/mp4"),
        (b"\x1a\x45\xdf\xa3" + b"\0" * 60, "not an image or video"),  # Matroska, not WebM
        (b"RIFF\0\0\0\0WEBPVP8 garbage", "not a decodable image/webp"),
    ],
)
def test_what_is_not_a_usable_medium_is_refused_with_a_reason(data, words):
    with pytest.raises(MediaRefused, match=words):
        probe(data, LIMITS, deadline=deadline())


def test_video_frames_and_time_are_capped():
    limits = type(LIMITS)(**{**vars(LIMITS), "max_video_frames": 16})
    with pytest.raises(MediaRefused, match="more than 16 frames"):
        probe(media_samples.video(17), limits, deadline=deadline())
    with pytest.raises(MediaRefused, match="too long"):
        probe(media_samples.video(17), LIMITS, deadline=time.monotonic() - 1)


def test_media_types_the_profile_leaves_out_are_refused():
    limits = type(LIMITS)(**{**vars(LIMITS), "media_types": ("image/png",)})
    with pytest.raises(MediaRefused, match="image/jpeg, which this model does not accept"):
        probe(media_samples.jpeg(), limits, deadline=deadline())


def test_type_comes_from_the_bytes():
    assert sniff(media_samples.png()) == "image/png"
    assert sniff(io.BytesIO(media_samples.video(9)).read()) == "video/mp4"
    assert sniff(b"GIF89a...") is None


def test_a_trimmed_videos_frames_are_the_ones_the_worker_decodes():
    # 25 packets, the first 8 cut by an edit list: the worker's decoder yields 17.
    from gpu_worker.conditioning import InputUnavailable, selected_frames

    data = media_samples.trimmed_video(frames=25, cut=8)
    info = probe(data, LIMITS, deadline=deadline())
    assert info.frames == 17

    def entry(count: int) -> dict:
        return {"from": "conditions[0]", "uri": "gs://b/o", "kind": "video",
                "select": {"start": 0, "count": count}}  # fmt: skip

    assert len(selected_frames(data, entry(info.frames))) == info.frames
    with pytest.raises(InputUnavailable, match="has 17 decodable frames"):
        selected_frames(data, entry(info.frames + 1))


def test_a_video_whose_frames_change_size_after_intake_looked_is_refused_by_the_worker():
    """Intake measures a video by its first frame; a later frame of another size (possible
    in H.264 and VP9) must not reach the frame preparation at that size."""
    from gpu_worker.conditioning import InputUnavailable, selected_frames

    entry = {"from": "conditions[0]", "uri": "gs://b/o", "kind": "video",
             "width": 64, "height": 48, "select": {"start": 0, "count": 17}}  # fmt: skip
    with pytest.raises(InputUnavailable, match="changes its frame size at frame 9"):
        selected_frames(media_samples.resizing_h264(), entry)
    assert len(selected_frames(media_samples.resizing_h264(then=(64, 48)), entry)) == 17


def test_a_big_cmyk_progressive_jpeg_is_measured_at_full_size_and_checked_whole():
    from PIL import Image

    out = io.BytesIO()
    Image.new("CMYK", (1600, 1200), (10, 200, 30, 0)).save(out, "JPEG", progressive=True)
    data = out.getvalue()
    info = probe(data, LIMITS, deadline=deadline())
    assert (info.width, info.height, info.content_type) == (1600, 1200, "image/jpeg")
    # Decoded at 1/8 scale, but every byte of the stream still is: a cut one is refused.
    with pytest.raises(MediaRefused, match="not a decodable image/jpeg"):
        probe(data[: len(data) * 2 // 3], LIMITS, deadline=deadline())
