"""What a video file holds, as the worker reports it (result.json's `video`) and as
anyone who downloads one can check it (`probe`: PyAV, imported when called)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

PIX_FMT = "yuv420p"


@dataclass(frozen=True)
class VideoInfo:
    width: int
    height: int
    num_frames: int
    fps: float
    bytes: int
    codec: str  # "h264"
    pix_fmt: str = PIX_FMT

    def as_dict(self) -> dict[str, Any]:
        """The fields result.json's `video` object holds (pix_fmt is not among them)."""
        data = asdict(self)
        del data["pix_fmt"]
        return data


def probe(path: Path | str) -> VideoInfo:
    """Decode the file's first video stream: its size, frame count (counted), rate and codec."""
    import av

    path = Path(path)
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        context = stream.codec_context
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        count = sum(1 for _ in container.decode(stream))
        return VideoInfo(
            width=context.width,
            height=context.height,
            num_frames=count,
            fps=float(rate) if rate else 0.0,
            bytes=path.stat().st_size,
            codec=context.name,
            pix_fmt=context.pix_fmt or "",
        )
