"""Model profiles: per-model defaults and limits, shared by intake and the worker."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cache
from typing import Any

from ltxv.core import schemas

PROFILES_FILE = "model-profiles.json"


@dataclass(frozen=True)
class Range:
    min: int
    max: int

    def __contains__(self, value: int) -> bool:
        return self.min <= value <= self.max


@dataclass(frozen=True)
class ConditioningLimits:
    """What a profile that can condition accepts (schema: "conditioning")."""

    max_conditions: int
    media_types: tuple[str, ...]
    max_input_bytes: int
    max_input_pixels: int
    max_video_frames: int

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ConditioningLimits:
        return cls(**{**data, "media_types": tuple(data["media_types"])})


@dataclass(frozen=True)
class ModelProfile:
    name: str
    description: str
    source: dict[str, Any]
    pipeline: str
    dtype: str
    accelerator: str
    fit: dict[str, Any]  # memory switches the worker applies at load (schema: "fit")
    defaults: dict[str, Any]
    limits: dict[str, Range]
    max_video_pixels: int
    max_pixel_steps: int
    # How the worker samples beyond the pipeline's defaults (schema: "sampler").
    sampler: dict[str, Any] = field(default_factory=dict)
    # None: the profile cannot condition (its pipeline, or a dropped VAE encoder).
    conditioning: ConditioningLimits | None = None

    @classmethod
    def from_dict(cls, name: str, data: dict[str, Any]) -> ModelProfile:
        limits = dict(data["limits"])
        max_video_pixels = limits.pop("max_video_pixels")
        max_pixel_steps = limits.pop("max_pixel_steps")
        return cls(
            name=name,
            description=data["description"],
            source=data["source"],
            pipeline=data["pipeline"],
            dtype=data["dtype"],
            accelerator=data["accelerator"],
            fit=data["fit"],
            defaults=data["defaults"],
            limits={field: Range(**bounds) for field, bounds in limits.items()},
            max_video_pixels=max_video_pixels,
            max_pixel_steps=max_pixel_steps,
            sampler=data.get("sampler", {}),
            conditioning=(
                ConditioningLimits.from_dict(data["conditioning"])
                if "conditioning" in data
                else None
            ),
        )


@cache
def all_profiles() -> dict[str, ModelProfile]:
    data = schemas.load(PROFILES_FILE)
    errors = sorted(schemas.validator("model-profiles").iter_errors(data), key=str)
    if errors:
        raise ValueError(f"{PROFILES_FILE} is invalid: {errors[0].json_path}: {errors[0].message}")
    profiles = {name: ModelProfile.from_dict(name, body) for name, body in data["profiles"].items()}
    for profile in profiles.values():
        if profile.conditioning and (
            profile.pipeline != "LTXConditionPipeline" or not profile.fit["vae_encoder"]
        ):
            raise ValueError(
                f"{PROFILES_FILE}: {profile.name} has a conditioning section, which needs "
                "pipeline LTXConditionPipeline and fit.vae_encoder true"
            )
    return profiles


def enabled_profiles(default_model: str, enabled: tuple[str, ...]) -> dict[str, ModelProfile]:
    """The profiles this deployment serves: those named, or just the default one."""
    profiles = all_profiles()
    names = enabled or (default_model,)
    unknown = [n for n in (*names, default_model) if n not in profiles]
    if unknown:
        raise ValueError(f"unknown model profile(s) {unknown}; known: {sorted(profiles)}")
    if default_model not in names:
        raise ValueError(f"default model {default_model!r} is not among enabled models {names}")
    return {name: profiles[name] for name in names}
