"""A single-file checkpoint (the distilled profile's source): read once, loaded with no hub,
rendering what the same weights render in diffusers format (issue 14)."""

from __future__ import annotations

import socket
from pathlib import Path

import numpy as np
import pytest
import safetensors
import safetensors.torch
import torch

from gpu_worker import loading, tiny_random
from gpu_worker.generation import Renderer
from ltxv import schemas
from ltxv.profiles import ModelProfile, all_profiles

REQUEST = {"prompt": "a red car on a city street at night", "seed": 7, "num_inference_steps": 2}


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_random.ensure(tmp_path_factory.getbasetemp() / "tiny-random")


@pytest.fixture(scope="module")
def single_file_dir(tiny_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_random.single_file_dir(tmp_path_factory.mktemp("single-file"), tiny_dir)


def single_file_profile() -> ModelProfile:
    """tiny-random's sizes and switches, from a single-file source as the distilled one's."""
    body = schemas.load("model-profiles.json")["profiles"]["tiny-random"]
    source = {
        **all_profiles()["ltx-video-2b-distilled"].source,
        "repo": "example/not-on-the-hub",
        "weights_file": tiny_random.SINGLE_FILE,
    }
    return ModelProfile.from_dict("tiny-single-file", {**body, "source": source})


class CountingFile:
    """A safetensors file handle that notes every tensor read through it."""

    def __init__(self, real, reads: list[str]) -> None:
        self._real, self._reads = real, reads

    def __enter__(self) -> CountingFile:
        self._real.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._real.__exit__(*exc)

    def get_tensor(self, key: str):
        self._reads.append(key)
        return self._real.get_tensor(key)

    def get_tensors(self):  # all of them (safetensors.torch.load_file)
        tensors = self._real.get_tensors()
        self._reads.extend(tensors)
        return tensors

    def __getattr__(self, name: str):
        return getattr(self._real, name)


@pytest.fixture
def checkpoint_reads(monkeypatch, single_file_dir) -> tuple[list[str], list[str], list[str]]:
    """(opens, reads) of the checkpoint from here on, through whichever safetensors entry
    point opens it (ours, or diffusers' `load_file` under `from_single_file` on a path),
    and the checkpoint's keys."""
    checkpoint = single_file_dir / tiny_random.SINGLE_FILE
    with safetensors.safe_open(str(checkpoint), "pt") as file:
        keys = sorted(file.keys())
    opens: list[str] = []
    reads: list[str] = []
    real_open = safetensors.safe_open

    def counting_open(filename, *args, **kwargs):
        handle = real_open(filename, *args, **kwargs)
        if Path(filename) != checkpoint:
            return handle
        opens.append(str(filename))
        return CountingFile(handle, reads)

    monkeypatch.setattr(safetensors, "safe_open", counting_open)
    monkeypatch.setattr(safetensors.torch, "safe_open", counting_open)
    return opens, reads, keys


@pytest.fixture
def no_network(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    def refuse(*args, **kwargs):
        raise OSError("no network in this test: everything comes from the model directory")

    monkeypatch.setattr(socket.socket, "connect", refuse)


def test_the_checkpoint_is_read_once_and_renders_as_the_diffusers_format_model(
    tiny_dir, single_file_dir, checkpoint_reads, no_network
):
    opens, reads, keys = checkpoint_reads
    renderer = Renderer(single_file_profile(), model_dir=single_file_dir)
    renderer.load()

    assert len(opens) == 1
    assert sorted(reads) == keys  # every tensor, once
    # One component's tensors at a time: the transformer's all read before the VAE's.
    first_vae = min(i for i, key in enumerate(reads) if key.startswith("vae."))
    assert all(not key.startswith("vae.") for key in reads[:first_vae])
    assert all(key.startswith("vae.") for key in reads[first_vae:])

    reference = Renderer(all_profiles()["tiny-random"], model_dir=tiny_dir)
    reference.load()
    for name in ("transformer", "vae"):
        ours = getattr(renderer.pipe, name).state_dict()
        theirs = getattr(reference.pipe, name).state_dict()
        assert ours.keys() == theirs.keys()
        assert all(torch.equal(ours[k], theirs[k]) for k in ours), name
    # The same bits; where they sit in memory differs (tensors read from the file, or
    # from_pretrained's), and with it the CPU kernels' summation order: one level at most.
    ours, theirs = renderer.render(REQUEST).frames, reference.render(REQUEST).frames
    assert np.abs(ours.astype(int) - theirs.astype(int)).max() <= 1
    # Given fresh allocations, the two render bit for bit the same frames.
    with torch.no_grad():
        for pipe in (renderer.pipe, reference.pipe):
            for parameter in [*pipe.transformer.parameters(), *pipe.vae.parameters()]:
                parameter.data = parameter.data.clone()
    assert np.array_equal(renderer.render(REQUEST).frames, reference.render(REQUEST).frames)


def test_without_local_configs_they_come_from_the_repo_diffusers_infers(
    single_file_dir, monkeypatch
):
    """A model directory without transformer/ and vae/ configs (what fetch_model syncs
    today): the configs come from the repository diffusers infers for the whole file, as
    `from_single_file` on the path did, though each component sees only its own tensors."""
    from diffusers import AutoencoderKLLTXVideo, LTXVideoTransformer3DModel
    from diffusers.loaders.single_file_utils import fetch_diffusers_config

    checkpoint = single_file_dir / tiny_random.SINGLE_FILE
    inferred = fetch_diffusers_config(safetensors.torch.load_file(checkpoint))
    asked: list[tuple[str, str, str, set[str]]] = []

    def recording(cls):
        def from_single_file(state, **kwargs):
            asked.append((cls.__name__, kwargs["config"], kwargs["subfolder"], set(state)))
            return cls.__name__

        return from_single_file

    for cls in (LTXVideoTransformer3DModel, AutoencoderKLLTXVideo):
        monkeypatch.setattr(cls, "from_single_file", recording(cls))
    assert loading.read_single_file(checkpoint, torch.float32) == (
        "LTXVideoTransformer3DModel",
        "AutoencoderKLLTXVideo",
    )
    repo = inferred["pretrained_model_name_or_path"]
    assert repo == "diffusers/LTX-Video-0.9.1"  # tiny-random's layout is 0.9.1's
    assert [(name, config, sub) for name, config, sub, _ in asked] == [
        ("LTXVideoTransformer3DModel", repo, "transformer"),
        ("AutoencoderKLLTXVideo", repo, "vae"),
    ]
    transformer_keys, vae_keys = asked[0][3], asked[1][3]
    assert all(k.startswith("model.diffusion_model.") for k in transformer_keys)
    assert all(k.startswith("vae.") for k in vae_keys)


def test_fetching_the_weights_also_fetches_their_configs(single_file_dir, tmp_path, monkeypatch):
    """What fetch_model syncs to the cache bucket holds transformer/ and vae/ configs, so a
    VM's worker loads the checkpoint without asking the hub."""
    import huggingface_hub

    asked = []

    def download(repo, filename, local_dir):
        asked.append((repo, filename))
        path = Path(local_dir) / filename
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("{}")
        return str(path)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", download)
    loading.fetch_model_configs(single_file_dir / tiny_random.SINGLE_FILE, tmp_path)
    assert asked == [
        ("diffusers/LTX-Video-0.9.1", "transformer/config.json"),
        ("diffusers/LTX-Video-0.9.1", "vae/config.json"),
    ]
    assert loading.has_model_configs(tmp_path)
