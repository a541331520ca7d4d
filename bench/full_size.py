"""The LTX-Video 2B models at their published full sizes, with random weights (no download).

Speed and memory do not depend on the weights' values, so the benchmarks build the
transformer, the VAE and the T5-XXL text encoder from configs: on CUDA to time them
(`generate.py`), on the `meta` device to count them (`count.py`).
"""

from __future__ import annotations

from typing import Any

from gpu_worker import tiny_random

# The transformer's config is the class defaults (LTX-Video 2B: 28 layers, 32 heads x 64,
# caption channels 4096).
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
    **tiny_random.VAE_COMMON,
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


def full_size_models(dtype: Any, device: str, seed: int = 0) -> tuple[Any, Any, Any]:
    """(transformer, vae, text_encoder) at full size in `dtype` on `device`, in eval mode;
    the same seed gives the same weights."""
    import torch
    from diffusers import AutoencoderKLLTXVideo, LTXVideoTransformer3DModel
    from transformers import T5Config, T5EncoderModel

    default_dtype = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # allocate at the final dtype: T5-XXL in fp32 is 19 GB
    try:
        with torch.device(device):
            torch.manual_seed(seed)
            transformer = LTXVideoTransformer3DModel()
            vae = AutoencoderKLLTXVideo(**VAE_095_CONFIG)
            text_encoder = T5EncoderModel(T5Config(**T5_XXL_CONFIG))
    finally:
        torch.set_default_dtype(default_dtype)
    # The VAE keeps one float32 parameter (the decoder's timestep scale) unless cast, as
    # loading a checkpoint with a dtype casts it.
    return tuple(m.to(dtype=dtype).eval() for m in (transformer, vae, text_encoder))


def build_random_full_size(profile: Any, device: str) -> Any:
    """The profile's pipeline at its published size with random weights, built in place."""
    import diffusers
    import torch
    from diffusers import FlowMatchEulerDiscreteScheduler
    from transformers import T5TokenizerFast

    transformer, vae, text_encoder = full_size_models(getattr(torch, profile.dtype), device)
    # Tokenizing costs nothing next to the encoder, which always sees max_sequence_length
    # padded tokens; the tiny hand-written vocabulary stands in for T5's.
    tokenizer = T5TokenizerFast(vocab=tiny_random.vocabulary(), extra_ids=0, model_max_length=256)
    # The scheduler diffusers' own conversions of the 0.9.5+ models ship (no shift): the
    # pipeline's timesteps are its sigmas, for plain diffusers and the Renderer alike.
    scheduler = FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=False)
    cls = getattr(diffusers, profile.pipeline)
    return cls(
        scheduler=scheduler,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        transformer=transformer,
    )
