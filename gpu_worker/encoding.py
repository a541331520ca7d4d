"""Encoding: rendered frames to a browser-playable mp4 and a JPEG poster, with PyAV.

The video is H.264 in 8-bit yuv420p, converted with the BT.709 matrix into limited range
and tagged so (what browsers assume for web video), in an mp4 whose moov atom comes first
(`+faststart`), so playback starts before the whole file has arrived.

The encoder: NVENC (`h264_nvenc`, in PyAV's wheels) when the GPU offers it, so the VM's
few CPUs stay with the render loop, else libx264 (`LTXV_VIDEO_ENCODER`: auto, the
default; nvenc or x264 to insist). Whether NVENC opens is tried once per process on a
tiny frame: without an NVIDIA driver it refuses at once. x264 runs with preset `veryfast`
at CRF 20: a few seconds matter more than the last few percent of file size, while CRF 20
stays visually clean for generated video (x264's default is 23; 18 is near transparent at
about 1.5x the size). NVENC runs at preset p5 with constant quality 23, which looks about
the same as x264's CRF 20 on generated video.
"""

from __future__ import annotations

import io
import logging
from fractions import Fraction
from functools import cache
from pathlib import Path
from typing import Literal

import av
import numpy as np
from av.video.reformatter import ColorPrimaries, ColorRange, Colorspace, ColorTrc
from PIL import Image

from ltxv.core.media import PIX_FMT, VideoInfo

log = logging.getLogger(__name__)

PRESET = "veryfast"
CRF = 20
POSTER_QUALITY = 90

# The codecs encoders are chosen from: names PyAV knows for video (its streams are typed so).
H264Codec = Literal["h264_nvenc", "libx264"]

# Each encoder's codec and options, best first.
ENCODERS: dict[str, tuple[H264Codec, dict[str, str]]] = {
    "nvenc": ("h264_nvenc", {"preset": "p5", "rc": "vbr", "cq": "23", "b": "0"}),
    "x264": ("libx264", {"crf": str(CRF), "preset": PRESET}),
}


@cache
def _opens(codec: H264Codec) -> bool:
    """Whether this codec opens here: NVENC needs an NVIDIA driver and a free session."""
    try:
        with av.open(io.BytesIO(), mode="w", format="mp4") as out:
            stream = out.add_stream(codec, rate=24)
            stream.width, stream.height, stream.pix_fmt = 256, 256, PIX_FMT
            stream.codec_context.open()
    except (av.FFmpegError, OSError, ValueError) as exc:
        log.info("video encoder not available", extra={"codec": codec, "error": str(exc)})
        return False
    return True


def choose_encoder(preference: str = "auto") -> tuple[H264Codec, dict[str, str]]:
    """The codec and options to encode with: auto is NVENC when it opens, else x264."""
    if preference not in ("auto", *ENCODERS):
        raise ValueError(f"video encoder must be auto, nvenc or x264, got {preference!r}")
    if preference == "x264" or (preference == "auto" and not _opens(ENCODERS["nvenc"][0])):
        return ENCODERS["x264"]
    return ENCODERS["nvenc"]


def _check_frames(frames: np.ndarray) -> tuple[int, int, int]:
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8 [F, H, W, 3], got {frames.dtype} {frames.shape}")
    count, height, width, _ = frames.shape
    if count < 1 or height % 2 or width % 2:
        raise ValueError(f"need at least one frame of even height and width, got {frames.shape}")
    return count, height, width


def encode_mp4(
    frames: np.ndarray,
    fps: int | float,
    path: Path | str,
    *,
    encoder: str = "x264",
) -> VideoInfo:
    """Write `frames` (uint8 [F, H, W, 3] RGB) as an H.264 yuv420p faststart mp4 at `path`
    with `encoder` (choose_encoder's preference)."""
    _, height, width = _check_frames(frames)
    with Mp4Writer(path, fps, width, height, encoder=encoder) as writer:
        for frame in frames:
            writer.write(frame)
    return writer.info


class Mp4Writer:
    """encode_mp4 one frame at a time: a video put together from several sources (the
    joined output of an extend) is never all in memory at once."""

    def __init__(
        self, path: Path | str, fps: int | float, width: int, height: int, *, encoder: str = "x264"
    ) -> None:
        if height % 2 or width % 2:
            raise ValueError(f"need even height and width, got {width}x{height}")
        self.path, self.width, self.height = Path(path), width, height
        self.rate = Fraction(fps).limit_denominator(1001)
        self.count = 0
        codec, options = choose_encoder(encoder)
        self._out = av.open(str(self.path), mode="w", format="mp4",
                            options={"movflags": "+faststart"})  # fmt: skip
        self._stream = self._out.add_stream(codec, rate=self.rate)
        self._stream.width, self._stream.height, self._stream.pix_fmt = width, height, PIX_FMT
        context = self._stream.codec_context
        context.time_base = 1 / self.rate
        context.colorspace = Colorspace.ITU709.value
        context.color_range = ColorRange.MPEG.value
        context.color_primaries = ColorPrimaries.BT709.value
        context.color_trc = ColorTrc.BT709.value
        context.options = dict(options)

    def write(self, frame: np.ndarray) -> None:
        """One uint8 [H, W, 3] RGB frame of the writer's size."""
        if frame.shape != (self.height, self.width, 3) or frame.dtype != np.uint8:
            raise ValueError(
                f"frame must be uint8 [{self.height}, {self.width}, 3], "
                f"got {frame.dtype} {frame.shape}"
            )
        rgb = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
        yuv = rgb.reformat(
            format=PIX_FMT,
            src_colorspace=Colorspace.ITU709,
            dst_colorspace=Colorspace.ITU709,
            src_color_range=ColorRange.JPEG,
            dst_color_range=ColorRange.MPEG,
        )
        yuv.pts = self.count
        yuv.time_base = self._stream.codec_context.time_base
        self._out.mux(self._stream.encode(yuv))
        self.count += 1

    def __enter__(self) -> Mp4Writer:
        return self

    def __exit__(self, kind: object, *_: object) -> None:
        try:
            if kind is None:
                if self.count < 1:
                    raise ValueError("need at least one frame")
                self._out.mux(self._stream.encode(None))
        finally:
            self._out.close()

    @property
    def info(self) -> VideoInfo:
        return VideoInfo(
            width=self.width,
            height=self.height,
            num_frames=self.count,
            fps=float(self.rate),
            bytes=self.path.stat().st_size,
            codec="h264",
        )


def write_poster(frame: np.ndarray, path: Path | str, *, quality: int = POSTER_QUALITY) -> int:
    """Write one uint8 [H, W, 3] RGB frame as a JPEG; returns its size in bytes."""
    if frame.ndim != 3 or frame.shape[-1] != 3 or frame.dtype != np.uint8:
        raise ValueError(f"frame must be uint8 [H, W, 3], got {frame.dtype} {frame.shape}")
    path = Path(path)
    Image.fromarray(frame).save(path, format="JPEG", quality=quality, optimize=True)
    return path.stat().st_size
