"""A counted estimate of one render: FLOPs and bytes on `meta` tensors, no GPU, no weights.

    .venv/bin/python bench/count.py                     # 704x1216x121, 8 steps, batch 1
    .venv/bin/python bench/count.py --size 512x768x121 --steps 8

Builds the LTX-Video 2B transformer, the 0.9.5 VAE and the T5-XXL encoder at full size on
the `meta` device (shapes only) and runs the T5 encode, one denoising step and the VAE
decode (untiled and tiled) under `torch.utils.flop_counter.FlopCounterMode`. A second pass
records every aten op's FLOPs and the bytes it reads and writes (attention counted as one
flash-style kernel: q, k, v and the output) for a per-op roofline: each op takes the longer
of its compute time and its memory time. "eager" charges every op; "fused" charges only
matmuls, convolutions and attention, as if every elementwise op were fused into them (a
floor that torch.compile approaches, never reaches). Estimates, not measurements.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode, flop_registry, sdpa_flop_count

from full_size import full_size_models

GIB = 1024**3
# Dense bf16 tensor-core peak and memory bandwidth, from the vendors' data sheets.
GPUS = {"L4": (121e12, 300e9), "H100 SXM": (989e12, 3.35e12)}
FREE_OPS = {"empty", "empty_like", "empty_strided", "new_empty", "detach", "alias", "lift_fresh"}


@dataclass
class Op:
    flops: float
    bytes: float
    heavy: bool  # matmul, convolution or attention: kept when the rest is fused


def _nbytes(tensor: Any) -> int:
    dense = tensor.numel() * tensor.element_size()
    try:  # an expanded tensor reads its storage, not its broadcast size
        return min(dense, tensor.untyped_storage().nbytes())
    except (RuntimeError, NotImplementedError):
        return dense


def _tensors(tree: Any) -> list[Any]:
    flat, _ = torch.utils._pytree.tree_flatten(tree)
    return [t for t in flat if isinstance(t, torch.Tensor)]


class OpRecorder(TorchDispatchMode):
    """Every aten op's FLOPs (FlopCounterMode's own formulas) and bytes moved."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: list[Op] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        name = func._overloadpacket.__name__
        if func.is_view or name in FREE_OPS:
            return out
        formula = flop_registry.get(func._overloadpacket)
        flops = formula(*args, **kwargs, out_val=out) if formula else 0
        seen: dict[int, int] = {}
        for tensor in _tensors((args, kwargs, out)):
            seen[id(tensor)] = _nbytes(tensor)
        self.ops.append(Op(flops, sum(seen.values()), heavy=flops > 0))
        return out


class FlashAttention(TorchFunctionMode):
    """Attention as one kernel that never writes the score matrix (as flash and cuDNN do)."""

    def __init__(self, recorder: OpRecorder) -> None:
        super().__init__()
        self.recorder = recorder

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is not F.scaled_dot_product_attention:
            return func(*args, **kwargs)
        names = ("query", "key", "value")
        query, key, value = (*args[:3], *(kwargs[n] for n in names[len(args[:3]) :]))
        out = torch.empty((*query.shape[:-1], value.shape[-1]), dtype=query.dtype, device="meta")
        moved = sum(_nbytes(t) for t in _tensors((args, kwargs))) + _nbytes(out)
        flops = sdpa_flop_count(query.shape, key.shape, value.shape)
        self.recorder.ops.append(Op(flops, moved, heavy=True))
        return out


def count(run: Callable[[], Any]) -> tuple[float, list[Op]]:
    """(FlopCounterMode's total, the per-op records) of one call."""
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        run()
    recorder = OpRecorder()
    with torch.no_grad(), FlashAttention(recorder), recorder:
        run()
    return counter.get_total_flops(), recorder.ops


def seconds(ops: list[Op], gpu: str, mfu: float, mbu: float, fused: bool) -> float:
    peak, bandwidth = GPUS[gpu]
    return sum(
        max(op.flops / (peak * mfu), op.bytes / (bandwidth * mbu))
        for op in ops
        if op.heavy or not fused
    )


def weight_bytes(module: Any) -> int:
    # parameters() lists a tied weight once (T5's embedding); state_dict() twice.
    return sum(_nbytes(t) for t in (*module.parameters(), *module.buffers()))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", default="704x1216x121", help="HEIGHTxWIDTHxFRAMES")
    parser.add_argument("--steps", type=int, default=8, help="denoising steps")
    parser.add_argument("--text-tokens", type=int, default=256, help="T5 sequence (padded)")
    parser.add_argument("--mfu", type=float, default=0.5, help="share of peak FLOP/s reached")
    parser.add_argument("--mbu", type=float, default=0.7, help="share of peak bandwidth reached")
    args = parser.parse_args(argv)
    import diffusers

    diffusers.utils.logging.set_verbosity_error()  # not the dtype-cast notes of meta modules
    height, width, frames = (int(part) for part in args.size.lower().split("x"))

    dtype = torch.bfloat16
    transformer, vae, text_encoder = full_size_models(dtype, "meta")
    lat_f, lat_h, lat_w = (frames - 1) // 8 + 1, height // 32, width // 32
    tokens = lat_f * lat_h * lat_w
    channels = transformer.config.in_channels

    def meta(*shape: int, kind: Any = dtype) -> Any:
        return torch.zeros(shape, dtype=kind, device="meta")

    def text() -> Any:
        # No padding mask: on meta tensors transformers cannot inspect one (.item()), and
        # the padded positions cost the same FLOPs either way.
        return text_encoder(input_ids=meta(1, args.text_tokens, kind=torch.long)).last_hidden_state

    def step() -> Any:
        return transformer(
            hidden_states=meta(1, tokens, channels),
            encoder_hidden_states=meta(1, args.text_tokens, text_encoder.config.d_model),
            timestep=meta(1),
            encoder_attention_mask=meta(1, args.text_tokens),
            num_frames=lat_f,
            height=lat_h,
            width=lat_w,
            rope_interpolation_scale=(8 / 24, 32, 32),
            return_dict=False,
        )

    def decode() -> Any:
        return vae.decode(meta(1, vae.config.latent_channels, lat_f, lat_h, lat_w), temb=meta(1))

    phases: dict[str, tuple[float, list[Op], int]] = {}
    phases["T5-XXL encode"] = (*count(text), 1)
    phases["denoise (transformer)"] = (*count(step), args.steps)
    phases["VAE decode, untiled"] = (*count(decode), 1)
    vae.enable_tiling()
    phases["VAE decode, tiled"] = (*count(decode), 1)

    print(
        f"counted on meta tensors (torch {torch.__version__}): LTX-Video 2B, {height}x{width}"
        f"x{frames}, {args.steps} steps, batch 1 (guidance 1.0), latent {lat_f}x{lat_h}x{lat_w}"
        f" = {tokens} tokens, {args.text_tokens} text tokens"
    )
    print("\nresident weights (bf16):")
    parts = {
        "T5-XXL encoder": weight_bytes(text_encoder),
        "transformer": weight_bytes(transformer),
        "VAE encoder (unused by text-to-video)": weight_bytes(vae.encoder),
        "VAE decoder": weight_bytes(vae.decoder),
    }
    for name, size in parts.items():
        print(f"  {name:40s} {size / GIB:6.2f} GiB")
    print(f"  {'all':40s} {sum(parts.values()) / GIB:6.2f} GiB")

    gpus = list(GPUS)
    header = ["phase", "x", "TFLOP", "GB moved eager"]
    header += [f"{gpu} {mode} s" for gpu in gpus for mode in ("eager", "fused")]
    rows = []
    totals = {tiled: [0.0] * (2 * len(gpus)) for tiled in (False, True)}
    for name, (flops, ops, times) in phases.items():
        moved = sum(op.bytes for op in ops)
        est = [
            times * seconds(ops, gpu, args.mfu, args.mbu, fused)
            for gpu in gpus
            for fused in (False, True)
        ]
        for tiled in (False, True):
            if "VAE" not in name or ("untiled" in name) != tiled:
                totals[tiled] = [a + b for a, b in zip(totals[tiled], est, strict=True)]
        cells = [name, str(times), f"{times * flops / 1e12:.1f}", f"{times * moved / 1e9:.0f}"]
        rows.append(cells + [f"{s:.2f}" for s in est])
    for tiled, label in ((False, "render, untiled decode"), (True, "render, tiled decode")):
        rows.append([label, "", "", ""] + [f"{s:.2f}" for s in totals[tiled]])
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    print("\nestimated seconds (an estimate, not a measurement):")
    for row in [header, *rows]:
        print(
            "  "
            + "  ".join(
                c.ljust(w) if i == 0 else c.rjust(w)
                for i, (c, w) in enumerate(zip(row, widths, strict=True))
            )
        )
    print(
        "\nassumptions: "
        + "; ".join(
            f"{g} {p / 1e12:.0f} TFLOP/s bf16 dense, {b / 1e9:.0f} GB/s"
            for g, (p, b) in GPUS.items()
        )
        + f"; {args.mfu:.0%} of peak FLOP/s and {args.mbu:.0%} of peak bandwidth reached;"
        " each op at the slower of its compute and memory time; attention as one flash-style"
        " kernel; no launch overheads, host time, copies to the host or encoding."
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
