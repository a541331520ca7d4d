"""The speed switches of a profile's fit (gpu_worker/fit.py) on tiny-random on the CPU:
the attention backend, fp8 linears and the compiled blocks' warm-up. Each one either
runs here or shows the fallback a device without it takes."""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import pytest
import torch

from gpu_worker import fit, tiny_random
from gpu_worker.generation import Renderer
from ltxv.core.profiles import all_profiles

PROFILE = all_profiles()["tiny-random"]
# tiny-random's default size (64x96, 9 frames, 3 steps), which its warm-up compiles.
REQUEST = {**PROFILE.defaults, "prompt": "a red car on a city street at night", "seed": 7}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return tiny_random.ensure(tmp_path_factory.getbasetemp() / "tiny-random")


@pytest.fixture(scope="module")
def eager(model_dir) -> np.ndarray:
    return Renderer(PROFILE, model_dir=model_dir).render(REQUEST).frames


def with_fit(model_dir, **switches) -> Renderer:
    profile = dataclasses.replace(PROFILE, fit={**PROFILE.fit, **switches})
    return Renderer(profile, model_dir=model_dir)


def levels(a: np.ndarray, b: np.ndarray) -> int:
    return int(np.abs(a.astype(int) - b.astype(int)).max())


def test_every_profile_says_every_switch():
    for profile in all_profiles().values():
        assert profile.fit["attention_backend"] in ("native", "sage", "_native_cudnn", "_flash_3")
        assert profile.fit["fp8"] in fit.FP8_MODES
        assert isinstance(profile.fit["compile"], bool)
        if profile.accelerator == "cuda":
            assert profile.fit["compile"]  # exact within a level; warm-up undoes a failure


def test_attention_backend_serves_self_attention_only(model_dir, eager):
    renderer = with_fit(model_dir, attention_backend="_native_math")
    frames = renderer.render(REQUEST).frames
    assert renderer.applied["attention_backend"] == "_native_math"
    blocks = renderer.pipe.transformer.transformer_blocks
    assert {str(b.attn1.processor._attention_backend) for b in blocks} == {
        "AttentionBackendName._NATIVE_MATH"
    }
    # Cross-attention keeps the default: it carries the prompt's padding mask.
    assert {b.attn2.processor._attention_backend for b in blocks} == {None}
    assert levels(frames, eager) <= 1


@pytest.mark.parametrize(
    ("backend", "reason"),
    [
        ("sage", "sageattention"),  # its package is not installed here
        ("_native_cudnn", ""),  # cuDNN attention needs a CUDA device
    ],
)
def test_an_attention_backend_this_device_lacks_falls_back_to_native(
    model_dir, eager, caplog, backend, reason
):
    renderer = with_fit(model_dir, attention_backend=backend)
    with caplog.at_level(logging.WARNING, logger="gpu_worker.fit"):
        frames = renderer.render(REQUEST).frames
    assert renderer.applied["attention_backend"] == "native"
    blocks = renderer.pipe.transformer.transformer_blocks
    assert {b.attn1.processor._attention_backend for b in blocks} == {None}
    (record,) = [r for r in caplog.records if "attention backend unavailable" in r.message]
    assert record.attention_backend == backend and reason in record.reason.lower()
    assert np.array_equal(frames, eager)


def test_fp8_weights_quantize_the_blocks_linears_only(model_dir, eager):
    from torchao.quantization import Float8Tensor

    renderer = with_fit(model_dir, fp8="weights")
    frames = renderer.render(REQUEST).frames
    assert renderer.applied["fp8"] == "weights"
    transformer = renderer.pipe.transformer
    quantized = {
        name
        for name, module in transformer.named_modules()
        if isinstance(module, torch.nn.Linear) and isinstance(module.weight, Float8Tensor)
    }
    expected = {
        name
        for name, module in transformer.named_modules()
        if name.startswith("transformer_blocks.") and isinstance(module, torch.nn.Linear)
    }
    assert quantized == expected and quantized
    for name in ("proj_in", "proj_out", "caption_projection.linear_1"):
        assert not isinstance(transformer.get_submodule(name).weight, Float8Tensor)
    # Random weights render noise: fp8 moves it, within the picture's range.
    assert frames.shape == eager.shape and not np.array_equal(frames, eager)


def test_fp8_matmuls_off_a_capable_gpu_fall_back_to_the_weights_as_they_are(
    model_dir, eager, caplog
):
    renderer = with_fit(model_dir, fp8="dynamic")
    with caplog.at_level(logging.WARNING, logger="gpu_worker.fit"):
        frames = renderer.render(REQUEST).frames
    assert renderer.applied["fp8"] == "off"
    assert any("need a CUDA GPU" in getattr(r, "reason", "") for r in caplog.records)
    assert np.array_equal(frames, eager)


def test_fp8_mode_must_be_known():
    with pytest.raises(ValueError, match="fp8 must be one of"):
        fit.quantize_linears(torch.nn.Linear(16, 16), "int4", "cpu")


def test_compile_warms_up_at_load(model_dir, eager, caplog):
    renderer = with_fit(model_dir, compile=True)
    with caplog.at_level(logging.INFO, logger="gpu_worker.generation"):
        renderer.load()
    assert renderer.applied["compile"]
    assert any(r.message == "warmed up" for r in caplog.records)
    # The warm-up compiled the default size; a job of that size runs the compiled code.
    assert levels(renderer.render(REQUEST).frames, eager) <= 1


def test_a_compile_that_fails_at_warm_up_is_undone(model_dir, eager, monkeypatch, caplog):
    """A compiler bug on a new GPU (here: a backend that raises) costs speed, not jobs."""

    def broken_backend(graph, example_inputs):
        raise RuntimeError("the compiler broke")

    monkeypatch.setitem(fit.COMPILE_OPTIONS, "backend", broken_backend)
    renderer = with_fit(model_dir, compile=True)
    with caplog.at_level(logging.ERROR, logger="gpu_worker.generation"):
        renderer.load()
    assert not renderer.applied["compile"]
    assert any("rendering eagerly" in r.message for r in caplog.records)
    assert not any(
        getattr(m, "_compiled_call_impl", None) for m in renderer.pipe.transformer.modules()
    )
    assert np.array_equal(renderer.render(REQUEST).frames, eager)
