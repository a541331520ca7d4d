"""Renderer on the tiny-random profile: sizes, determinism, progress, interruption, errors."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from diffusers.pipelines.ltx.pipeline_ltx_condition import LTXVideoCondition
from PIL import Image

from gpu_worker import tiny_random
from gpu_worker.generation import (
    Renderer,
    RenderInterrupted,
    RenderOutOfMemory,
    RenderRefused,
    RenderResult,
    TransientRenderError,
)
from ltxv.core.profiles import all_profiles

PROFILE = all_profiles()["tiny-random"]
REQUEST = {
    "prompt": "a red car on a city street at night",
    "negative_prompt": "",
    "seed": 7,
    "height": 64,
    "width": 96,
    "num_frames": 9,
    "num_inference_steps": 3,
    "fps": 8,
}


@pytest.fixture(scope="module")
def renderer(tmp_path_factory: pytest.TempPathFactory) -> Renderer:
    model_dir = tiny_random.ensure(tmp_path_factory.getbasetemp() / "tiny-random")
    renderer = Renderer(PROFILE, model_dir=model_dir)
    assert renderer.load() > 0
    return renderer


def test_loads_once_on_the_profile_device(renderer):
    assert renderer.load() == 0.0
    assert renderer.device == "cpu"
    assert renderer.pipe.transformer.dtype == torch.float32


def test_render_returns_the_requested_frames(renderer):
    request = {**REQUEST, "height": 96, "width": 64, "num_frames": 17, "num_inference_steps": 2}
    result = renderer.render(request)
    assert isinstance(result, RenderResult)
    assert result.frames.shape == (17, 96, 64, 3)
    assert result.frames.dtype == np.uint8
    assert result.steps == 2
    assert result.seconds > 0
    assert set(result.timings) == {"encode_prompt", "denoise", "decode", "copy_to_host"}
    assert result.frames.std() > 0  # noise, not a blank video


def test_omitted_fields_take_the_profile_defaults(renderer):
    result = renderer.render({"prompt": "a cat"})
    defaults = PROFILE.defaults
    assert result.frames.shape == (defaults["num_frames"], defaults["height"], defaults["width"], 3)
    assert result.steps == defaults["num_inference_steps"]


def test_same_seed_gives_identical_frames(renderer):
    first = renderer.render(REQUEST).frames
    torch.manual_seed(12345)  # whatever the global RNG holds must not matter
    torch.rand(10)
    second = renderer.render(REQUEST).frames
    assert np.array_equal(first, second)


def test_render_leaves_the_global_rng_alone(renderer):
    state = torch.get_rng_state()
    renderer.render(REQUEST)
    assert torch.equal(torch.get_rng_state(), state)


def test_different_seed_gives_different_frames(renderer):
    first = renderer.render(REQUEST).frames
    other = renderer.render({**REQUEST, "seed": 8}).frames
    assert not np.array_equal(first, other)


def test_on_step_reports_each_step(renderer):
    seen: list[tuple[int, int]] = []
    renderer.render({**REQUEST, "num_inference_steps": 4}, on_step=lambda i, n: seen.append((i, n)))
    assert seen == [(1, 4), (2, 4), (3, 4), (4, 4)]


def test_should_stop_interrupts_after_that_step(renderer):
    seen: list[tuple[int, int]] = []
    asked: list[int] = []

    def should_stop() -> bool:
        asked.append(len(seen))
        return len(seen) >= 2

    with pytest.raises(RenderInterrupted) as caught:
        renderer.render(
            {**REQUEST, "num_inference_steps": 5},
            on_step=lambda i, n: seen.append((i, n)),
            should_stop=should_stop,
        )
    assert seen == [(1, 5), (2, 5)]
    assert asked == [1, 2]
    assert (caught.value.step, caught.value.total) == (2, 5)
    # The pipeline renders normally again afterwards.
    assert renderer.render(REQUEST).frames.shape == (9, 64, 96, 3)


def test_out_of_memory_is_its_own_transient_error(renderer, monkeypatch):
    def oom(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(renderer, "_render", oom)
    with pytest.raises(RenderOutOfMemory, match="the cpu ran out of memory") as caught:
        renderer.render(REQUEST)
    assert isinstance(caught.value, TransientRenderError)


@pytest.mark.parametrize(
    "change", [{"height": 65}, {"width": 100}, {"num_frames": 10}, {"num_frames": 0}]
)
def test_sizes_the_model_cannot_render_are_refused(renderer, change):
    with pytest.raises(RenderRefused):
        renderer.render({**REQUEST, **change})


def test_a_request_the_pipeline_itself_cannot_take_is_refused_not_transient(renderer):
    """A video condition pinned past the last frame: diffusers' trim_conditioning_sequence
    leaves a frame count that is not 8k + 1 and the real pipeline raises ValueError; the
    same request fails that way on every attempt."""
    video = [Image.new("RGB", (96, 64), (200, 40, 40))] * 9
    beyond = [LTXVideoCondition(video=video, frame_index=16)]
    with pytest.raises(RenderRefused, match=r"cannot render these parameters \(ValueError"):
        renderer.render(REQUEST, beyond)
    assert renderer.render(REQUEST).frames.shape == (9, 64, 96, 3)  # and it renders on


def test_the_plain_pipeline_renders_the_same_weights_and_refuses_conditions(tmp_path_factory):
    """The 0.9.1 profile's pipeline class (LTXPipeline), on the same tiny weights: it
    renders text to video, and a condition is refused before any work (it has no
    `conditions`), not silently dropped."""
    model_dir = tiny_random.ensure(tmp_path_factory.getbasetemp() / "tiny-random")
    plain = all_profiles()["ltx-video-2b"].pipeline
    profile = dataclasses.replace(PROFILE, pipeline=plain, conditioning=None)
    renderer = Renderer(profile, model_dir=model_dir)
    seen: list[tuple[int, int]] = []
    result = renderer.render(REQUEST, on_step=lambda i, n: seen.append((i, n)))
    assert type(renderer.pipe).__name__ == "LTXPipeline"
    assert result.frames.shape == (9, 64, 96, 3)
    assert seen == [(1, 3), (2, 3), (3, 3)]
    assert np.array_equal(result.frames, renderer.render(REQUEST).frames)
    image = Image.new("RGB", (96, 64))
    with pytest.raises(RenderRefused, match="cannot render conditions"):
        renderer.render(REQUEST, [LTXVideoCondition(image=image, frame_index=0)])


def test_the_profiles_memory_switches_are_applied(renderer):
    """tiny-random fits as the deployed profiles do: tiled VAE, and the VAE encoder kept
    where the profile conditions on images and videos (dropped where it cannot)."""
    renderer.load()
    vae = renderer.pipe.vae
    assert type(renderer.pipe).__name__ == "LTXConditionPipeline"
    assert PROFILE.fit["vae_tiling"] and PROFILE.fit["vae_encoder"]
    assert vae.use_tiling
    assert vae.encoder is not None and renderer.applied["vae_encoder"]
    assert any(name.startswith("encoder.") for name, _ in vae.named_parameters())
    # Every real profile says how it fits its GPU, and fits it the same way.
    for profile in all_profiles().values():
        assert profile.fit["vae_tiling"]
        assert profile.fit["vae_encoder"] == (profile.conditioning is not None)
        if profile.accelerator == "cuda":
            assert profile.fit["gpu_memory_gib"] <= 22  # an L4's usable memory


def test_a_profile_without_conditioning_drops_the_encoder(tmp_path_factory):
    model_dir = tiny_random.ensure(tmp_path_factory.getbasetemp() / "tiny-random")
    fit = {**PROFILE.fit, "vae_encoder": False}
    renderer = Renderer(dataclasses.replace(PROFILE, fit=fit), model_dir=model_dir)
    renderer.load()
    assert renderer.pipe.vae.encoder is None and not renderer.applied["vae_encoder"]


def renderer_with_small_tiles(tmp_path_factory) -> Renderer:
    """tiny-random with VAE tiles smaller than a 128x192 frame, so the tiled paths run
    (its frames are smaller than the default tiles)."""
    model_dir = tiny_random.ensure(tmp_path_factory.getbasetemp() / "tiny-random")
    renderer = Renderer(PROFILE, model_dir=model_dir)
    renderer.load()
    vae = renderer.pipe.vae
    vae.tile_sample_min_height = vae.tile_sample_min_width = 64
    vae.tile_sample_stride_height = vae.tile_sample_stride_width = 32
    return renderer


def test_tiled_encode_covers_conditions_larger_than_a_tile(tmp_path_factory):
    """fit's vae_tiling (diffusers' enable_tiling) tiles the encoder too: a condition
    larger than a tile is encoded tile by tile, and the render stays deterministic."""
    renderer = renderer_with_small_tiles(tmp_path_factory)
    vae = renderer.pipe.vae
    calls = []
    tiled_encode = vae.tiled_encode
    vae.tiled_encode = lambda *a, **k: calls.append(a[0].shape) or tiled_encode(*a, **k)
    request = {**REQUEST, "height": 128, "width": 192}
    image = Image.new("RGB", (192, 128), (30, 160, 90))
    condition = [LTXVideoCondition(image=image, frame_index=0)]
    frames = renderer.render(request, condition).frames
    assert calls and calls[0][-2:] == (128, 192)
    assert np.array_equal(frames, renderer.render(request, condition).frames)


def test_tiled_decode_runs_on_frames_larger_than_a_tile(tmp_path_factory):
    """Tiles smaller than the frame, so the tiled path really runs (tiny-random's frames
    are smaller than the default tiles). Its random weights decode noise, so the picture
    is not compared with an untiled decode: the GPU benchmark compares real ones."""
    renderer = renderer_with_small_tiles(tmp_path_factory)
    vae = renderer.pipe.vae
    calls = []
    tiled_decode = vae.tiled_decode
    vae.tiled_decode = lambda *a, **k: calls.append(1) or tiled_decode(*a, **k)
    request = {**REQUEST, "height": 128, "width": 192}
    frames = renderer.render(request).frames
    assert calls
    assert frames.shape == (9, 128, 192, 3)
    assert np.array_equal(frames, renderer.render(request).frames)


@pytest.mark.parametrize("guidance", [1.0, 3.0])
def test_cutting_the_prompt_padding_changes_nothing_but_the_work(tmp_path_factory, guidance):
    """The switch is exact up to float summation order: frames with and without it differ
    by at most one level (issue 14's bound for attention switches), in a few pixels."""
    model_dir = tiny_random.ensure(tmp_path_factory.getbasetemp() / "tiny-random")
    request = {**REQUEST, "guidance_scale": guidance, "negative_prompt": "blurry, dark"}
    trimmed = Renderer(PROFILE, model_dir=model_dir)
    full = Renderer(
        dataclasses.replace(PROFILE, fit={**PROFILE.fit, "trim_prompt_padding": False}),
        model_dir=model_dir,
    )
    assert PROFILE.fit["trim_prompt_padding"]
    a, b = trimmed.render(request).frames, full.render(request).frames
    assert np.abs(a.astype(int) - b.astype(int)).max() <= 1


def test_trim_prompt_padding_keeps_the_longer_prompt_whole():
    from gpu_worker.fit import trim_prompt_padding

    mask = torch.tensor([[1, 1, 1, 0, 0, 0]])
    negative_mask = torch.tensor([[1, 1, 1, 1, 1, 0]])
    embeds, negative = torch.randn(1, 6, 4), torch.randn(1, 6, 4)
    e, m, n, nm = trim_prompt_padding(embeds, mask, negative, negative_mask)
    assert e.shape == n.shape == (1, 5, 4) and m.shape == nm.shape == (1, 5)
    assert torch.equal(e, embeds[:, :5]) and torch.equal(nm, negative_mask[:, :5])
    # Guidance off: no negative prompt at all.
    e, m, n, nm = trim_prompt_padding(embeds, mask, None, None)
    assert e.shape == (1, 3, 4) and n is None and nm is None


COMPILED_RENDER = """
import json, sys
import dataclasses
from gpu_worker.generation import Renderer
from ltxv.core.profiles import all_profiles

profile = all_profiles()["tiny-random"]
profile = dataclasses.replace(profile, fit={**profile.fit, "compile": True})
renderer = Renderer(profile, model_dir=sys.argv[1])
seconds = renderer.load()  # compiles (or reads the cache) in its warm-up render
assert renderer.applied["compile"]
frames = renderer.render(json.loads(sys.argv[2])).frames
frames.tofile(sys.argv[3])
print(json.dumps({"seconds": seconds}))
"""


def test_compiled_blocks_render_the_same_and_their_cache_survives_a_restart(
    tmp_path, tmp_path_factory
):
    """fit.compile on the CPU (Inductor): each run a fresh process sharing one cache
    directory, as worker restarts on a VM share /var/cache/ltxv/torchinductor."""
    import json
    import os
    import subprocess
    import sys

    model_dir = tiny_random.ensure(tmp_path_factory.getbasetemp() / "tiny-random")
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "inductor")}
    runs = []
    for n in range(2):
        out = tmp_path / f"frames-{n}.bin"
        result = subprocess.run(
            [sys.executable, "-c", COMPILED_RENDER, str(model_dir), json.dumps(REQUEST), str(out)],
            env=env, capture_output=True, text=True, timeout=300, check=False,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr[-3000:]
        runs.append(json.loads(result.stdout.strip().splitlines()[-1]))
    assert any((tmp_path / "inductor").iterdir())
    # The restarted process finds the compiled code: it does not pay the compile again.
    assert runs[1]["seconds"] < runs[0]["seconds"] / 2, runs
    eager = Renderer(PROFILE, model_dir=model_dir).render(REQUEST).frames
    compiled = np.fromfile(tmp_path / "frames-1.bin", dtype=np.uint8).reshape(eager.shape)
    assert np.abs(eager.astype(int) - compiled.astype(int)).max() <= 1
