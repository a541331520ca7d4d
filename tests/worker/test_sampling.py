"""The noise levels a render walks, against Lightricks' own sampler (issue 14).

Tiny-random's weights with the distilled profile's pipeline class, scheduler config and
schedule: the scheduler is the real class, so the walk is the one the GPU renders.
"""

from __future__ import annotations

import dataclasses

import pytest

from gpu_worker import tiny_random
from gpu_worker.generation import Renderer
from ltxv.core import schemas
from ltxv.core.profiles import ModelProfile, all_profiles

# Lightricks/LTX-Video at 5260738e171955b66c0827f9af7e84d68fd1d919:
# configs/ltxv-2b-0.9.8-distilled.yaml lines 17 and 24, the distilled model's timesteps
# (its multi-scale recipe runs the first seven at 2/3 size, the last three after upscaling).
DISTILLED = [1.0, 0.9937, 0.9875, 0.9812, 0.975, 0.9094, 0.725, 0.4219]
# ltx_video/schedulers/rf.py lines 25-46, linear_quadratic_schedule(n): the schedule their
# "LinearQuadratic" sampler (and diffusers' LTXConditionPipeline) uses for n steps. The
# distilled timesteps are the 8-step one to four places.
LINEAR_QUADRATIC_8 = [1.0, 0.99375, 0.9875, 0.98125, 0.975, 0.909375, 0.725, 0.421875]
LINEAR_QUADRATIC_4 = [1.0, 0.9875, 0.975, 0.725]
# rf.py lines 256-261: RectifiedFlowScheduler.set_timesteps takes explicit timesteps as the
# sigmas; lines 344-353: step() moves from each to the next lower one, 0 after the last.
# So the latents reach each next timestep, and 0 at the end.

# The scheduler config Lightricks/LTX-Video ships in scheduler/ (the one the distilled
# profile loads), as Lightricks record it: ltx_video/utils/diffusers_config_mapping.py
# lines 13-28 (DIFFUSERS_SCHEDULER_CONFIG).
LTX_VIDEO_SCHEDULER = {
    "base_image_seq_len": 1024,
    "base_shift": 0.95,
    "invert_sigmas": False,
    "max_image_seq_len": 4096,
    "max_shift": 2.05,
    "num_train_timesteps": 1000,
    "shift": 1.0,
    "shift_terminal": 0.1,
    "use_beta_sigmas": False,
    "use_dynamic_shifting": True,
    "use_exponential_sigmas": False,
    "use_karras_sigmas": False,
}
# Before the fix, at 8 steps, that scheduler (dynamic shifting off) stretched the sigmas to
# [1.0, 0.99027, 0.98054, 0.97081, 0.96108, 0.85892, 0.57189, 0.1] while the model was told
# LINEAR_QUADRATIC_8: the latents moved 0.55 of the way from noise in all.

REQUEST = {"prompt": "a red car on a city street at night", "seed": 7, "guidance_scale": 1.0}


def distilled_on_tiny_weights() -> ModelProfile:
    profiles = schemas.load("model-profiles.json")["profiles"]
    body = {
        **profiles["tiny-random"],
        "pipeline": profiles["ltx-video-2b-distilled"]["pipeline"],
        "sampler": profiles["ltx-video-2b-distilled"]["sampler"],
    }
    return ModelProfile.from_dict("tiny-distilled", body)


@pytest.fixture(scope="module")
def renderer(tmp_path_factory: pytest.TempPathFactory) -> Renderer:
    from diffusers import FlowMatchEulerDiscreteScheduler, LTXConditionPipeline

    model_dir = tiny_random.ensure(tmp_path_factory.getbasetemp() / "tiny-random")
    pipe = LTXConditionPipeline.from_pretrained(model_dir)
    pipe.scheduler = FlowMatchEulerDiscreteScheduler.from_config(LTX_VIDEO_SCHEDULER)
    renderer = Renderer(distilled_on_tiny_weights())
    renderer.use(pipe)
    return renderer


def walk(renderer: Renderer, monkeypatch: pytest.MonkeyPatch, steps: int) -> tuple[list, list]:
    """Render `steps` steps; the noise level the model was told at each step, and the one
    each step actually took the latents to (measured from the latents themselves)."""
    scheduler = renderer.pipe.scheduler
    step = scheduler.step
    told: list[float] = []
    moved: list[float] = []

    def recording(model_output, timestep, sample, *args, **kwargs):
        out = step(model_output, timestep, sample, *args, **kwargs)
        after = out[0] if isinstance(out, tuple) else out.prev_sample
        # prev = sample + dt * model_output: dt, by least squares over every latent.
        direction = model_output.double()
        dt = ((after.double() - sample.double()) * direction).sum() / direction.square().sum()
        told.append(float(timestep) / 1000)
        moved.append(float(dt))
        return out

    monkeypatch.setattr(scheduler, "step", recording)
    result = renderer.render({**REQUEST, "num_inference_steps": steps})
    assert result.steps == steps
    reached, level = [], 1.0
    for dt in moved:
        level -= dt
        reached.append(level)
    return told, reached


def test_the_distilled_schedule_is_lightricks_own(renderer, monkeypatch):
    told, reached = walk(renderer, monkeypatch, 8)
    # Each step takes the latents to the level the model is told next, and the last to 0.
    assert reached == pytest.approx([*DISTILLED[1:], 0.0], abs=1e-5)
    assert told == pytest.approx(DISTILLED, abs=1e-6)


def test_another_step_count_walks_lightricks_linear_quadratic_schedule(renderer, monkeypatch):
    told, reached = walk(renderer, monkeypatch, 4)
    assert reached == pytest.approx([*LINEAR_QUADRATIC_4[1:], 0.0], abs=1e-5)
    assert told == pytest.approx(LINEAR_QUADRATIC_4, abs=1e-6)


def test_the_distilled_profile_carries_lightricks_timesteps():
    profile = all_profiles()["ltx-video-2b-distilled"]
    assert profile.pipeline == "LTXConditionPipeline"
    assert profile.sampler["timesteps"] == DISTILLED
    assert profile.defaults["num_inference_steps"] == len(DISTILLED)
    assert profile.sampler["timesteps"] == pytest.approx(LINEAR_QUADRATIC_8, abs=1e-4)


def test_the_plain_pipeline_keeps_its_shifted_scheduler(tmp_path_factory):
    """LTXPipeline (the 0.9.1 profile) hands the scheduler sigmas and a shift, and steps by
    the sigmas: its resolution-dependent shift and terminal stretch are the model's own
    (Lightricks' 0.9.1 scheduler: SD3 shifting, target_shift_terminal 0.1)."""
    model_dir = tiny_random.ensure(tmp_path_factory.getbasetemp() / "tiny-random")
    plain = all_profiles()["ltx-video-2b"].pipeline
    assert plain == "LTXPipeline"  # tiny-random itself renders with LTXConditionPipeline
    profile = dataclasses.replace(all_profiles()["tiny-random"], pipeline=plain, conditioning=None)
    renderer = Renderer(profile, model_dir=model_dir)
    renderer.load()
    assert type(renderer.pipe).__name__ == "LTXPipeline"
    config = renderer.pipe.scheduler.config
    assert config.use_dynamic_shifting and config.shift_terminal == 0.1
