"""Seconds per video: text encoding, denoising, VAE decode and mp4 encode, and peak memory.

    .venv/bin/python bench/generate.py                                  # tiny-random, CPU, seconds
    .venv/bin/python bench/generate.py --size 704x1216x121 --steps 3    # the old /predict size
    .venv/bin/python bench/generate.py --profile ltx-video-2b-distilled --random-weights

Every case goes through the worker's own code: `gpu_worker.generation.Renderer.render` and
`gpu_worker.encoding.encode_mp4`. Each case runs once unmeasured first (kernel selection,
torch.compile), then `--repeats` times; the table shows the median of each column.

On the CPU it runs `tiny-random` (the miniature model, built on the fly). With a real
profile and `--random-weights` it builds the transformer, the VAE and the T5-XXL text
encoder at their published full sizes from configs, with random weights (speed does not
depend on the weights, and no download is needed), on CUDA in the profile's dtype, and
times the profile's step count at 704x1216 and 512x768 (height x width), 121 frames, for a
bf16 baseline beside faster settings:

  baseline            native SDPA (torch picks flash / mem-efficient per call)
  cudnn-attn          diffusers' `_native_cudnn` SDPA backend for every attention
  flash-attn          `_native_flash` (no attention masks: may refuse T5 cross-attention)
  vae-tiling          VAE decode in overlapping tiles (less memory, some extra time)
  compile             torch.compile of the transformer (warm-up run pays the compile)
  compile+cudnn-attn  both

Peak memory is the GPU's (torch's allocator peak) on CUDA and the process's peak RSS.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gpu_worker import tiny_random
from gpu_worker.encoding import encode_mp4
from gpu_worker.generation import Renderer
from ltxv.core.profiles import ModelProfile, all_profiles

GIB = 1024**3
PROMPT = "A cinematic shot of a cyberpunk city in rain"


@dataclass(frozen=True)
class Variant:
    name: str
    attention: str | None = None  # a diffusers attention backend; None: native SDPA
    compile: bool = False
    vae_tiling: bool = False


VARIANTS = {
    v.name: v
    for v in (
        Variant("baseline"),
        Variant("cudnn-attn", attention="_native_cudnn"),
        Variant("flash-attn", attention="_native_flash"),
        Variant("vae-tiling", vae_tiling=True),
        Variant("compile", compile=True),
        Variant("compile+cudnn-attn", attention="_native_cudnn", compile=True),
    )
}
CUDA_VARIANTS = ("baseline", "cudnn-attn", "vae-tiling", "compile", "compile+cudnn-attn")
CPU_SIZES = ((64, 96, 9), (256, 384, 25), (480, 704, 41))
CUDA_SIZES = ((704, 1216, 121), (512, 768, 121))

# Published full-size configs (random weights). The transformer's are the class defaults
# (LTX-Video 2B: 28 layers, 32 heads x 64, caption channels 4096).
VAE_095_CONFIG: dict[str, Any] = {  # the 0.9.5+ VAE that the 2B 0.9.8 checkpoints carry
    "in_channels": 3,
    "out_channels": 3,
    "latent_channels": 128,
    "block_out_channels": (128, 256, 512, 1024, 2048),
    "down_block_types": ("LTXVideo095DownBlock3D",) * 4,
    "decoder_block_out_channels": (256, 512, 1024),
    "layers_per_block": (4, 6, 6, 2, 2),
    "decoder_layers_per_block": (5, 5, 5, 5),
    "spatio_temporal_scaling": (True, True, True, True),
    "decoder_spatio_temporal_scaling": (True, True, True),
    "decoder_inject_noise": (False, False, False, False),
    "downsample_type": ("spatial", "temporal", "spatiotemporal", "spatiotemporal"),
    "upsample_residual": (True, True, True),
    "upsample_factor": (2, 2, 2),
    "timestep_conditioning": True,
    "patch_size": 4,
    "patch_size_t": 1,
    "resnet_norm_eps": 1e-6,
    "scaling_factor": 1.0,
    "encoder_causal": True,
    "decoder_causal": False,
    "spatial_compression_ratio": 32,
    "temporal_compression_ratio": 8,
}
T5_XXL_CONFIG: dict[str, Any] = {  # google/t5-v1_1-xxl, encoder only
    "vocab_size": 32128,
    "d_model": 4096,
    "d_kv": 64,
    "d_ff": 10240,
    "num_layers": 24,
    "num_heads": 64,
    "relative_attention_num_buckets": 32,
    "relative_attention_max_distance": 128,
    "feed_forward_proj": "gated-gelu",
    "dropout_rate": 0.0,
    "layer_norm_epsilon": 1e-6,
    "is_encoder_decoder": False,
    "tie_word_embeddings": False,
}


# -- memory ---------------------------------------------------------------------------------


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM) for this process; False where it cannot."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def _peak_rss_bytes() -> int:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class PeakMemory:
    def __init__(self, cuda: bool) -> None:
        self.cuda = cuda
        self.gpu_bytes: int | None = None
        self.rss_bytes = 0

    def __enter__(self) -> PeakMemory:
        if self.cuda:
            import torch

            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        _reset_peak_rss()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.cuda:
            import torch

            torch.cuda.synchronize()
            self.gpu_bytes = torch.cuda.max_memory_allocated()
        self.rss_bytes = _peak_rss_bytes()


# -- building -------------------------------------------------------------------------------


def build_random_full_size(profile: ModelProfile, device: str) -> Any:
    """The profile's pipeline at its published size with random weights, built in place."""
    import diffusers
    import torch
    from diffusers import (
        AutoencoderKLLTXVideo,
        FlowMatchEulerDiscreteScheduler,
        LTXVideoTransformer3DModel,
    )
    from transformers import T5Config, T5EncoderModel, T5TokenizerFast

    dtype = getattr(torch, profile.dtype)
    default_dtype = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # allocate at the final dtype: T5-XXL in fp32 is 19 GB
    try:
        with torch.device(device):
            torch.manual_seed(0)
            transformer = LTXVideoTransformer3DModel()
            vae = AutoencoderKLLTXVideo(**VAE_095_CONFIG)
            text_encoder = T5EncoderModel(T5Config(**T5_XXL_CONFIG))
    finally:
        torch.set_default_dtype(default_dtype)
    for module in (transformer, vae, text_encoder):
        module.to(dtype=dtype).eval()
    # Tokenizing costs nothing next to the encoder, which always sees max_sequence_length
    # padded tokens; the tiny hand-written vocabulary stands in for T5's.
    tokenizer = T5TokenizerFast(vocab=tiny_random.vocabulary(), extra_ids=0, model_max_length=256)
    scheduler = FlowMatchEulerDiscreteScheduler(
        **{**tiny_random.SCHEDULER_CONFIG, "use_dynamic_shifting": False}
    )
    cls = getattr(diffusers, profile.pipeline)
    return cls(
        scheduler=scheduler,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        transformer=transformer,
    )


class VariantState:
    """Applies variants to one pipeline in turn (compile is one-way: run those last)."""

    def __init__(self, pipe: Any, compile_mode: str | None) -> None:
        self.pipe = pipe
        self.compile_mode = compile_mode
        self.attention: str | None = None
        self.compiled = False

    def apply(self, variant: Variant) -> None:
        if variant.attention != self.attention:
            self.pipe.transformer.set_attention_backend(variant.attention or "native")
            self.attention = variant.attention
        if variant.vae_tiling:
            self.pipe.vae.enable_tiling()
        else:
            self.pipe.vae.disable_tiling()
        if variant.compile and not self.compiled:
            self.pipe.transformer.compile(mode=self.compile_mode)
            self.compiled = True
        elif self.compiled and not variant.compile:
            raise ValueError("compiled variants must come after the others")


# -- running --------------------------------------------------------------------------------


def parse_size(text: str) -> tuple[int, int, int]:
    try:
        height, width, frames = (int(part) for part in text.lower().split("x"))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"size is HEIGHTxWIDTHxFRAMES, got {text!r}") from exc
    return height, width, frames


def run_case(
    renderer: Renderer, size: tuple[int, int, int], steps: int, fps: int, out: Path, cuda: bool
) -> dict[str, float]:
    height, width, frames = size
    request = {
        "prompt": PROMPT,
        "seed": 171198,
        "height": height,
        "width": width,
        "num_frames": frames,
        "num_inference_steps": steps,
        "fps": fps,
    }
    with PeakMemory(cuda) as memory:
        result = renderer.render(request)
        started = time.perf_counter()
        encode_mp4(result.frames, fps, out)
        encoded = time.perf_counter() - started
    row = {
        "text_s": result.timings["encode_prompt"],
        "denoise_s": result.timings["denoise"],
        "decode_s": result.timings["decode"],
        "encode_s": encoded,
    }
    row["total_s"] = sum(row.values())
    row["peak_rss_gib"] = memory.rss_bytes / GIB
    if memory.gpu_bytes is not None:
        row["peak_gpu_gib"] = memory.gpu_bytes / GIB
    return row


COLUMNS = (
    ("variant", "{}"),
    ("size", "{}"),
    ("steps", "{}"),
    ("warmup_s", "{:.2f}"),
    ("text_s", "{:.3f}"),
    ("denoise_s", "{:.3f}"),
    ("decode_s", "{:.3f}"),
    ("encode_s", "{:.3f}"),
    ("total_s", "{:.3f}"),
    ("peak_gpu_gib", "{:.2f}"),
    ("peak_rss_gib", "{:.2f}"),
)


def print_table(rows: list[dict[str, Any]]) -> None:
    cells = [[name for name, _ in COLUMNS]]
    for row in rows:
        if "error" in row:
            cells.append([row["variant"], row["size"], str(row["steps"]), "error: " + row["error"]])
            continue
        cells.append([fmt.format(row[name]) if name in row else "-" for name, fmt in COLUMNS])
    full = [line for line in cells if len(line) == len(COLUMNS)]
    widths = [max(len(line[i]) for line in full) for i in range(len(COLUMNS))]
    for line in cells:
        if len(line) < len(COLUMNS):  # an error row: the message takes the rest of the line
            print("  ".join(c.ljust(w) for c, w in zip(line[:3], widths, strict=False)), line[3])
        else:
            print("  ".join(c.rjust(w) for c, w in zip(line, widths, strict=True)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--profile", default="tiny-random", choices=sorted(all_profiles()))
    parser.add_argument(
        "--random-weights",
        action="store_true",
        help="build a real profile's models at full size with random weights (no download)",
    )
    parser.add_argument(
        "--size",
        action="append",
        type=parse_size,
        help="HEIGHTxWIDTHxFRAMES, repeatable (default: small sizes on the CPU; "
        "704x1216x121 and 512x768x121 on CUDA)",
    )
    parser.add_argument("--steps", type=int, help="denoising steps (default: the profile's)")
    parser.add_argument(
        "--variant",
        action="append",
        choices=sorted(VARIANTS),
        help="repeatable (default: baseline on the CPU; " + ", ".join(CUDA_VARIANTS) + " on CUDA)",
    )
    parser.add_argument("--repeats", type=int, default=1, help="measured runs per case")
    parser.add_argument("--warmup", type=int, default=1, help="unmeasured runs per case first")
    parser.add_argument("--device", choices=("cuda", "cpu"), help="default: the profile's")
    parser.add_argument("--model-dir", type=Path, help="tiny-random: where its model lives")
    parser.add_argument("--compile-mode", default=None, help="torch.compile mode (default: its)")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args(argv)

    import torch

    profile = all_profiles()[args.profile]
    tiny = profile.source.get("kind") == "tiny-random"
    if not tiny and not args.random_weights:
        parser.error(f"{args.profile} would download its weights: add --random-weights")
    renderer = Renderer(profile, model_dir=args.model_dir, device=args.device)
    cuda = renderer.device == "cuda"
    sizes = args.size or (CUDA_SIZES if cuda else CPU_SIZES)
    variants = [
        VARIANTS[name] for name in (args.variant or (CUDA_VARIANTS if cuda else ["baseline"]))
    ]
    variants.sort(key=lambda v: v.compile)  # compiling is one-way
    steps = args.steps or profile.defaults["num_inference_steps"]
    fps = profile.defaults["fps"]

    print(
        f"profile {profile.name} ({profile.pipeline}, {profile.dtype}) on {renderer.device}"
        f" [{torch.cuda.get_device_name() if cuda else f'{torch.get_num_threads()} threads'}]"
        f" torch {torch.__version__}",
        flush=True,
    )
    started = time.perf_counter()
    if args.random_weights:
        renderer.use(build_random_full_size(profile, renderer.device))
        print(f"built full-size random models in {time.perf_counter() - started:.1f} s", flush=True)
    else:
        load = renderer.load()
        print(f"loaded in {load:.1f} s", flush=True)
    settings = VariantState(renderer.pipe, args.compile_mode)

    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="ltxv-bench-") as scratch:
        out = Path(scratch) / "video.mp4"
        for variant in variants:
            for size in sizes:
                label = "x".join(map(str, size))
                row: dict[str, Any] = {"variant": variant.name, "size": label, "steps": steps}
                try:
                    settings.apply(variant)
                    warm_started = time.perf_counter()
                    for _ in range(args.warmup):
                        run_case(renderer, size, steps, fps, out, cuda)
                    row["warmup_s"] = time.perf_counter() - warm_started
                    runs = [
                        run_case(renderer, size, steps, fps, out, cuda) for _ in range(args.repeats)
                    ]
                except Exception as exc:  # one variant failing must not hide the others
                    row["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}"
                    if cuda:
                        torch.cuda.empty_cache()
                else:
                    for key in runs[0]:
                        row[key] = statistics.median(run[key] for run in runs)
                rows.append(row)
                print(f"  {variant.name} {label}: done", file=sys.stderr, flush=True)
    print_table(rows)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    return 1 if all("error" in row for row in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
