"""The `tiny-random` model: the real diffusers LTX pipeline at miniature size, random weights.

Built from configs with seeded initialisation (no download), saved with `save_pretrained`
and reloaded like any diffusers model directory (`LTXPipeline.from_pretrained(dir)` with
`HF_HUB_OFFLINE=1`). The layout mirrors LTX-Video 0.9.1 (`a-r-r-o-w/LTX-Video-0.9.1-diffusers`)
where it matters to callers: the VAE patchifies 4x4 and compresses 32x in space and 8x in
time (height and width must be multiples of 32, frames 8k + 1), its decoder is timestep
conditioned and injects noise, and the text encoder is a T5 v1.1 encoder. Only the widths
and depths are tiny. The videos it renders are noise.

`single_file_dir` lays the same weights out as a single-file profile's model directory
(one checkpoint in Lightricks' original layout beside the diffusers-format parts).

The directory is byte-identical whichever process builds it. It is built once: a marker
file, written last, records the recipe and every file's digest; a directory without it
(a build that died half-way) or with another recipe is rebuilt.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

RECIPE = "tiny-random/ltx-0.9.1-layout/v1"  # change whenever anything below changes
MARKER = "tiny-random.json"
SEED = 171198
DEFAULT_DIR = Path("~/.cache/ltxv/tiny-random")

# What every LTX VAE this project builds shares (the benchmarks' full-size one too).
VAE_COMMON: dict[str, Any] = {
    "upsample_residual": (True, True, True),
    "upsample_factor": (2, 2, 2),
    "timestep_conditioning": True,
    "patch_size": 4,
    "patch_size_t": 1,
    "resnet_norm_eps": 1e-6,
    "scaling_factor": 1.0,
    "encoder_causal": True,
    "decoder_causal": False,
}

# Real 0.9.1 VAE: block_out_channels (128, 256, 512, 512), decoder (256, 512, 1024),
# layers (4, 3, 3, 3, 4) / (5, 6, 7, 8). Decoder widths must halve per level.
VAE_CONFIG: dict[str, Any] = {
    "in_channels": 3,
    "out_channels": 3,
    "latent_channels": 8,
    "block_out_channels": (8, 16, 32, 32),
    "decoder_block_out_channels": (8, 16, 32),
    "layers_per_block": (1, 1, 1, 1, 1),
    "decoder_layers_per_block": (1, 1, 1, 1),
    "spatio_temporal_scaling": (True, True, True, False),
    "decoder_spatio_temporal_scaling": (True, True, True),
    "decoder_inject_noise": (False, True, True, True),
    **VAE_COMMON,
}

# Real: 32 heads x 64, 28 layers, caption_channels 4096 (T5-XXL d_model).
TRANSFORMER_CONFIG: dict[str, Any] = {
    "in_channels": 8,
    "out_channels": 8,
    "patch_size": 1,
    "patch_size_t": 1,
    "num_attention_heads": 4,
    "attention_head_dim": 8,
    "cross_attention_dim": 32,
    "num_layers": 2,
    "caption_channels": 32,
}

# The converted 0.9.1 pipeline's scheduler.
SCHEDULER_CONFIG: dict[str, Any] = {
    "use_dynamic_shifting": True,
    "base_shift": 0.95,
    "max_shift": 2.05,
    "base_image_seq_len": 1024,
    "max_image_seq_len": 4096,
    "shift_terminal": 0.1,
}

# Real: T5 v1.1 XXL encoder (d_model 4096, d_ff 10240, 24 layers, 64 heads, 32128 tokens).
TOKENIZER_MAX_LENGTH = 128


def vocabulary() -> list[tuple[str, float]]:
    """A hand-written unigram vocabulary in T5's order: <pad>=0, </s>=1, <unk>=2, then pieces."""
    words = [
        "a",
        "the",
        "of",
        "and",
        "in",
        "on",
        "with",
        "at",
        "to",
        "is",
        "are",
        "an",
        "by",
        "for",
        "from",
        "as",
        "this",
        "that",
        "it",
        "its",
        "cat",
        "dog",
        "man",
        "woman",
        "person",
        "car",
        "city",
        "street",
        "sky",
        "sea",
        "water",
        "forest",
        "mountain",
        "light",
        "sunset",
        "night",
        "day",
        "camera",
        "shot",
        "slow",
        "motion",
        "close",
        "up",
        "wide",
        "view",
        "walking",
        "running",
        "flying",
        "red",
        "blue",
        "green",
        "white",
        "black",
        "golden",
        "bright",
        "dark",
    ]
    chars = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,;:!?'\"-()"
    pieces: list[tuple[str, float]] = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    pieces.append(("\u2581", -3.0))
    pieces += [("\u2581" + word, -5.0 - 0.01 * i) for i, word in enumerate(words)]
    pieces += [("\u2581" + ch, -8.0) for ch in chars]
    pieces += [(ch, -9.0) for ch in chars]
    return pieces


def _t5_config(vocab_size: int) -> dict[str, Any]:
    return {
        "vocab_size": vocab_size,
        "d_model": TRANSFORMER_CONFIG["caption_channels"],
        "d_kv": 8,
        "d_ff": 64,
        "num_layers": 2,
        "num_heads": 4,
        "relative_attention_num_buckets": 8,
        "relative_attention_max_distance": 32,
        "feed_forward_proj": "gated-gelu",
        "dropout_rate": 0.0,
        "is_encoder_decoder": False,
        "tie_word_embeddings": False,
        "pad_token_id": 0,
        "eos_token_id": 1,
    }


def default_dir() -> Path:
    return DEFAULT_DIR.expanduser()


def build_pipeline() -> Any:
    """The miniature `LTXPipeline` in memory, the same weights on every call and machine."""
    import torch
    from diffusers import FlowMatchEulerDiscreteScheduler, LTXPipeline

    # From their modules: mypy reads diffusers' top-level names as its torch-less dummies.
    from diffusers.models.autoencoders.autoencoder_kl_ltx import AutoencoderKLLTXVideo
    from diffusers.models.transformers.transformer_ltx import LTXVideoTransformer3DModel

    # transformers 5 has one T5 tokenizer (tokenizers-backed); T5TokenizerFast is its alias.
    from transformers import T5Config, T5EncoderModel, T5Tokenizer

    vocab = vocabulary()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        transformer = LTXVideoTransformer3DModel(**TRANSFORMER_CONFIG)
        torch.manual_seed(SEED + 1)
        vae = AutoencoderKLLTXVideo(**VAE_CONFIG)
        # diffusers starts the decoder's noise-injection scales at zero (trained ones are
        # not): give them seeded values so the tiny decoder really injects noise.
        with torch.no_grad():
            for name, parameter in vae.named_parameters():
                if "per_channel_scale" in name:
                    parameter.copy_(0.1 * torch.randn_like(parameter))
        torch.manual_seed(SEED + 2)
        text_encoder = T5EncoderModel(T5Config(**_t5_config(len(vocab))))
    tokenizer = T5Tokenizer(vocab=vocab, extra_ids=0, model_max_length=TOKENIZER_MAX_LENGTH)
    scheduler = FlowMatchEulerDiscreteScheduler(**SCHEDULER_CONFIG)
    for module in (transformer, vae, text_encoder):
        module.eval()
    return LTXPipeline(
        scheduler=scheduler,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        transformer=transformer,
    )


@contextmanager
def _quiet_progress_bars() -> Iterator[None]:
    from transformers.utils import logging as transformers_logging

    was_enabled = transformers_logging.is_progress_bar_enabled()
    transformers_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            transformers_logging.enable_progress_bar()


def file_digests(directory: Path) -> dict[str, str]:
    """sha256 of every file under `directory` (the marker itself left out), by relative path."""
    return {
        path.relative_to(directory).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(directory.rglob("*"))
        if path.is_file() and path.name != MARKER
    }


def is_built(directory: Path) -> bool:
    try:
        marker = json.loads((directory / MARKER).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(marker, dict) and marker.get("recipe") == RECIPE


def ensure(directory: Path | str | None = None) -> Path:
    """The model directory, built first if missing, half-written or from another recipe.

    Safe against concurrent builders: each builds into its own temporary sibling and
    renames it into place; whoever loses the race keeps the winner's (identical) files.
    """
    target = Path(directory).expanduser() if directory is not None else default_dir()
    if is_built(target):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        with _quiet_progress_bars():
            build_pipeline().save_pretrained(staging, safe_serialization=True)
        marker = {"recipe": RECIPE, "seed": SEED, "files": file_digests(staging)}
        (staging / MARKER).write_text(json.dumps(marker, indent=2, sort_keys=True) + "\n")
        if target.exists() and not is_built(target):
            shutil.rmtree(target, ignore_errors=True)
        try:
            os.replace(staging, target)
        except OSError:
            if not is_built(target):  # neither ours nor a finished one from a racing builder
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


# -- the single-file layout ------------------------------------------------------------
# Lightricks publish each LTX-Video release as one safetensors (ltxv-2b-0.9.8-distilled
# .safetensors): the transformer under "model.diffusion_model.", the VAE under "vae.", in
# the original module names that diffusers' from_single_file converts from
# (diffusers/loaders/single_file_utils.py: convert_ltx_transformer_checkpoint_to_diffusers,
# convert_ltx_vae_checkpoint_to_diffusers with its 0.9.1 renames, which this layout takes).

SINGLE_FILE = "tiny-random-single-file.safetensors"

# diffusers' name -> the original's, for the transformer (its renames reversed).
_TRANSFORMER_RENAMES = {
    "proj_in": "patchify_proj",
    "time_embed": "adaln_single",
    "norm_q": "q_norm",
    "norm_k": "k_norm",
}
# diffusers' module prefix -> the original's, for the VAE; the longest matching one wins.
_VAE_PREFIXES = {
    "decoder.mid_block": "decoder.up_blocks.0",
    **{
        f"decoder.up_blocks.{i}{part}": f"decoder.up_blocks.{2 * i + offset}"
        for i in range(4)
        for part, offset in ((".upsamplers.0", 1), ("", 2))
    },
    "decoder.time_embedder": "decoder.last_time_embedder",
    "decoder.scale_shift_table": "decoder.last_scale_shift_table",
    "encoder.down_blocks.0": "encoder.down_blocks.0",
    "encoder.down_blocks.0.downsamplers.0": "encoder.down_blocks.1",
    "encoder.down_blocks.0.conv_out": "encoder.down_blocks.2",
    "encoder.down_blocks.1": "encoder.down_blocks.3",
    "encoder.down_blocks.1.downsamplers.0": "encoder.down_blocks.4",
    "encoder.down_blocks.1.conv_out": "encoder.down_blocks.5",
    "encoder.down_blocks.2": "encoder.down_blocks.6",
    "encoder.down_blocks.2.downsamplers.0": "encoder.down_blocks.7",
    "encoder.down_blocks.3": "encoder.down_blocks.8",
    "encoder.mid_block": "encoder.down_blocks.9",
    "latents_mean": "per_channel_statistics.mean-of-means",
    "latents_std": "per_channel_statistics.std-of-means",
}
_VAE_RENAMES = {
    ".resnets.": ".res_blocks.",
    ".conv_shortcut.conv.": ".conv_shortcut.",
    ".norm3.": ".norm3.norm.",
}


def _original_vae_key(key: str) -> str:
    prefixes = [p for p in _VAE_PREFIXES if key == p or key.startswith(p + ".")]
    if prefixes:
        prefix = max(prefixes, key=len)
        key = _VAE_PREFIXES[prefix] + key[len(prefix) :]
    for new, old in _VAE_RENAMES.items():
        key = key.replace(new, old)
    return "vae." + key


def _original_transformer_key(key: str) -> str:
    for new, old in _TRANSFORMER_RENAMES.items():
        key = key.replace(new, old)
    return "model.diffusion_model." + key


def write_single_file(model_dir: Path | str, path: Path | str) -> Path:
    """The tiny model's transformer and VAE as one checkpoint in the original layout.

    Checked on the way: diffusers' conversion of the file gives back exactly the tiny
    model's state dicts (every tensor, by name)."""
    from diffusers.loaders.single_file_utils import (
        convert_ltx_transformer_checkpoint_to_diffusers,
        convert_ltx_vae_checkpoint_to_diffusers,
    )
    from safetensors.torch import load_file, save_file

    model_dir, path = Path(model_dir), Path(path)
    weights = "diffusion_pytorch_model.safetensors"
    transformer = load_file(model_dir / "transformer" / weights)
    vae = load_file(model_dir / "vae" / weights)
    original = {_original_transformer_key(k): v for k, v in transformer.items()}
    original |= {_original_vae_key(k): v for k, v in vae.items()}
    back = convert_ltx_transformer_checkpoint_to_diffusers(dict(original))
    back_vae = convert_ltx_vae_checkpoint_to_diffusers(dict(original))
    for name, ours, theirs in (("transformer", transformer, back), ("vae", vae, back_vae)):
        if set(ours) != set(theirs) or any(not ours[k].equal(theirs[k]) for k in ours):
            unmatched = sorted(set(ours) ^ set(theirs))[:5]
            raise RuntimeError(f"the {name}'s original names do not convert back: {unmatched}")
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(original, path)
    return path


def single_file_dir(target: Path | str, model_dir: Path | str | None = None) -> Path:
    """A model directory laid out as the worker's for a single-file profile (what
    gpu_worker.fetch_model puts there: model_index.json, scheduler, text encoder and
    tokenizer, beside the checkpoint SINGLE_FILE), plus the transformer's and the VAE's
    configs, so that it loads with no hub."""
    source, target = ensure(model_dir), Path(target).expanduser()
    target.mkdir(parents=True, exist_ok=True)
    shutil.copy2(source / "model_index.json", target)
    for part in ("scheduler", "text_encoder", "tokenizer"):
        shutil.copytree(source / part, target / part, dirs_exist_ok=True)
    for part in ("transformer", "vae"):
        (target / part).mkdir(exist_ok=True)
        shutil.copy2(source / part / "config.json", target / part)
    write_single_file(source, target / SINGLE_FILE)
    return target


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("directory", nargs="?", type=Path, default=None)
    args = parser.parse_args()
    print(ensure(args.directory))


if __name__ == "__main__":
    main()
