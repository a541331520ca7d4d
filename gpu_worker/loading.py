"""Loading a model profile's diffusers pipeline from its source (model-profiles.json).

`tiny-random` builds its miniature model on the fly; `huggingface` reads a synced model
directory or the hub: a diffusers-format repository, or a single-file checkpoint (the
transformer and the VAE in one safetensors, as Lightricks publish them) beside the
diffusers-format text encoder, tokenizer and scheduler.

A single-file checkpoint is opened once and each tensor read once: the transformer's
tensors, then the VAE's, each handed to diffusers' `from_single_file` as a state dict and
let go before the next are read, so host memory holds one component's tensors at a time.
(`from_single_file` on the path reads the whole file, and did so for each component.)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ltxv.profiles import ModelProfile

# Which tensors of a single-file checkpoint each component takes: diffusers' own split
# (convert_ltx_transformer_checkpoint_to_diffusers, convert_ltx_vae_checkpoint_to_diffusers).
COMPONENTS = (
    ("LTXVideoTransformer3DModel", "transformer", lambda key: "vae" not in key),
    ("AutoencoderKLLTXVideo", "vae", lambda key: "vae." in key),
)


def load_pipeline(profile: ModelProfile, model_dir: Path | None, dtype: Any) -> Any:
    """The profile's pipeline on the CPU, at `dtype`."""
    kind = profile.source.get("kind")
    if kind == "tiny-random":
        from . import tiny_random

        directory = tiny_random.ensure(model_dir)
        return pipeline_class(profile).from_pretrained(directory, dtype=dtype)
    if kind == "huggingface":
        return _load_huggingface(profile, model_dir, dtype)
    raise ValueError(f"profile {profile.name!r}: unknown source kind {kind!r}")


def pipeline_class(profile: ModelProfile) -> Any:
    import diffusers

    return getattr(diffusers, profile.pipeline)


def _load_huggingface(profile: ModelProfile, model_dir: Path | None, dtype: Any) -> Any:
    source = profile.source
    cls = pipeline_class(profile)
    local = model_dir if model_dir and model_dir.is_dir() else None
    weights_file = source.get("weights_file")
    if weights_file is None:
        # A diffusers-format repository (or a directory synced from it).
        if local is not None and (local / "model_index.json").is_file():
            return cls.from_pretrained(local, dtype=dtype)
        return cls.from_pretrained(source["repo"], dtype=dtype)
    if local is not None and (local / weights_file).is_file():
        checkpoint: Path | str = local / weights_file
    else:
        from huggingface_hub import hf_hub_download

        checkpoint = hf_hub_download(source["repo"], weights_file)
    config_dir = local if local is not None and has_model_configs(local) else None
    transformer, vae = read_single_file(checkpoint, dtype, config_dir=config_dir)
    if local is not None and (local / "model_index.json").is_file():
        base: Any = local
    else:
        base = source.get("text_encoder_repo") or source["repo"]
    return cls.from_pretrained(base, transformer=transformer, vae=vae, dtype=dtype)


def has_model_configs(directory: Path) -> bool:
    """Whether `directory` holds the transformer's and the VAE's diffusers configs."""
    return all((directory / sub / "config.json").is_file() for _, sub, _ in COMPONENTS)


def read_single_file(
    checkpoint: Path | str, dtype: Any, *, config_dir: Path | None = None
) -> tuple[Any, Any]:
    """The transformer and the VAE of a single-file LTX checkpoint, the file read once.

    Their diffusers configs come from `config_dir`'s transformer/ and vae/ when given (no
    hub), else from the hub repository diffusers infers for the whole checkpoint, as
    `from_single_file` on the path would."""
    import diffusers
    from safetensors import safe_open

    models = []
    with safe_open(str(checkpoint), framework="pt", device="cpu") as file:
        keys = list(file.keys())
        config = str(config_dir) if config_dir is not None else config_repo(file, keys)
        for class_name, subfolder, takes in COMPONENTS:
            state = {key: file.get_tensor(key) for key in keys if takes(key)}
            cls = getattr(diffusers, class_name)
            models.append(
                cls.from_single_file(state, config=config, subfolder=subfolder, dtype=dtype)
            )
            del state  # (diffusers' conversion pops its tensors out of it already)
    transformer, vae = models
    return transformer, vae


def config_repo(file: Any, keys: list[str]) -> str:
    """The repository diffusers takes the checkpoint's model configs from, inferred as
    `from_single_file` infers it (key names and shapes), from empty meta tensors: no tensor
    data is read for it."""
    import torch
    from diffusers.loaders.single_file_utils import fetch_diffusers_config

    shapes = {key: torch.empty(file.get_slice(key).get_shape(), device="meta") for key in keys}
    return fetch_diffusers_config(shapes)["pretrained_model_name_or_path"]


def fetch_model_configs(checkpoint: Path, directory: Path) -> None:
    """Put the transformer's and the VAE's configs beside the checkpoint (from the
    repository diffusers infers for it), so that loading needs no hub: run where the
    weights are fetched, and synced to every VM with them."""
    from huggingface_hub import hf_hub_download
    from safetensors import safe_open

    with safe_open(str(checkpoint), framework="pt", device="cpu") as file:
        repo = config_repo(file, list(file.keys()))
    for _, subfolder, _ in COMPONENTS:
        hf_hub_download(repo, f"{subfolder}/config.json", local_dir=directory)
