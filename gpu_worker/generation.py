"""Generation: a model profile's diffusers LTX pipeline, loaded once, rendering job requests.

`Renderer(profile).load()` loads the pipeline (gpu_worker/loading.py: the `tiny-random`
profile builds its miniature model on the fly; a Hugging Face profile reads a synced model
directory or the hub), and `render(request)` turns one validated job request into uint8
RGB frames, reporting each denoising step and stopping between steps when asked.

Same seed and parameters give the same frames: the initial noise comes from a generator
seeded with the request's seed, and torch's global RNG (which the VAE decoder's noise
injection draws from) is seeded with it too, inside a forked RNG state so nothing else in
the process is disturbed.
"""

from __future__ import annotations

import gc
import inspect
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ltxv.core.profiles import ModelProfile

from . import fit, loading, sampling

log = logging.getLogger(__name__)

# Request keys that map onto pipeline arguments of the same name.
PIPELINE_KEYS = (
    "height",
    "width",
    "num_frames",
    "num_inference_steps",
    "guidance_scale",
    "decode_timestep",
    "decode_noise_scale",
)


class TransientRenderError(RuntimeError):
    """The render failed for a reason that may pass (CUDA out of memory): retry the job."""


class RenderOutOfMemory(TransientRenderError):
    """The device ran out of memory. Transient in a process that has rendered before (its
    memory may be fragmented or leaked); in a fresh one the request does not fit."""


class RenderRefused(Exception):
    """The model cannot render this request and never will: the same parameters fail the
    same way on every attempt, so the job fails at once. The message is for the client."""

    code = "invalid_request"  # the failed job's error code


# Raised from inside the pipeline, these come from its handling of the parameters (an
# empty schedule indexed, a shape it cannot take), not from the GPU or the machine: the
# same request raises them again on any attempt. CUDA and driver failures surface as
# RuntimeError and stay transient.
DETERMINISTIC_ERRORS = (
    ValueError,
    TypeError,
    IndexError,
    KeyError,
    ZeroDivisionError,
    AssertionError,
)


class RenderInterrupted(RuntimeError):
    """`should_stop()` asked to stop; the render stopped between denoising steps."""

    def __init__(self, step: int, total: int) -> None:
        super().__init__(f"render interrupted after step {step} of {total}")
        self.step = step
        self.total = total


@dataclass
class RenderResult:
    frames: np.ndarray  # uint8 [num_frames, height, width, 3]
    seconds: float  # denoising + VAE decode
    steps: int  # denoising steps run
    # Where the time went (seconds): encode_prompt, denoise, decode, copy_to_host.
    timings: dict[str, float] = field(default_factory=dict)


def _sync(device: Any) -> None:
    import torch

    if getattr(device, "type", device) == "cuda":
        torch.cuda.synchronize()


class Renderer:
    """One model profile's pipeline on one device; `load()` once, then `render()` jobs."""

    def __init__(
        self,
        profile: ModelProfile,
        *,
        model_dir: Path | str | None = None,
        device: str | None = None,
        compile_cache: Any = None,
    ) -> None:
        self.profile = profile
        self.model_dir = Path(model_dir).expanduser() if model_dir is not None else None
        self._device_name = device
        # A gpu_worker.compile_cache.CompileCache: compiled blocks shared between VMs.
        self.compile_cache = compile_cache
        self.pipe: Any = None
        self.load_seconds: float | None = None
        self.applied: dict[str, Any] = {}  # the fit switches in effect (fit.after_move)

    # -- loading -------------------------------------------------------------------------

    @property
    def device(self) -> str:
        if self._device_name is None:
            import torch

            cuda = self.profile.accelerator == "cuda" and torch.cuda.is_available()
            self._device_name = "cuda" if cuda else "cpu"
        return self._device_name

    @property
    def dtype(self) -> Any:
        import torch

        return getattr(torch, self.profile.dtype)

    def load(self) -> float:
        """Load the pipeline onto the device (once); the seconds this call spent loading."""
        if self.pipe is not None:
            return 0.0
        import diffusers
        import transformers

        diffusers.utils.logging.disable_progress_bar()
        transformers.utils.logging.disable_progress_bar()
        started = time.perf_counter()
        self.use(loading.load_pipeline(self.profile, self.model_dir, self.dtype))
        if self.applied["compile"]:
            self.warm_up()
        self.load_seconds = time.perf_counter() - started
        log.info(
            "model loaded",
            extra={
                "model": self.profile.name,
                "device": self.device,
                "dtype": self.profile.dtype,
                "fit": self.applied,
                "seconds": round(self.load_seconds, 3),
            },
        )
        return self.load_seconds

    def use(self, pipe: Any) -> None:
        """Render with this pipeline (as `load` does with the one it loads; benchmarks hand
        in one built elsewhere)."""
        if type(pipe).__name__ == "LTXConditionPipeline":
            # It hands the scheduler explicit timesteps, to be taken as the sigmas.
            pipe.scheduler = sampling.condition_scheduler(pipe.scheduler)
        fit.before_move(pipe, self.profile.fit)
        pipe.to(self.device)
        pipe.set_progress_bar_config(disable=True)
        self.applied = fit.after_move(pipe, self.profile.fit, self.device)
        self.pipe = pipe

    def warm_up(self) -> float:
        """Render once at the default size with the fewest steps, so that the compile (or
        the read of Inductor's cache) happens before the first job, not in it. A compile
        that fails is undone: the worker renders eagerly instead of failing every job.
        The seconds it took."""
        from . import compile_cache

        started = time.perf_counter()
        key = None
        if self.compile_cache is not None:
            key = compile_cache.cache_key(self.profile, self.device)
            try:
                self.compile_cache.restore(key)
            except Exception as exc:  # a cold compile is slower, not wrong
                log.warning("could not restore the compile cache", exc_info=exc)
        request = {
            **self.profile.defaults,
            "prompt": "warm-up",
            "num_inference_steps": self.profile.limits["num_inference_steps"].min,
        }
        try:
            self.render(request)
        except RenderOutOfMemory:
            raise  # the default size does not fit: that is not the compiler's doing
        except Exception as exc:
            log.error("compiled blocks failed: rendering eagerly", exc_info=exc)
            fit.uncompile_blocks(self.pipe.transformer)
            self.applied["compile"] = False
        else:
            if self.compile_cache is not None and key is not None:
                try:
                    self.compile_cache.publish(key)
                except Exception as exc:
                    log.warning("could not publish the compile cache", exc_info=exc)
        seconds = time.perf_counter() - started
        log.info("warmed up", extra={"seconds": round(seconds, 3), "compile": self.applied})
        return seconds

    # -- rendering -----------------------------------------------------------------------

    def parameters(self, request: dict[str, Any]) -> dict[str, Any]:
        """The request over the profile's defaults: every value the render will use."""
        merged = dict(self.profile.defaults)
        merged.update({k: v for k, v in request.items() if v is not None})
        height, width, frames = merged["height"], merged["width"], merged["num_frames"]
        if height % 32 or width % 32:
            raise RenderRefused(f"height and width must be multiples of 32, got {height}x{width}")
        if frames < 1 or (frames - 1) % 8:
            raise RenderRefused(f"num_frames must be 8k + 1, got {frames}")
        return merged

    def refuse_unless_conditioned(self) -> None:
        """RenderRefused if the loaded pipeline has no `conditions` (LTXPipeline): a job
        with inputs is refused as such, not rendered from its prompt alone."""
        self.load()
        if "conditions" not in inspect.signature(type(self.pipe).__call__).parameters:
            raise RenderRefused(f"model {self.profile.name} cannot render conditions")

    def render(
        self,
        request: dict[str, Any],
        conditions: list[Any] | None = None,
        *,
        on_step: Callable[[int, int], None] | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> RenderResult:
        """Render one request: `on_step(done, total)` after each denoising step (1..total);
        `should_stop()` is asked right after it, and True stops the render there
        (RenderInterrupted, before any VAE decode). `conditions`: diffusers'
        LTXVideoCondition items (gpu_worker/conditioning.py), frames at the request's size.
        CUDA out of memory raises RenderOutOfMemory; parameters the pipeline cannot take
        raise RenderRefused."""
        import torch

        params = self.parameters(request)
        if conditions:
            self.refuse_unless_conditioned()
        self.load()
        oom: str | None = None
        try:
            return self._render(params, on_step, should_stop, conditions or [])
        except torch.OutOfMemoryError as exc:
            oom = str(exc).splitlines()[0] if str(exc) else "out of memory"
        except DETERMINISTIC_ERRORS as exc:
            # The details (and the traceback) are ours to read in the logs; the client
            # learns that the parameters are the problem.
            log.warning("the pipeline refused a request", exc_info=exc, extra={"params": params})
            raise RenderRefused(
                f"model {self.profile.name} cannot render these parameters "
                f"({type(exc).__name__} in the pipeline)"
            ) from exc
        # Outside the except block the traceback (and the tensors its frames hold) is gone.
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        log.warning("out of memory", extra={"device": self.device, "error": oom})
        # The job shows the worker's sentence; the allocator's numbers are in the log above.
        raise RenderOutOfMemory(f"the {self.device} ran out of memory")

    def _render(
        self,
        params: dict[str, Any],
        on_step: Callable[[int, int], None] | None,
        should_stop: Callable[[], bool] | None,
        conditions: list[Any],
    ) -> RenderResult:
        import torch

        pipe = self.pipe
        device = pipe._execution_device
        seed = int(params["seed"])
        call = {k: params[k] for k in PIPELINE_KEYS if k in params}
        call["frame_rate"] = params["fps"]
        if conditions:
            call["conditions"] = conditions
        schedule = sampling.timesteps(self.profile, call["num_inference_steps"])
        if schedule is not None:
            call["timesteps"] = schedule
        signature = inspect.signature(type(pipe).__call__).parameters
        max_sequence_length = params.get(
            "max_sequence_length", signature["max_sequence_length"].default
        )
        marks: dict[str, float] = {}

        def step_end(
            pipeline: Any, index: int, _timestep: Any, tensors: dict[str, Any]
        ) -> dict[str, Any]:
            total = pipeline.num_timesteps
            if index + 1 == total:
                _sync(device)
                marks["denoised"] = time.perf_counter()
            try:
                if on_step is not None:
                    on_step(index + 1, total)
                stop = should_stop is not None and should_stop()
            except Exception as exc:
                # Ours, not the request's: kept out of DETERMINISTIC_ERRORS' reach.
                raise RuntimeError("a render callback failed") from exc
            if stop:
                pipeline._interrupt = True
                # Raised here rather than letting the pipeline run on: it would still VAE
                # decode the half-denoised latents, seconds of GPU time nobody wants.
                raise RenderInterrupted(index + 1, total)
            return tensors

        cuda_devices = []
        if device.type == "cuda":
            cuda_devices = [torch.cuda.current_device() if device.index is None else device.index]
        with torch.random.fork_rng(devices=cuda_devices), torch.inference_mode():
            torch.manual_seed(seed)  # the VAE decoder's noise injection reads the global RNG
            generator = torch.Generator(device="cpu").manual_seed(seed)
            started = time.perf_counter()
            embeds = pipe.encode_prompt(
                prompt=params["prompt"],
                negative_prompt=params.get("negative_prompt") or "",
                do_classifier_free_guidance=params.get("guidance_scale", 1.0) > 1.0,
                num_videos_per_prompt=1,
                max_sequence_length=max_sequence_length,
                device=device,
            )
            if self.profile.fit.get("trim_prompt_padding"):
                embeds = fit.trim_prompt_padding(*embeds)
            _sync(device)
            encoded = time.perf_counter()
            output = pipe(
                prompt_embeds=embeds[0],
                prompt_attention_mask=embeds[1],
                negative_prompt_embeds=embeds[2],
                negative_prompt_attention_mask=embeds[3],
                generator=generator,
                output_type="pt",
                callback_on_step_end=step_end,
                **call,
            )
            video = output.frames[0]  # [F, C, H, W] floats in [0, 1], on the device
            frames = (video.permute(0, 2, 3, 1) * 255).round_().clamp_(0, 255).to(torch.uint8)
            _sync(device)
            decoded = time.perf_counter()
            frames = frames.cpu().numpy()
            finished = time.perf_counter()
        expected = (params["num_frames"], params["height"], params["width"], 3)
        if frames.shape != expected:
            raise RuntimeError(f"pipeline returned frames {frames.shape}, expected {expected}")
        denoised = marks.get("denoised", decoded)
        timings = {
            "encode_prompt": encoded - started,
            "denoise": denoised - encoded,
            "decode": decoded - denoised,  # the VAE, and the frames made uint8 on the device
            "copy_to_host": finished - decoded,
        }
        return RenderResult(
            frames=frames,
            seconds=finished - encoded,
            steps=pipe.num_timesteps,
            timings=timings,
        )
