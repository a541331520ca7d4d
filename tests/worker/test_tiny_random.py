"""The tiny-random model: deterministic bytes across processes, offline reload, real layout."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from transformers import T5TokenizerFast

from gpu_worker import tiny_random

# Builds (if needed) in a fresh interpreter, reloads with the real pipeline class while the
# hub is switched off, and reports what it saw.
BUILD_AND_LOAD = """
import json, sys
from gpu_worker import tiny_random
path = tiny_random.ensure(sys.argv[1])
from diffusers import LTXPipeline
pipe = LTXPipeline.from_pretrained(path)
print(json.dumps({
    "files": tiny_random.file_digests(path),
    "components": {name: type(c).__name__ for name, c in pipe.components.items()},
    "spatial": pipe.vae_spatial_compression_ratio,
    "temporal": pipe.vae_temporal_compression_ratio,
    "patch": [pipe.vae.config.patch_size, pipe.vae.config.patch_size_t],
    "vocab": pipe.tokenizer.vocab_size,
    "tokens": pipe.tokenizer("a cat walking at sunset").input_ids,
}))
"""


def _offline_env(home: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_HOME=str(home))
    return env


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The session's tiny model, built in this process (shared with test_generation)."""
    return tiny_random.ensure(tmp_path_factory.getbasetemp() / "tiny-random")


@pytest.fixture(scope="module")
def fresh_process_builds(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    """Two more builds, each in its own interpreter (run side by side), reloaded offline."""
    base = tmp_path_factory.mktemp("builds")
    env = _offline_env(base / "hf-home")
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", BUILD_AND_LOAD, str(base / f"build-{i}")],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for i in range(2)
    ]
    reports = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        reports.append(json.loads(out.strip().splitlines()[-1]))
    return reports


def test_builds_are_byte_identical_across_processes(model_dir, fresh_process_builds):
    ours = tiny_random.file_digests(model_dir)
    assert {"model_index.json", "vae/diffusion_pytorch_model.safetensors"} <= set(ours)
    for report in fresh_process_builds:
        assert report["files"] == ours


def test_marker_records_recipe_and_digests(model_dir):
    marker = json.loads((model_dir / tiny_random.MARKER).read_text())
    assert marker["recipe"] == tiny_random.RECIPE
    assert marker["files"] == tiny_random.file_digests(model_dir)


def test_reloads_offline_with_the_real_classes(fresh_process_builds):
    report = fresh_process_builds[0]
    assert report["components"] == {
        "transformer": "LTXVideoTransformer3DModel",
        "vae": "AutoencoderKLLTXVideo",
        "scheduler": "FlowMatchEulerDiscreteScheduler",
        "text_encoder": "T5EncoderModel",
        "tokenizer": T5TokenizerFast.__name__,  # transformers 5: an alias of T5Tokenizer
    }
    assert report["tokens"][-1] == 1  # </s>
    assert 2 not in report["tokens"]  # every piece of the prompt is in the vocabulary


def test_layout_compresses_like_ltx_0_9_1(fresh_process_builds):
    report = fresh_process_builds[0]
    assert report["patch"] == [4, 1]
    assert (report["spatial"], report["temporal"]) == (32, 8)


def test_built_directory_is_not_rebuilt(model_dir):
    marker = model_dir / tiny_random.MARKER
    before = marker.stat().st_mtime_ns
    assert tiny_random.ensure(model_dir) == model_dir
    assert marker.stat().st_mtime_ns == before


def test_half_written_directory_is_rebuilt(model_dir, tmp_path):
    broken = tmp_path / "tiny"
    shutil.copytree(model_dir, broken)
    (broken / tiny_random.MARKER).unlink()  # a build that died before its last write
    (broken / "vae" / "diffusion_pytorch_model.safetensors").write_bytes(b"truncated")
    (broken / "leftover.tmp").write_text("x")

    assert tiny_random.ensure(broken) == broken

    assert tiny_random.is_built(broken)
    assert tiny_random.file_digests(broken) == tiny_random.file_digests(model_dir)


def test_other_recipe_is_rebuilt(model_dir, tmp_path, monkeypatch):
    old = tmp_path / "tiny"
    shutil.copytree(model_dir, old)
    monkeypatch.setattr(tiny_random, "RECIPE", tiny_random.RECIPE + "-next")
    assert not tiny_random.is_built(old)
    tiny_random.ensure(old)
    assert json.loads((old / tiny_random.MARKER).read_text())["recipe"].endswith("-next")


def test_fetch_model_builds_tiny_random_where_the_boot_script_expects_it(tmp_path, monkeypatch):
    import subprocess
    import sys

    target = tmp_path / "models" / "tiny-random"
    env = {
        "LTXV_DEFAULT_MODEL": "tiny-random",
        "LTXV_MODEL_DIR": str(target),
        "HF_HUB_OFFLINE": "1",
    }
    import os

    done = subprocess.run(
        [sys.executable, "-m", "gpu_worker.fetch_model"],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert (target / "model_index.json").is_file()
