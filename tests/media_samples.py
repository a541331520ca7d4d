"""Small real media for conditioning tests: images made with Pillow, videos encoded with
PyAV, each decodable by the same libraries intake checks them with."""

from __future__ import annotations

import base64
import io

import av
import numpy as np
from PIL import Image


def png(width: int = 64, height: int = 48, color: tuple[int, int, int] = (200, 40, 40)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), color).save(out, "PNG")
    return out.getvalue()


def jpeg(width: int = 64, height: int = 48) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), (30, 90, 200)).save(out, "JPEG")
    return out.getvalue()


def video(frames: int = 17, width: int = 64, height: int = 48, container: str = "mp4") -> bytes:
    codec = {"mp4": "libx264", "webm": "libvpx", "mov": "mpeg4"}[container]
    out = io.BytesIO()
    with av.open(out, "w", format=container) as muxer:
        stream = muxer.add_stream(codec, rate=8)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for i in range(frames):
            pixels = np.full((height, width, 3), (i * 13) % 256, np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")):
                muxer.mux(packet)
        for packet in stream.encode():
            muxer.mux(packet)
    return out.getvalue()


def data_url(data: bytes, media_type: str = "image/png") -> str:
    return f"data:{media_type};base64,{base64.b64encode(data).decode()}"


def trimmed_video(frames: int = 25, cut: int = 8) -> bytes:
    """An MP4 as a stream-copy trim leaves it (`ffmpeg -ss … -c copy`, a phone's trim): all
    `frames` packets from the keyframe on are kept, and an edit list makes the decoder drop
    the first `cut` of them, so it yields `frames - cut` frames. Made by remuxing `video()`
    with every timestamp moved `cut` frames earlier: the mp4 muxer writes the negative
    start as an edit list (no ffmpeg CLI needed)."""
    source = video(frames=frames)
    out = io.BytesIO()
    with av.open(io.BytesIO(source)) as demuxer, av.open(out, "w", format="mp4") as muxer:
        stream = demuxer.streams.video[0]
        copy = muxer.add_stream_from_template(stream)
        shift = int(cut / (stream.average_rate * stream.time_base))
        for packet in demuxer.demux(stream):
            if packet.dts is None:  # the demuxer's flush packet
                continue
            packet.pts -= shift
            packet.dts -= shift
            packet.stream = copy
            muxer.mux(packet)
    return out.getvalue()


def resizing_h264(first: tuple[int, int] = (64, 48), then: tuple[int, int] = (640, 480)) -> bytes:
    """A raw H.264 stream whose frames change size after 9: two streams back to back, as
    a crafted file may do inside a container (the decoder follows the new sizes)."""

    def stream(width: int, height: int) -> bytes:
        out = io.BytesIO()
        with av.open(out, "w", format="h264") as container:
            encoder = container.add_stream("libx264", rate=8)
            encoder.width, encoder.height, encoder.pix_fmt = width, height, "yuv420p"
            frame = av.VideoFrame.from_ndarray(np.zeros((height, width, 3), np.uint8), "rgb24")
            for _ in range(9):
                for packet in encoder.encode(frame):
                    container.mux(packet)
            for packet in encoder.encode():
                container.mux(packet)
        return out.getvalue()

    return stream(*first) + stream(*then)
