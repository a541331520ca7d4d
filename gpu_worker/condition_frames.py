"""A conditioning frame made ready for the model the way Lightricks' own inference makes it.

Lightricks/LTX-Video at 5260738e171955b66c0827f9af7e84d68fd1d919, ltx_video/inference.py:
`prepare_conditioning` loads every image and every video frame through
`load_image_to_tensor_with_resize_and_crop(..., just_crop=True)` (lines 59-105): a center
crop to the output's aspect ratio (the integer arithmetic below is theirs), a 3x3 Gaussian
blur with sigma 1 (torchvision's `gaussian_blur`: reflect padding), then
`crf_compressor.compress` (ltx_video/pipelines/crf_compressor.py): the frame encoded as a
one-frame H.264 video at CRF 29 (libx264, preset veryfast, yuv420p, cut to even sides) and
decoded back. The model was trained on compressed frames: a clean still makes it hold the
picture rather than move. Their pipeline then resizes the cropped frame to the output size
(`LTXVideoPipeline._resize_conditioning_item` -> `resize_tensor`, pipeline_ltx_video.py
lines 740-752: bilinear, align_corners False).

We end in uint8 RGB at the output size (diffusers' LTXVideoCondition takes PIL images and
its video processor normalises them): the one difference from Lightricks' float tensor is
that rounding, at most half a level.

One step Lightricks do not take: a cropped frame larger than twice the output's width or
height is first shrunk to fit within twice the output (PIL's box filter: each pixel the
area average of those it covers, so nothing aliases), then blurred, compressed and resized
as above. Their order blurs and H.264-encodes every frame at the input's full size: 6.1 s
for one 4096x4096 frame on a CPU core, so four video conditions of 121 such frames would
spend most of an hour of GPU-VM time before denoising starts (docs/benchmarks.md, "Preparing
conditioning frames"). At twice the output the blur and the CRF-29 artefacts still sit
below the final resize's own smoothing; what reaches the model differs from Lightricks' in
detail finer than an output pixel only. Inputs up to twice the output size take exactly
Lightricks' path.

A video's frames are prepared on a small thread pool (`prepare_all`), in order: x264, PIL
and torch release the GIL for their work.
"""

from __future__ import annotations

import io
import os
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np

CRF = 29  # crf_compressor.compress's default, the one inference.py uses
BLUR_KERNEL = 3
BLUR_SIGMA = 1.0
# A cropped frame is shrunk to at most this many times the output's width and height first.
MAX_SCALE = 2
# The pool preparing a video's frames; an L4 VM (g2-standard-8) has 8 vCPUs.
MAX_THREADS = 8


def center_crop(image: Any, height: int, width: int) -> Any:
    """The largest centered part of `image` with the output's aspect ratio."""
    input_width, input_height = image.size
    aspect_ratio_target = width / height
    if input_width / input_height > aspect_ratio_target:
        new_width, new_height = int(input_height * aspect_ratio_target), input_height
        x_start, y_start = (input_width - new_width) // 2, 0
    else:
        new_width, new_height = input_width, int(input_width / aspect_ratio_target)
        x_start, y_start = 0, (input_height - new_height) // 2
    return image.crop((x_start, y_start, x_start + new_width, y_start + new_height))


def gaussian_blur(frame: Any) -> Any:
    """torchvision.transforms.functional.gaussian_blur(frame, 3, 1.0) on a [C, H, W] float
    tensor (torchvision is not a dependency): a separable kernel, reflect padding."""
    import torch

    half = (BLUR_KERNEL - 1) * 0.5
    x = torch.linspace(-half, half, steps=BLUR_KERNEL)
    pdf = torch.exp(-0.5 * (x / BLUR_SIGMA).pow(2))
    kernel1d = pdf / pdf.sum()
    kernel = torch.mm(kernel1d[:, None], kernel1d[None, :]).to(frame.dtype)
    channels = frame.shape[0]
    weight = kernel.expand(channels, 1, BLUR_KERNEL, BLUR_KERNEL)
    pad = BLUR_KERNEL // 2
    padded = torch.nn.functional.pad(frame[None], [pad, pad, pad, pad], mode="reflect")
    return torch.nn.functional.conv2d(padded, weight, groups=channels)[0]


def crf_compress(frame_hwc: Any) -> Any:
    """One frame ([H, W, C] floats in [0, 1]) through H.264 at CRF 29 and back."""
    import av
    import torch

    height, width = (frame_hwc.shape[0] // 2) * 2, (frame_hwc.shape[1] // 2) * 2
    # .byte() truncates, as theirs does.
    array = (frame_hwc[:height, :width] * 255.0).byte().cpu().numpy()
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="mp4") as container:
        stream = container.add_stream(
            "libx264", rate=1, options={"crf": str(CRF), "preset": "veryfast"}
        )
        stream.height, stream.width = height, width
        frame = av.VideoFrame.from_ndarray(array, format="rgb24").reformat(format="yuv420p")
        container.mux(stream.encode(frame))
        container.mux(stream.encode())
    buffer.seek(0)
    with av.open(buffer, "r") as container:
        decoded = next(container.decode(container.streams.video[0]))
        back = decoded.to_ndarray(format="rgb24")
    return torch.tensor(back, dtype=frame_hwc.dtype) / 255.0


def shrink_to_scale(cropped: Any, height: int, width: int) -> Any:
    """`cropped` (PIL), area-averaged down to fit within MAX_SCALE times the output when it
    is larger; as it was otherwise."""
    from PIL import Image

    limit_width, limit_height = MAX_SCALE * width, MAX_SCALE * height
    if cropped.width <= limit_width and cropped.height <= limit_height:
        return cropped
    scale = min(limit_width / cropped.width, limit_height / cropped.height)
    size = (max(1, round(cropped.width * scale)), max(1, round(cropped.height * scale)))
    return cropped.resize(size, Image.Resampling.BOX)


def blur_compress_resize(cropped: Any, height: int, width: int) -> Any:
    """Lightricks' steps after the crop: blur, CRF, bilinear resize to the output size."""
    import torch
    from PIL import Image

    # torchvision's to_tensor: [C, H, W] in [0, 1].
    tensor = torch.from_numpy(np.asarray(cropped, dtype=np.float32) / 255.0).permute(2, 0, 1)
    tensor = gaussian_blur(tensor)
    tensor = crf_compress(tensor.permute(1, 2, 0)).permute(2, 0, 1) * 255.0
    return Image.fromarray(_resized(tensor, height, width))


def fit(image: Any, height: int, width: int) -> np.ndarray:
    """`image` (PIL) cropped and resized as `prepare` does it, without the blur and the
    CRF round trip (those are for the model's eyes, not a viewer's): uint8 [H, W, 3]."""
    import torch

    cropped = center_crop(image.convert("RGB"), height, width)
    tensor = torch.from_numpy(np.asarray(cropped, dtype=np.float32)).permute(2, 0, 1)
    return _resized(tensor, height, width)


def _resized(tensor: Any, height: int, width: int) -> np.ndarray:
    """A [C, h, w] float tensor in 0..255 to uint8 [height, width, 3]: bilinear,
    align_corners False, as Lightricks' resize_tensor."""
    import torch

    if tensor.shape[-2:] != (height, width):
        # In Lightricks' [-1, 1] range, as their resize_tensor gets it: a resize by exactly
        # 2 (what a shrunk frame gets) lands on .5s, and the same float arithmetic rounds
        # them the same way.
        tensor = torch.nn.functional.interpolate(
            (tensor / 127.5 - 1.0)[None], size=(height, width), mode="bilinear",
            align_corners=False,
        )[0]  # fmt: skip
        tensor = (tensor + 1.0) * 127.5
    array = tensor.round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()
    return np.ascontiguousarray(array)


def prepare(image: Any, height: int, width: int) -> Any:
    """`image` (PIL) cropped, shrunk when over twice the output, blurred, compressed and
    resized: an RGB PIL image of width x height, what the pipeline is handed."""
    cropped = center_crop(image.convert("RGB"), height, width)
    return blur_compress_resize(shrink_to_scale(cropped, height, width), height, width)


def pool_size() -> int:
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    return max(1, min(MAX_THREADS, cpus))


def prepare_all(
    decode: Callable[[Callable[[Any], Any]], list[Any]], height: int, width: int
) -> list[Any]:
    """The frames `decode` yields, each prepared, in `decode`'s order, on a thread pool.

    `decode(prepare)` calls `prepare` on each frame as it decodes it and returns the list
    of what those calls returned (conditioning.selected_frames). Here those are futures; a
    decoded frame waits for a free slot first, so at most twice the pool's size of
    full-size frames are held at once, whatever the video's length."""
    threads = pool_size()
    slots = threading.BoundedSemaphore(2 * threads)
    with ThreadPoolExecutor(threads, thread_name_prefix="condition-frames") as pool:

        def submit(frame: Any) -> Future[Any]:
            slots.acquire()
            future = pool.submit(prepare, frame, height, width)
            future.add_done_callback(lambda _: slots.release())
            return future

        futures = decode(submit)
        return [future.result() for future in futures]
