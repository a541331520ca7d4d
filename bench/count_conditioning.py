"""What conditioning adds to a render, counted on `meta` tensors (no GPU, no weights).

    .venv/bin/python bench/count_conditioning.py            # 704x1216x121, 8 steps, 4 conditions

The 2B distilled profile keeps the VAE encoder (fit.vae_encoder) to encode its conditions:
its resident weights; the encode of an image and of a video of up to num_frames frames,
untiled and tiled (diffusers' enable_tiling tiles the encoder in space; it tiles in time
only with framewise decoding, which the profile leaves off); and the transformer tokens a
condition at frame_index > 0 appends (diffusers' LTXConditionPipeline.prepare_latents: an
image's one latent frame, a video's first two), at max_conditions. Peak memory is the most
bytes alive at once among the tensors the call creates (weights and its input apart), as
inference runs them; time is count.py's roofline. Estimates, not measurements.
"""

from __future__ import annotations

import argparse
import weakref
from collections.abc import Callable
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from count import GIB, GPUS, _tensors, count, seconds, weight_bytes
from full_size import full_size_models

PREFIX_LATENT_FRAMES = 2  # prepare_latents' num_prefix_latent_frames for a video condition


class PeakLive(TorchDispatchMode):
    """The most bytes that tensors created under it held alive at one time."""

    def __init__(self) -> None:
        super().__init__()
        self.live = self.peak = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if not func.is_view:
            for tensor in _tensors(out):
                size = tensor.untyped_storage().nbytes()
                self.live += size
                self.peak = max(self.peak, self.live)
                weakref.finalize(tensor, self._free, size)
        return out

    def _free(self, size: int) -> None:
        self.live -= size


def peak_bytes(run: Callable[[], Any]) -> int:
    tracker = PeakLive()
    with torch.inference_mode(), tracker:
        run()
    return tracker.peak


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", default="704x1216x121", help="HEIGHTxWIDTHxFRAMES")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--conditions", type=int, default=4, help="max_conditions")
    parser.add_argument("--text-tokens", type=int, default=256)
    parser.add_argument("--gpu", default="L4", choices=list(GPUS))
    args = parser.parse_args(argv)
    import diffusers

    diffusers.utils.logging.set_verbosity_error()
    height, width, frames = (int(part) for part in args.size.lower().split("x"))
    dtype = torch.bfloat16
    transformer, vae, _ = full_size_models(dtype, "meta")
    lat_f, lat_h, lat_w = (frames - 1) // 8 + 1, height // 32, width // 32
    tokens = lat_f * lat_h * lat_w

    def meta(*shape: int) -> Any:
        return torch.zeros(shape, dtype=dtype, device="meta")

    def encode(count_frames: int) -> Callable[[], Any]:
        return lambda: vae.encode(meta(1, 3, count_frames, height, width)).latent_dist.mode()

    def step(sequence: int) -> Callable[[], Any]:
        return lambda: transformer(
            hidden_states=meta(1, sequence, transformer.config.in_channels),
            encoder_hidden_states=meta(1, args.text_tokens, transformer.config.caption_channels),
            timestep=meta(1),
            encoder_attention_mask=meta(1, args.text_tokens),
            video_coords=torch.zeros(1, 3, sequence, device="meta"),
            return_dict=False,
        )

    print(
        f"counted on meta tensors (torch {torch.__version__}): LTX-Video 2B, {height}x{width}"
        f"x{frames}, {args.steps} steps, latent {lat_f}x{lat_h}x{lat_w} = {tokens} tokens;"
        f" {args.gpu} roofline (50% of peak FLOP/s, 70% of bandwidth, fused)"
    )
    print(f"\nVAE encoder resident weights (bf16): {weight_bytes(vae.encoder) / GIB:.2f} GiB")
    print("\nencode (once per condition, before denoising):")
    for label, count_frames in (("image", 1), (f"video, {frames} frames", frames)):
        for tiled in (False, True):
            if tiled:
                vae.enable_tiling()
            else:
                vae.disable_tiling()
            flops, ops = count(encode(count_frames))
            peak = peak_bytes(encode(count_frames))
            secs = seconds(ops, args.gpu, 0.5, 0.7, True)
            name = f"{label}, {'tiled' if tiled else 'untiled'}"
            print(
                f"  {name:32s} {flops / 1e12:7.2f} TFLOP  {secs:6.2f} s  "
                f"peak activations {peak / GIB:6.2f} GiB"
            )
    print(f"\ndenoise, {args.steps} steps (guidance 1.0):")
    base = None
    for label, extra in (
        ("text-to-video / conditions at frame 0", 0),
        (f"{args.conditions} images at frame_index > 0", args.conditions * lat_h * lat_w),
        (
            f"{args.conditions} videos at frame_index > 0",
            args.conditions * PREFIX_LATENT_FRAMES * lat_h * lat_w,
        ),
    ):
        sequence = tokens + extra
        flops, ops = count(step(sequence))
        secs = args.steps * seconds(ops, args.gpu, 0.5, 0.7, True)
        peak = peak_bytes(step(sequence))
        base = base or secs
        print(
            f"  {label:40s} {sequence:6d} tokens  {args.steps * flops / 1e12:7.1f} TFLOP  "
            f"{secs:6.2f} s (x{secs / base:.2f})  peak activations {peak / GIB:5.2f} GiB"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
