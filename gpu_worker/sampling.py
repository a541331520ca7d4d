"""The noise levels a render walks through: the scheduler LTXConditionPipeline needs, and a
profile's own schedule (model-profiles.json "sampler").

LTXConditionPipeline hands its scheduler explicit timesteps (the profile's, or else its
linear-quadratic schedule for the step count) and steps each token from `t / 1000` down to
the next lower of the scheduler's sigmas. The converted scheduler config of
`Lightricks/LTX-Video` (the 0.9.0 conversion: dynamic shifting, `shift_terminal` 0.1)
shifts and stretches those sigmas while the timesteps stay as given, so the two disagree:
at 8 steps the distilled model was told [1.0 … 0.4219] but the latents were moved by only
0.55 of the way from noise, and the last step stopped at a sigma of 0.1. Lightricks' own
sampler (ltx_video/schedulers/rf.py, `RectifiedFlowScheduler.set_timesteps` with explicit
timesteps) uses the timesteps as the sigmas and steps down to 0; diffusers' own conversion
of the 0.9.5 and 0.9.7 models (the ones LTXConditionPipeline was written for) ships the
scheduler that does the same: `FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=False)`.
"""

from __future__ import annotations

from typing import Any

from ltxv.profiles import ModelProfile

# Sigmas equal to timesteps / 1000: no static shift, no resolution-dependent shift, no
# stretch of the last sigma to a terminal value.
UNSHIFTED = {"use_dynamic_shifting": False, "shift": 1.0, "shift_terminal": None}


def condition_scheduler(scheduler: Any) -> Any:
    """The scheduler an LTXConditionPipeline renders right with: this one, or a copy of its
    config that takes the pipeline's timesteps as its sigmas."""
    changes = {key: value for key, value in UNSHIFTED.items() if scheduler.config.get(key) != value}
    if not changes:
        return scheduler
    return type(scheduler).from_config(scheduler.config, **changes)


def timesteps(profile: ModelProfile, steps: int) -> list[float] | None:
    """The pipeline's `timesteps` for a render of `steps` steps: the profile's schedule when
    it has one of that length, else None (the pipeline's own schedule for that count)."""
    schedule = profile.sampler.get("timesteps")
    if not schedule or len(schedule) != steps:
        return None
    return [1000.0 * sigma for sigma in schedule]
