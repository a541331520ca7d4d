"""One render of the project path in a process capped at an L4's memory: does it fit?

    python bench/fit_check.py --profile ltx-video-2b-distilled --cap-gib 22

`generate.py` runs it in a subprocess on CUDA. It caps torch's allocator at `--cap-gib`
(`torch.cuda.set_per_process_memory_fraction`) before allocating anything, builds the
profile's pipeline at full size with random weights, applies the profile's fit through
`Renderer.use` as the worker does, warms up as the worker's load does (a render that
compiles, where the fit compiles), renders the request once and prints one JSON line: ok,
the peak allocated and reserved, seconds. The CUDA context (about 0.5 GiB) is outside the
cap, as it is outside torch's allocator.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

GIB = 1024**3


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--profile", default="ltx-video-2b-distilled")
    parser.add_argument("--cap-gib", type=float, default=22.0)
    parser.add_argument("--size", help="HEIGHTxWIDTHxFRAMES (default: the profile's)")
    parser.add_argument("--steps", type=int, help="default: the profile's")
    args = parser.parse_args(argv)

    import torch

    if not torch.cuda.is_available():
        print(json.dumps({"ok": None, "skipped": "no CUDA device"}))
        return 0
    total = torch.cuda.get_device_properties(0).total_memory
    torch.cuda.set_per_process_memory_fraction(min(1.0, args.cap_gib * GIB / total))

    from full_size import build_random_full_size
    from gpu_worker.generation import Renderer, RenderOutOfMemory
    from ltxv.core.profiles import all_profiles
    from render_arms import request_for

    profile = all_profiles()[args.profile]
    defaults = profile.defaults
    size = (defaults["height"], defaults["width"], defaults["num_frames"])
    if args.size:
        size = tuple(int(part) for part in args.size.lower().split("x"))
    steps = args.steps or defaults["num_inference_steps"]
    report: dict = {"cap_gib": args.cap_gib, "size": "x".join(map(str, size)), "steps": steps}
    started = time.perf_counter()
    try:
        renderer = Renderer(profile, device="cuda")
        renderer.use(build_random_full_size(profile, "cuda"))
        report["resident_gib"] = torch.cuda.memory_allocated() / GIB
        if renderer.applied.get("compile"):  # as Renderer.load does
            report["warm_up_s"] = renderer.warm_up()
        report["applied"] = renderer.applied
        render_started = time.perf_counter()
        result = renderer.render(request_for(profile, size, steps))
        report["render_s"] = time.perf_counter() - render_started
        report["timings"] = result.timings
        report["ok"] = True
    except (RenderOutOfMemory, torch.OutOfMemoryError) as exc:
        report["ok"] = False
        report["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"
    report["peak_allocated_gib"] = torch.cuda.max_memory_allocated() / GIB
    report["peak_reserved_gib"] = torch.cuda.max_memory_reserved() / GIB
    report["wall_s"] = time.perf_counter() - started
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
