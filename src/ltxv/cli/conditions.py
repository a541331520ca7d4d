"""`--image`/`--video` with `--image-at`/`--video-at` and `--strength`: a request's
`conditions` on the command line.

    ltxv submit "a fox wakes up" --image first.png --image-at 0 --image last.png --image-at -1

Pairing is by order: the i-th `--image-at` is the frame of the i-th `--image` (videos
likewise), and the i-th `--strength` belongs to the i-th `--image` or `--video` as they
appear on the line. A frame may be left out only for a single image or video (it is then
pinned at frame 0); strengths are all given or none (1.0). A local file is uploaded first
(POST /v1/uploads); a `gs://` URI or `data:` URL is sent as it is.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ltxv.cli.common import UserError

PASSED_AS_IS = ("gs://", "data:")


class _Medium(argparse.Action):
    """Appends (kind, value) to one shared list, so images and videos keep their order."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: str | Sequence[Any] | None,
        option_string: str | None = None,
    ) -> None:
        media = list(getattr(namespace, self.dest) or [])
        media.append((self.const, values))
        setattr(namespace, self.dest, media)


def add_media_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "conditions (image-to-video, keyframes, video-to-video; paired by order)"
    )
    for kind in ("image", "video"):
        group.add_argument(
            f"--{kind}",
            dest="media",
            action=_Medium,
            const=kind,
            metavar="FILE|URI",
            help=f"a{'n' if kind == 'image' else ''} {kind} to condition on: a local file "
            "(uploaded first), a gs:// URI or a data: URL (repeatable)",
        )
        group.add_argument(
            f"--{kind}-at",
            dest=f"{kind}_at",
            type=int,
            action="append",
            metavar="FRAME",
            help=f"the output frame the i-th --{kind} is pinned to: 0 or a multiple of 8; "
            "-1 is the last frame (default 0 for a single one)",
        )
    group.add_argument(
        "--strength",
        type=float,
        action="append",
        metavar="X",
        help="0..1, one per --image/--video in their order, or none (1.0)",
    )


def _check_pairing(media: list[tuple[str, str]], args: argparse.Namespace) -> None:
    for kind in ("image", "video"):
        count = sum(1 for k, _ in media if k == kind)
        at = getattr(args, f"{kind}_at") or []
        if at and len(at) != count:
            raise UserError(
                f"{len(at)} --{kind}-at for {count} --{kind}: give one --{kind}-at per "
                f"--{kind}, in the same order"
            )
        if not at and count > 1:
            raise UserError(
                f"{count} --{kind} need {count} --{kind}-at (which frame each is pinned to, "
                "in the same order: e.g. 0 and -1 for the first and last frame)"
            )
    strengths = args.strength or []
    if strengths and len(strengths) != len(media):
        raise UserError(
            f"{len(strengths)} --strength for {len(media)} --image/--video: give one per "
            "condition, in their order, or none"
        )
    for kind, value in media:
        if not value.startswith(PASSED_AS_IS) and not Path(value).is_file():
            raise UserError(f"--{kind} {value}: no such file (nor a gs:// URI or data: URL)")


def conditions_from_args(
    args: argparse.Namespace, upload: Callable[[str], str]
) -> list[dict[str, Any]] | None:
    """The request's `conditions` from the flags, local files uploaded with `upload`
    (each file once); None when no --image or --video was given. Every pairing mistake
    is raised before anything is uploaded."""
    media: list[tuple[str, str]] = getattr(args, "media", None) or []
    if not media:
        given = [f for f in ("image_at", "video_at", "strength") if getattr(args, f, None)]
        if given:
            flag = "--" + given[0].replace("_", "-")
            raise UserError(f"{flag} without --image or --video: nothing to pin")
        return None
    _check_pairing(media, args)
    frames = {kind: iter(getattr(args, f"{kind}_at") or []) for kind in ("image", "video")}
    strengths = iter(args.strength or [])
    uploaded: dict[str, str] = {}
    conditions = []
    for kind, value in media:
        if not value.startswith(PASSED_AS_IS):
            if value not in uploaded:
                uploaded[value] = upload(value)
            value = uploaded[value]
        condition: dict[str, Any] = {kind: value, "frame_index": next(frames[kind], 0)}
        strength = next(strengths, None)
        if strength is not None:
            condition["strength"] = strength
        conditions.append(condition)
    return conditions
