"""Conditioning media for the worker's tests: real PNG, JPEG and H.264 bytes stored in fake
GCS, the job `inputs` entries that name them (as intake records them, job.schema.json), and
an independent computation of the frames the pipeline must receive for them.

The reference is Lightricks' own code (Lightricks/LTX-Video at 5260738e, ltx_video/
inference.py `load_image_to_tensor_with_resize_and_crop(just_crop=True)`, ltx_video/
pipelines/crf_compressor.py, pipeline_ltx_video.py `resize_tensor`) transcribed as written,
in their [-1, 1] float tensors, with torchvision's gaussian_blur (not installed here)
transcribed too; and for a cropped frame over twice the output's size, the one step the
worker adds before them (`reference_frame`: an area-averaged shrink to twice the output).
"""

from __future__ import annotations

import hashlib
import io
from typing import Any

import numpy as np
import torch
from google.api_core import exceptions as gexc
from google.cloud import storage
from PIL import Image


def ensure_bucket(client: storage.Client, name: str) -> storage.Bucket:
    try:
        return client.create_bucket(name)
    except gexc.Conflict:
        return client.bucket(name)


def picture(width: int, height: int, seed: int) -> Image.Image:
    """A smooth picture with structure (gradients and a block), not white noise: CRF and
    the blur then change it the way they change a photograph."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = rng.uniform(0, 255, 3)
    array = np.stack(
        [
            (base[c] + 120 * np.sin((x * (c + 1) + y * (3 - c)) / (9.0 + seed % 5)))
            for c in range(3)
        ],
        axis=-1,
    )
    array[height // 4 : height // 2, width // 3 : width // 2] = rng.uniform(0, 255, 3)
    return Image.fromarray(np.clip(array, 0, 255).astype(np.uint8))


def image_bytes(image: Image.Image, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    return buffer.getvalue()


def video_bytes(frames: list[Image.Image], fps: int = 8) -> bytes:
    import av

    buffer = io.BytesIO()
    width, height = frames[0].size
    with av.open(buffer, "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=fps, options={"crf": "18"})
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_image(frame)))
        container.mux(stream.encode())
    return buffer.getvalue()


def moving(width: int, height: int, count: int, seed: int) -> list[Image.Image]:
    """`count` frames of a picture sliding right, one pixel a frame."""
    wide = np.asarray(picture(width + count, height, seed))
    return [Image.fromarray(np.ascontiguousarray(wide[:, i : i + width])) for i in range(count)]


def store(bucket: storage.Bucket, name: str, data: bytes, content_type: str) -> storage.Blob:
    blob = bucket.blob(name)
    blob.upload_from_string(data, content_type=content_type)
    return blob


def entry(
    blob: storage.Blob, data: bytes, *, origin: str, kind: str, content_type: str,
    size: tuple[int, int], frames: int, start: int, count: int, frame_index: int,
    strength: float = 1.0,
) -> dict[str, Any]:  # fmt: skip
    """A job's `inputs` entry for a stored medium, as intake resolves it."""
    return {
        "from": origin,
        "kind": kind,
        "uri": f"gs://{blob.bucket.name}/{blob.name}",
        "generation": int(blob.generation),
        "content_type": content_type,
        "bytes": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
        "width": size[0],
        "height": size[1],
        "frames": frames,
        "select": {"start": start, "count": count},
        "frame_index": frame_index,
        "strength": strength,
    }


# -- Lightricks' preprocessing, transcribed -------------------------------------------------


def _gaussian_blur_reference(img: torch.Tensor) -> torch.Tensor:
    """torchvision.transforms.functional.gaussian_blur(img, kernel_size=3, sigma=1.0) on a
    float [C, H, W] tensor, its code (v0.20 _functional_tensor.py) transcribed: the float32
    arithmetic matters, as their CRF step truncates (.byte()) values close to integers."""
    ksize_half = (3 - 1) * 0.5
    x = torch.linspace(-ksize_half, ksize_half, steps=3)
    pdf = torch.exp(-0.5 * (x / 1.0).pow(2))
    kernel1d = pdf / pdf.sum()
    kernel = torch.mm(kernel1d[:, None], kernel1d[None, :]).to(dtype=img.dtype)
    kernel = kernel.expand(img.shape[-3], 1, kernel.shape[0], kernel.shape[1])
    batch = torch.nn.functional.pad(img.unsqueeze(0), [1, 1, 1, 1], mode="reflect")
    return torch.nn.functional.conv2d(batch, kernel, groups=img.shape[-3]).squeeze(0)


def _crf_reference(image: torch.Tensor, crf: int = 29) -> torch.Tensor:
    import av

    image_array = (
        (image[: (image.shape[0] // 2) * 2, : (image.shape[1] // 2) * 2] * 255.0)
        .byte()
        .cpu()
        .numpy()
    )
    output_file = io.BytesIO()
    container = av.open(output_file, "w", format="mp4")
    stream = container.add_stream(
        "libx264", rate=1, options={"crf": str(crf), "preset": "veryfast"}
    )
    stream.height = image_array.shape[0]
    stream.width = image_array.shape[1]
    av_frame = av.VideoFrame.from_ndarray(image_array, format="rgb24").reformat(format="yuv420p")
    container.mux(stream.encode(av_frame))
    container.mux(stream.encode())
    container.close()
    container = av.open(io.BytesIO(output_file.getvalue()))
    frame = next(container.decode(next(s for s in container.streams if s.type == "video")))
    container.close()
    return torch.tensor(frame.to_ndarray(format="rgb24"), dtype=image.dtype) / 255.0


def lightricks_frame(
    image: Image.Image, target_height: int, target_width: int, *, shrink: bool = False
) -> np.ndarray:
    """The frame Lightricks' inference hands its pipeline, at the output size, as uint8;
    with `shrink`, the cropped frame is first box-filtered down to fit within twice the
    output when larger (gpu_worker/condition_frames.py's one departure from their order)."""
    input_width, input_height = image.size
    aspect_ratio_target = target_width / target_height
    aspect_ratio_frame = input_width / input_height
    if aspect_ratio_frame > aspect_ratio_target:
        new_width = int(input_height * aspect_ratio_target)
        new_height = input_height
        x_start = (input_width - new_width) // 2
        y_start = 0
    else:
        new_width = input_width
        new_height = int(input_width / aspect_ratio_target)
        x_start = 0
        y_start = (input_height - new_height) // 2
    image = image.convert("RGB").crop((x_start, y_start, x_start + new_width, y_start + new_height))
    if shrink and (new_width > 2 * target_width or new_height > 2 * target_height):
        scale = min(2 * target_width / new_width, 2 * target_height / new_height)
        size = (round(new_width * scale), round(new_height * scale))
        image = image.resize(size, Image.Resampling.BOX)
    # torchvision's to_tensor: the uint8 pixels as floats, divided by 255.
    frame_tensor = torch.from_numpy(np.array(image)).permute(2, 0, 1).float().div(255)
    frame_tensor = _gaussian_blur_reference(frame_tensor)
    frame_tensor_hwc = _crf_reference(frame_tensor.permute(1, 2, 0))
    frame_tensor = frame_tensor_hwc.permute(2, 0, 1) * 255.0
    frame_tensor = (frame_tensor / 127.5) - 1.0
    media = frame_tensor.unsqueeze(0)  # their resize_tensor, per frame: (b n) c h w
    if media.shape[-2:] != (target_height, target_width):
        media = torch.nn.functional.interpolate(
            media, size=(target_height, target_width), mode="bilinear", align_corners=False
        )
    pixels = ((media[0] + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8)
    return pixels.permute(1, 2, 0).numpy()


def reference_frame(image: Image.Image, target_height: int, target_width: int) -> np.ndarray:
    """What the worker must hand the pipeline: Lightricks' frame, shrunk first when large."""
    return lightricks_frame(image, target_height, target_width, shrink=True)


def decoded_video(data: bytes) -> list[Image.Image]:
    import av

    with av.open(io.BytesIO(data)) as container:
        return [frame.to_image() for frame in container.decode(video=0)]
