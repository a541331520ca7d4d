"""How a model profile fits its device: the switches of model-profiles.json's "fit".

`before_move` runs on the pipeline as loaded, before it goes to the device, so that what
it drops never takes device memory. `after_move` runs on the device, where a switch can
be tried: an attention backend or fp8 kernel the device or its packages lack falls back
to the exact path with a warning rather than failing every job, and the returned dict
says what was really applied (the worker logs it; the benchmark records it per arm).
Compiling only wraps the blocks here; the first call compiles, so `Renderer.warm_up` is
where a compile that fails is noticed and undone.
"""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger(__name__)

NATIVE = "native"
FP8_MODES = ("off", "weights", "dynamic")
# torch.compile options for the repeated blocks. A module global so a test can hand in a
# backend that fails, the way a compiler bug on a new GPU would.
COMPILE_OPTIONS: dict[str, Any] = {"fullgraph": True}


def before_move(pipe: Any, fit: dict[str, Any]) -> None:
    if fit["vae_tiling"]:
        pipe.vae.enable_tiling()
    if not fit["vae_encoder"]:
        # Text-to-video decodes only; conditioning on images or videos would encode.
        pipe.vae.encoder = None


def after_move(pipe: Any, fit: dict[str, Any], device: str) -> dict[str, Any]:
    """Apply the device-side switches; what was applied, after any fallback."""
    transformer = pipe.transformer
    applied = {
        "vae_tiling": bool(fit["vae_tiling"]),
        "vae_encoder": pipe.vae.encoder is not None,
        "trim_prompt_padding": bool(fit["trim_prompt_padding"]),
        "attention_backend": set_self_attention(transformer, fit["attention_backend"]),
        # Quantized before compiling, so that the compiled blocks trace the fp8 linears.
        "fp8": quantize_linears(transformer, fit["fp8"], device),
        "compile": False,
    }
    if fit["compile"]:
        compile_blocks(transformer)
        applied["compile"] = True
    return applied


# -- prompt ---------------------------------------------------------------------------------


def trim_prompt_padding(
    embeds: Any, mask: Any, negative: Any, negative_mask: Any
) -> tuple[Any, Any, Any, Any]:
    """The prompt embeddings without the padding tokens every row masks out.

    T5 pads on the right to max_sequence_length (128) and the transformer's cross-attention
    masks the padding out, so cutting the columns no row attends to changes nothing but the
    work: a prompt of 20 tokens attends over 20 keys instead of 128. Positive and negative
    prompts keep one length (the longer one's), as classifier-free guidance batches them."""
    masks = [m for m in (mask, negative_mask) if m is not None]
    keep = max(int(m.sum(dim=-1).max()) for m in masks)
    keep = max(keep, 1)  # an empty prompt still has its end token

    def cut(tensor: Any) -> Any:
        return None if tensor is None else tensor[:, :keep].contiguous()

    return cut(embeds), cut(mask), cut(negative), cut(negative_mask)


# -- attention ------------------------------------------------------------------------------


def self_attention_modules(transformer: Any) -> list[Any]:
    """The video tokens' self-attention of every block. Cross-attention (attn2) keeps
    native SDPA: it carries the prompt's padding mask, which the fast backends refuse, and
    attends over at most 128 prompt tokens, a small share of the work."""
    return [block.attn1 for block in transformer.transformer_blocks]


def set_self_attention(transformer: Any, backend: str | None) -> str:
    """Route self-attention through a diffusers attention backend; the one in use."""
    backend = backend or NATIVE
    if backend == NATIVE:
        return NATIVE
    problem = _attention_problem(transformer, backend)
    if problem:
        log.warning(
            "attention backend unavailable: using native SDPA",
            extra={"attention_backend": backend, "reason": problem},
        )
        return NATIVE
    from diffusers.models.attention_dispatch import AttentionBackendName

    name = AttentionBackendName(backend)
    for attention in self_attention_modules(transformer):
        attention.processor._attention_backend = name
    return backend


def _attention_problem(transformer: Any, backend: str) -> str | None:
    """Why `backend` cannot run here (None when it can): its packages, then a small
    attention through it on the transformer's device and dtype, which is where an
    unsupported GPU or dtype shows."""
    import torch
    from diffusers.models.attention_dispatch import (
        AttentionBackendName,
        _check_attention_backend_requirements,
        dispatch_attention_fn,
    )

    try:
        name = AttentionBackendName(backend)
        _check_attention_backend_requirements(name)
        block = self_attention_modules(transformer)[0]
        heads, dim = block.heads, block.head_dim
        parameter = next(transformer.parameters())
        q, k, v = (
            torch.randn(1, 64, heads, dim, device=parameter.device, dtype=parameter.dtype)
            for _ in range(3)
        )
        with torch.inference_mode():
            out = dispatch_attention_fn(q, k, v, backend=name)
        if out.shape != q.shape or not torch.isfinite(out).all():
            return f"probe returned {tuple(out.shape)} with non-finite values"
    except Exception as exc:  # any failure here means: not on this device
        return f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
    return None


# -- fp8 ------------------------------------------------------------------------------------


def fp8_linear(module: Any, fqn: str) -> bool:
    """The transformer blocks' linear layers whose sizes fp8 matmuls take (multiples of
    16). The patch embedding, the timestep and caption projections and the output layer
    stay in the profile's dtype: small, and where quantization error costs the most."""
    import torch

    return (
        isinstance(module, torch.nn.Linear)
        and fqn.startswith("transformer_blocks.")
        and module.in_features % 16 == 0
        and module.out_features % 16 == 0
    )


def quantize_linears(transformer: Any, mode: str, device: str) -> str:
    """torchao float8 on the blocks' linears: "weights" stores the weights in float8 (half
    the memory, computed in the profile's dtype; any device); "dynamic" also casts the
    activations per row and runs float8 matmuls (CUDA compute capability 8.9+: L4, H100).
    The mode in use."""
    if mode not in FP8_MODES:
        raise ValueError(f"fp8 must be one of {FP8_MODES}, got {mode!r}")
    if mode == "off":
        return "off"
    problem = _fp8_problem(mode, device)
    if problem:
        log.warning("fp8 unavailable: keeping the weights as they are", extra={"reason": problem})
        return "off"
    from torchao.quantization import (
        Float8DynamicActivationFloat8WeightConfig,
        Float8WeightOnlyConfig,
        PerRow,
        quantize_,
    )

    if mode == "dynamic":
        config: Any = Float8DynamicActivationFloat8WeightConfig(granularity=PerRow())
    else:
        config = Float8WeightOnlyConfig()
    quantize_(transformer, config, filter_fn=fp8_linear)
    return mode


def _fp8_problem(mode: str, device: str) -> str | None:
    import torch

    try:
        import torchao  # noqa: F401
    except ImportError as exc:
        return f"torchao is not installed ({exc})"
    if mode == "dynamic":
        if device != "cuda":
            return f"float8 matmuls need a CUDA GPU, not the {device}"
        capability = torch.cuda.get_device_capability()
        if capability < (8, 9):
            return f"float8 matmuls need compute capability 8.9+, this GPU has {capability}"
    return None


# -- compile --------------------------------------------------------------------------------


def compile_blocks(transformer: Any) -> None:
    """Compile the blocks diffusers declares repeated (_repeated_blocks): one compile serves
    every layer; Inductor's cache (TORCHINDUCTOR_CACHE_DIR) keeps the result."""
    transformer.compile_repeated_blocks(**COMPILE_OPTIONS)


def uncompile_blocks(transformer: Any) -> None:
    """Undo `compile_blocks`: `Module.compile` only wraps the module's call."""
    import torch

    for module in transformer.modules():
        if getattr(module, "_compiled_call_impl", None) is not None:
            module._compiled_call_impl = None
    torch._dynamo.reset()
