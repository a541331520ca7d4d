"""`ltxv submit|extend --image/--video …`: how the flags pair into `conditions`, and the
mistakes refused before anything is uploaded or sent."""

from __future__ import annotations

import pytest

from ltxv.cli import build_parser
from ltxv.cli.common import UserError
from ltxv.cli.conditions import conditions_from_args
from ltxv.core.media_types import sniff


@pytest.fixture
def files(tmp_path):
    for name in ("first.png", "last.png", "clip.mp4"):
        (tmp_path / name).write_bytes(b"x")
    return tmp_path


def conditions(*argv: str, command: str = "submit"):
    uploads: list[str] = []

    def upload(path: str) -> str:
        uploads.append(path)
        return f"gs://inputs/keys/k/uploads/{len(uploads)}"

    head = [command, "a fox"] if command == "submit" else [command, "a" * 26]
    args = build_parser().parse_args([*head, *argv])
    return conditions_from_args(args, upload), uploads


def test_first_and_last_keyframes_pair_by_order_and_upload_local_files(files):
    first, last = str(files / "first.png"), str(files / "last.png")
    found, uploads = conditions(
        "--image", first, "--image-at", "0", "--image", last, "--image-at", "-1"
    )
    assert uploads == [first, last]
    assert found == [
        {"image": "gs://inputs/keys/k/uploads/1", "frame_index": 0},
        {"image": "gs://inputs/keys/k/uploads/2", "frame_index": -1},
    ]


def test_images_videos_and_strengths_keep_the_line_order(files):
    found, uploads = conditions(
        "--video", str(files / "clip.mp4"), "--image", "gs://b/x.png", "--image-at", "16",
        "--strength", "0.5", "--strength", "1",
    )  # fmt: skip
    assert uploads == [str(files / "clip.mp4")]  # a gs:// URI is passed as it is
    assert found == [
        {"video": "gs://inputs/keys/k/uploads/1", "frame_index": 0, "strength": 0.5},
        {"image": "gs://b/x.png", "frame_index": 16, "strength": 1.0},
    ]


def test_the_same_file_twice_is_uploaded_once(files):
    first = str(files / "first.png")
    found, uploads = conditions(
        "--image", first, "--image-at", "0", "--image", first, "--image-at", "8"
    )
    assert uploads == [first]
    assert [c["image"] for c in found] == ["gs://inputs/keys/k/uploads/1"] * 2


def test_no_media_flags_is_no_conditions():
    assert conditions() == (None, [])
    assert conditions(command="extend") == (None, [])


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--image", "{first}", "--image", "{last}"], "2 --image need 2 --image-at"),
        (
            ["--image", "{first}", "--image-at", "0", "--image-at", "-1"],
            "2 --image-at for 1 --image",
        ),
        (["--video", "{clip}", "--video-at", "0", "--video-at", "8"], "2 --video-at for 1 --video"),
        (["--image", "{first}", "--strength", "0.5", "--strength", "1"], "2 --strength for 1"),
        (["--image-at", "0"], "--image-at without --image or --video"),
        (["--strength", "0.5"], "--strength without --image or --video"),
        (["--image", "{missing}"], "no such file"),
    ],
)
def test_bad_pairings_are_refused_before_any_upload(files, argv, message):
    names = {"first": files / "first.png", "last": files / "last.png"}
    names |= {"clip": files / "clip.mp4", "missing": files / "nope.png"}
    argv = [a.format(**names) for a in argv]
    with pytest.raises(UserError, match=message):
        conditions(*argv)


@pytest.mark.parametrize(
    ("head", "expected"),
    [
        (b"\x89PNG\r\n\x1a\n" + b"\0" * 8, "image/png"),
        (b"\xff\xd8\xff\xe0" + b"\0" * 12, "image/jpeg"),
        (b"RIFF\0\0\0\0WEBPVP8 ", "image/webp"),
        (b"\x1a\x45\xdf\xa3\xa3\x42\x86\x81\x01\x42\x82\x84webm", "video/webm"),
        # Matroska that is not WebM, and an old QuickTime file without `ftyp`: as intake.
        (b"\x1a\x45\xdf\xa3\xa3\x42\x86\x81\x01\x42\x82\x88matroska", None),
        (b"\0\0\0\x08wide\0\0\0\0mdat", "video/quicktime"),
        (b"\0\0\0\x18ftypisom\0\0\0\0", "video/mp4"),
        (b"\0\0\0\x14ftypqt  \0\0\0\0", "video/quicktime"),
        (b"GIF89a" + b"\0" * 10, None),
        (b"", None),
    ],
)
def test_content_type_is_found_from_the_bytes(head, expected):
    assert sniff(head) == expected


@pytest.mark.parametrize("command", ["submit", "extend"])
def test_flags_given_as_zero_or_empty_are_sent(command):
    """`--seed 0` and `--negative-prompt ""` are values, not absent flags, for extend as
    for submit."""
    from ltxv.cli.jobs import request_fields

    head = [command, "a fox"] if command == "submit" else [command, "a" * 26]
    args = build_parser().parse_args([*head, "--seed", "0", "--negative-prompt", ""])
    assert request_fields(args) == {"seed": 0, "negative_prompt": ""}
