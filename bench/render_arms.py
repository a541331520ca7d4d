"""The generation benchmark's arms on a device: one pipeline per arm, one render per call.

Every arm renders with the same weights. The base pipeline (built once) is the plain arm's,
and stays as diffusers made it; an arm that changes a component (a transformer compiled,
quantised or on another attention backend; a VAE tiled or without its encoder) gets its
own deep copy of that component, and shares the rest: the T5-XXL encoder (8.9 GiB at full
size) is shared by all, since no switch touches it. So the arms can run interleaved, in
one process, without one arm's one-way changes (compile, a dropped encoder) leaking into
another's.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import resource
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils._python_dispatch import is_traceable_wrapper_subclass

from gpu_worker.generation import PIPELINE_KEYS, Renderer
from ltxv.core.profiles import ModelProfile
from measure import PROJECT, Arm

PROMPT = "A cinematic shot of a cyberpunk city in rain"


@dataclass
class Sample:
    """One render of one arm."""

    seconds: dict[str, float | None]  # text, denoise, decode, copy (None: inside decode), total
    frames: np.ndarray  # uint8 [F, H, W, 3]
    peak_bytes: int  # this arm alone: its resident weights + the render's allocation peak
    extra: dict[str, Any] = field(default_factory=dict)


# -- memory ---------------------------------------------------------------------------------


def tensor_bytes(tensor: Any) -> int:
    if is_traceable_wrapper_subclass(tensor):  # torchao's float8 weights: data and scales
        names, _ = tensor.__tensor_flatten__()
        return sum(tensor_bytes(getattr(tensor, name)) for name in names)
    return tensor.numel() * tensor.element_size()


def resident_bytes(pipe: Any) -> int:
    """Weights and buffers of the pipeline's models (a tied or shared tensor counted once)."""
    seen: dict[int, int] = {}
    for name in ("text_encoder", "transformer", "vae"):
        module = getattr(pipe, name, None)
        if module is not None:
            for tensor in (*module.parameters(), *module.buffers()):
                seen[id(tensor)] = tensor_bytes(tensor)
    return sum(seen.values())


def _reset_peak_rss() -> None:
    with contextlib.suppress(OSError):  # the kernel's peak-RSS mark (VmHWM) for this process
        Path("/proc/self/clear_refs").write_text("5")


def _peak_rss() -> int:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class Peak:
    """The allocation peak of a block: torch's allocator on CUDA (above what was allocated
    before it), the process's peak RSS on the CPU."""

    def __init__(self, cuda: bool) -> None:
        self.cuda = cuda
        self.bytes = 0

    def __enter__(self) -> Peak:
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.before = torch.cuda.memory_allocated()
        else:
            _reset_peak_rss()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.cuda:
            torch.cuda.synchronize()
            self.bytes = torch.cuda.max_memory_allocated() - self.before
        else:
            self.bytes = _peak_rss()


# -- the arms -------------------------------------------------------------------------------


def _sync(cuda: bool) -> None:
    if cuda:
        torch.cuda.synchronize()


def request_for(profile: ModelProfile, size: tuple[int, int, int], steps: int) -> dict:
    height, width, frames = size
    return {
        **profile.defaults,
        "prompt": PROMPT,
        "height": height,
        "width": width,
        "num_frames": frames,
        "num_inference_steps": steps,
    }


class PlainArm:
    """The pipeline called as the diffusers docs show: bf16 (the profile's dtype), moved to
    the device, called with the prompt, the size, the steps, guidance, the decode timestep
    and noise, and a seeded generator; for a distilled model its distilled `timesteps`, as
    the docs' distilled examples pass them (the profile's "sampler" schedule, where it has
    one of the requested length); nothing of the worker's. The text-encoding and denoising
    marks come from a wrapper around encode_prompt and the documented step callback: both
    synchronise the device, as the Renderer's own marks do."""

    def __init__(self, pipe: Any, device: str, profile: ModelProfile) -> None:
        self.schedule = profile.sampler.get("timesteps")
        self.pipe = pipe.to(device)
        self.pipe.set_progress_bar_config(disable=True)  # the worker's is off too
        self.cuda = device == "cuda"
        self.marks: dict[str, float] = {}
        encode_prompt = pipe.encode_prompt

        def timed_encode_prompt(*args: Any, **kwargs: Any) -> Any:
            out = encode_prompt(*args, **kwargs)
            _sync(self.cuda)
            self.marks["encoded"] = time.perf_counter()
            return out

        pipe.encode_prompt = timed_encode_prompt
        self.applied: dict[str, Any] | None = None
        self.resident = resident_bytes(pipe)

    def _step_end(self, pipeline: Any, index: int, _timestep: Any, tensors: dict) -> dict:
        if index + 1 == pipeline.num_timesteps:
            _sync(self.cuda)
            self.marks["denoised"] = time.perf_counter()
        return tensors

    def render(self, request: dict[str, Any]) -> Sample:
        call = {key: request[key] for key in PIPELINE_KEYS if key in request}
        if self.schedule and len(self.schedule) == call["num_inference_steps"]:
            call["timesteps"] = [1000.0 * sigma for sigma in self.schedule]
        seed = int(request["seed"])
        with Peak(self.cuda) as peak:
            _sync(self.cuda)
            started = time.perf_counter()
            torch.manual_seed(seed)  # a VAE that injects decoder noise draws from it
            video = self.pipe(
                prompt=request["prompt"],
                negative_prompt=request.get("negative_prompt") or "",
                frame_rate=request["fps"],
                generator=torch.Generator().manual_seed(seed),
                output_type="pt",
                callback_on_step_end=self._step_end,
                **call,
            ).frames[0]
            _sync(self.cuda)
            decoded = time.perf_counter()
            host = video.cpu()
            finished = time.perf_counter()
        encoded, denoised = self.marks["encoded"], self.marks["denoised"]
        seconds = {
            "text": encoded - started,
            "denoise": denoised - encoded,
            "decode": decoded - denoised,
            "copy": finished - decoded,
            "total": finished - started,
        }
        # Outside the total: uint8 frames for the pixel comparison, rounded as the worker
        # rounds (on the device, inside its decode); its seconds go to the JSON.
        converting = time.perf_counter()
        frames = (host.permute(0, 2, 3, 1) * 255).round_().clamp_(0, 255).to(torch.uint8).numpy()
        extra = {"to_uint8_on_host": time.perf_counter() - converting}
        peak_bytes = self.resident + peak.bytes if self.cuda else peak.bytes
        return Sample(seconds, frames, peak_bytes, extra)


class RendererArm:
    """The worker's path: `Renderer(profile with this arm's fit).use(pipe)`, its warm-up
    render where the fit compiles (as `Renderer.load` does), then `render()`."""

    def __init__(self, profile: ModelProfile, arm: Arm, pipe: Any, device: str) -> None:
        self.renderer = Renderer(dataclasses.replace(profile, fit=arm.fit), device=device)
        self.renderer.use(pipe)
        self.cuda = device == "cuda"
        self.warm_up_s = None
        if self.renderer.applied.get("compile"):
            # As the worker loads: compile (or undo a compile that fails) before any job.
            self.warm_up_s = self.renderer.warm_up()
        self.applied = self.renderer.applied
        self.resident = resident_bytes(pipe)

    def render(self, request: dict[str, Any]) -> Sample:
        with Peak(self.cuda) as peak:
            started = time.perf_counter()
            result = self.renderer.render(request)
            finished = time.perf_counter()
        timings = result.timings
        seconds = {
            "text": timings["encode_prompt"],
            "denoise": timings["denoise"],
            "decode": timings["decode"],
            "copy": timings["copy_to_host"],
            "total": finished - started,
        }
        return Sample(
            seconds, result.frames, self.resident + peak.bytes if self.cuda else peak.bytes
        )


def build_arms(
    profile: ModelProfile, arms: list[Arm], base: Any, device: str
) -> dict[str, PlainArm | RendererArm | Exception]:
    """One runner per arm over `base` (see the module's docstring); an arm that cannot be
    set up (a switch this machine lacks) maps to its exception."""
    runners: dict[str, PlainArm | RendererArm | Exception] = {}
    for arm in arms:
        try:
            if arm.fit is None:
                runners[arm.name] = PlainArm(base, device, profile)
                continue
            parts = dict(base.components)
            parts["scheduler"] = type(base.scheduler).from_config(base.scheduler.config)
            for name in arm.owns:
                parts[name] = copy.deepcopy(getattr(base, name))
            runners[arm.name] = RendererArm(profile, arm, type(base)(**parts), device)
        except Exception as exc:
            runners[arm.name] = exc
    if PROJECT in runners and isinstance(runners[PROJECT], Exception):
        raise runners[PROJECT]  # nothing to measure without the project's own path
    return runners
