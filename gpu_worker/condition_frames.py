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
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np

CRF = 29  # crf_compressor.compress's default, the one inference.py uses
BLUR_KERNEL = 3
BLUR_SIGMA = 1.0


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


def prepare(image: Any, height: int, width: int) -> Any:
    """`image` (PIL) cropped, blurred, compressed and resized: an RGB PIL image of
    width x height, what the pipeline is handed."""
    import torch
    from PIL import Image

    cropped = center_crop(image.convert("RGB"), height, width)
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
        tensor = torch.nn.functional.interpolate(
            tensor[None], size=(height, width), mode="bilinear", align_corners=False
        )[0]
    array = tensor.round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()
    return np.ascontiguousarray(array)
