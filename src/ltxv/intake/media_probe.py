"""What a conditioning medium really is: its type from its first bytes (never its name or
its declared Content-Type), then a real decode within the profile's limits.

Images are decoded with Pillow, videos demuxed and their first frame decoded with PyAV.
Sizes are read from the headers and checked before any pixel is decoded, so a small file
that claims a huge image (a decompression bomb) is refused without being expanded.
"""

from __future__ import annotations

import io
import time
import warnings
from dataclasses import dataclass

import av
from PIL import Image

from ltxv.core.media_types import sniff
from ltxv.core.profiles import ConditioningLimits

IMAGE_FORMATS = {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp"}


class MediaRefused(ValueError):
    """Not a medium the profile accepts; the message says why, for the client."""


@dataclass(frozen=True)
class MediaInfo:
    kind: str  # image | video
    content_type: str
    width: int
    height: int
    frames: int  # 1 for an image


def probe(data: bytes, limits: ConditioningLimits, *, deadline: float) -> MediaInfo:
    """Decode enough of `data` to know it is a usable image or video within `limits`, or
    raise MediaRefused. `deadline` (time.monotonic()) bounds a video's demuxing."""
    content_type = sniff(data)
    if content_type is None:
        allowed = ", ".join(limits.media_types)
        raise MediaRefused(f"is not an image or video of an accepted type ({allowed})")
    if content_type not in limits.media_types:
        raise MediaRefused(f"is {content_type}, which this model does not accept")
    if content_type.startswith("image/"):
        return _probe_image(data, content_type, limits)
    return _probe_video(data, content_type, limits, deadline)


def _check_pixels(width: int, height: int, limits: ConditioningLimits) -> None:
    if width < 1 or height < 1:
        raise MediaRefused("has no pixels")
    if width * height > limits.max_input_pixels:
        raise MediaRefused(
            f"is {width}x{height} = {width * height} pixels; the limit is {limits.max_input_pixels}"
        )


def _probe_image(data: bytes, content_type: str, limits: ConditioningLimits) -> MediaInfo:
    try:
        with warnings.catch_warnings():
            # Pillow's own bomb check warns below twice its bound: refuse instead.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data), formats=list(IMAGE_FORMATS)) as image:
                if IMAGE_FORMATS.get(image.format or "") != content_type:
                    raise MediaRefused(f"does not decode as the {content_type} it begins like")
                width, height = image.size
                _check_pixels(width, height, limits)  # from the header, before decoding
                if image.format == "JPEG":
                    # The whole entropy-coded stream is still decoded (a corrupt one is
                    # still refused), into 1/64 of the pixels: a 16-megapixel CMYK JPEG
                    # would otherwise take 64 MiB, and a progressive one more.
                    image.draft("RGB", (width // 8, height // 8))
                image.load()
    except MediaRefused:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        # Over Pillow's own bound (its header check, before ours could run).
        raise MediaRefused(f"has too many pixels; the limit is {limits.max_input_pixels}") from exc
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        # Pillow reports a truncated or corrupt file with any of these.
        raise MediaRefused(f"is not a decodable {content_type} ({_short(exc)})") from exc
    return MediaInfo("image", content_type, width, height, 1)


def _probe_video(
    data: bytes, content_type: str, limits: ConditioningLimits, deadline: float
) -> MediaInfo:
    try:
        with av.open(io.BytesIO(data), mode="r") as container:
            if not container.streams.video:
                raise MediaRefused(f"is a {content_type} without a video stream")
            stream = container.streams.video[0]
            width, height = stream.codec_context.width, stream.codec_context.height
            _check_pixels(width, height, limits)
            frames = 0
            decoded = False
            # One packet is one frame: counting them needs no decoding. A packet an edit
            # list cuts away (a stream-copy trim starts at the keyframe before the cut) is
            # discarded by the decoder, so it is no frame the worker will see. Packets are
            # decoded only until the first frame comes out (a codec with delay needs
            # several), to know the stream really decodes. The last packet (size 0)
            # flushes the decoder.
            for packet in container.demux(stream):
                if time.monotonic() > deadline:
                    raise MediaRefused("took too long to read; send a shorter or smaller video")
                if packet.size and not packet.is_discard:
                    frames += 1
                    if frames > limits.max_video_frames:
                        raise MediaRefused(f"has more than {limits.max_video_frames} frames")
                if not decoded:
                    decoded = bool(packet.decode())
            if not decoded or frames < 1:
                raise MediaRefused(f"is a {content_type} with no decodable frame")
    except MediaRefused:
        raise
    except (av.FFmpegError, ValueError, OSError, IndexError) as exc:
        raise MediaRefused(f"is not a decodable {content_type} ({_short(exc)})") from exc
    return MediaInfo("video", content_type, width, height, frames)


def _short(exc: BaseException, limit: int = 120) -> str:
    text = str(exc) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."
