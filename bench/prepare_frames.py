"""The CPU time conditioning frames take to prepare before denoising starts (measured).

    .venv/bin/python bench/prepare_frames.py              # output 704x1216, 121-frame 1080p video

Per frame, at square input sizes: Lightricks' order (crop, then blur, CRF 29 and resize at
the cropped size) against gpu_worker.condition_frames.prepare (the same, with the cropped
frame first shrunk to at most twice the output). Then a video condition as the worker
prepares it: a `--frames`-frame H.264 video decoded frame by frame, each frame prepared one
after another, and on prepare_all's thread pool (`condition_frames.pool_size()` threads).
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gpu_worker import condition_frames
from gpu_worker.conditioning import selected_frames


def picture(width: int, height: int, seed: int = 0) -> Any:
    """Smooth structure with noise on top, like a photograph's grain (x264's work grows
    with detail; a flat picture would flatter both orders)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.stack([120 + 100 * np.sin((x * (c + 1) + y * (3 - c)) / 37.0) for c in range(3)], -1)
    noisy = base + rng.normal(0, 12, base.shape)
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))


def lightricks_order(image: Any, height: int, width: int) -> Any:
    """What prepare did before the shrink: every step at the cropped input's size."""
    cropped = condition_frames.center_crop(image.convert("RGB"), height, width)
    return condition_frames.blur_compress_resize(cropped, height, width)


def seconds(run: Callable[[], Any], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def video_bytes(width: int, height: int, frames: int, fps: int = 24) -> bytes:
    import av

    buffer = io.BytesIO()
    wide = np.asarray(picture(width + frames * 4, height, seed=1))
    with av.open(buffer, "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=fps, options={"crf": "18"})
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for i in range(frames):
            array = np.ascontiguousarray(wide[:, i * 4 : i * 4 + width])
            container.mux(stream.encode(av.VideoFrame.from_ndarray(array, format="rgb24")))
        container.mux(stream.encode())
    return buffer.getvalue()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", default="704x1216", help="output HEIGHTxWIDTH")
    parser.add_argument("--inputs", default="1024,2048,4096", help="square input sides")
    parser.add_argument("--video", default="1920x1080", help="video condition WIDTHxHEIGHT")
    parser.add_argument("--frames", type=int, default=121)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    import torch

    height, width = (int(part) for part in args.size.lower().split("x"))
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(
        f"output {height}x{width} (HxW); {cpus} CPUs usable, torch {torch.__version__} with "
        f"{torch.get_num_threads()} intra-op threads; median of {args.repeat}"
    )
    print("\none frame (s):")
    print(f"  {'input':>11s}  {'cropped':>11s}  {'Lightricks order':>16s}  {'prepare':>8s}")
    for side in (int(s) for s in args.inputs.split(",")):
        image = picture(side, side)
        cropped = condition_frames.center_crop(image, height, width)
        before = seconds(partial(lightricks_order, image, height, width), args.repeat)
        after = seconds(partial(condition_frames.prepare, image, height, width), args.repeat)
        print(
            f"  {side:>5d}x{side:<5d}  {cropped.width:>5d}x{cropped.height:<5d}  "
            f"{before:16.3f}  {after:8.3f}"
        )

    video_width, video_height = (int(part) for part in args.video.lower().split("x"))
    data = video_bytes(video_width, video_height, args.frames)
    entry: Any = {
        "kind": "video",
        "uri": "gs://bench/video.mp4",
        "from": "conditions[0]",
        "select": {"start": 0, "count": args.frames},
    }
    decode_only = seconds(lambda: selected_frames(data, entry), 1)
    one_by_one = seconds(
        lambda: selected_frames(data, entry, lambda f: condition_frames.prepare(f, height, width)),
        1,
    )
    pooled = seconds(
        lambda: condition_frames.prepare_all(
            lambda p: selected_frames(data, entry, p), height, width
        ),
        1,
    )
    threads = condition_frames.pool_size()
    print(f"\na {args.frames}-frame {video_width}x{video_height} H.264 video condition (s):")
    print(f"  decode only                       {decode_only:8.2f}")
    print(f"  decode + prepare, one by one      {one_by_one:8.2f}")
    print(
        f"  decode + prepare, {threads} threads       {pooled:8.2f}  (x{one_by_one / pooled:.2f})"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
