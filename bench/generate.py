"""The fair generation benchmark: plain diffusers beside the worker's path and each switch.

    .venv/bin/python bench/generate.py               # CPU: tiny-random, every arm the CPU runs
    bash bench/gpu.sh                                # CUDA: full size, random weights ($OUT)

Arms (bench/measure.py): `plain`, the pipeline called as the diffusers docs show, in the
profile's dtype, with no project code in the timed path; `project`, the worker's
`Renderer` with the profile's `fit` as it is; `all-off`, the Renderer with every switch
off; and one arm per switch of the fit, turned on alone over all-off. Every arm renders the
same request with the same weights and seed (bench/render_arms.py says how they share).

A warm-up round runs every arm once (compiles, picks kernels), then `--repeats` measured
rounds each run every arm once, interleaved, each round starting one arm later. Each arm
reports the median and the spread (min to max) of each phase (text encoding, denoising,
VAE decode, copy to the host), its peak memory (on CUDA: its own weights plus the render's
allocation peak, as if it ran alone; on the CPU: the process's peak RSS), its speed-up
over plain (the median over rounds of plain's total / the arm's, above 1 is faster) and
the mean absolute difference of its frames from plain's first frames on the same seed, in
0..255 levels (plain's own row: its run-to-run noise).

On CUDA it first renders the project path in a subprocess capped at the profile's
`gpu_memory_gib` (22 GiB: an L4), bench/fit_check.py, before this process takes any GPU
memory. The JSON (`--json`) is rewritten after every render, so a run that is killed still
leaves its data. `--budget-seconds` bounds the run: arms are dropped (least telling first,
bench/measure.py) when three rounds would not fit, and rounds stop when the next would not.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from measure import PLAIN, arms_for, mean_abs_diff, plan, rotated
from report import Results, environment, print_tables

HERE = Path(__file__).resolve().parent
CPU_SIZE = (256, 576, 25)


def parse_size(text: str) -> tuple[int, int, int]:
    try:
        height, width, frames = (int(part) for part in text.lower().split("x"))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"size is HEIGHTxWIDTHxFRAMES, got {text!r}") from exc
    return height, width, frames


def measure_round(
    runners: dict[str, Any], order: list[str], request: dict, results: Results, index: int
) -> dict[str, float]:
    """Render each arm once in `order`; round `index` 0 is the warm-up. Seconds per arm."""
    import torch

    took: dict[str, float] = {}
    pending: list[tuple[Any, dict]] = []  # (frames, run) waiting for plain's reference
    for name in order:
        record = results.arm(name)
        started = time.perf_counter()  # took: the render and its bookkeeping (the budget's)
        try:
            sample = runners[name].render(request)
        except Exception as exc:
            record["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
            runners.pop(name)
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            print(f"  {name}: {record['error']}", file=sys.stderr, flush=True)
            continue
        run = {**sample.seconds, "round": index, "peak_bytes": sample.peak_bytes, **sample.extra}
        if name == PLAIN and results.reference is None:
            results.reference = sample.frames
            for frames, earlier in pending:  # arms that ran before plain in this round
                earlier["diff"] = mean_abs_diff(frames, results.reference)
            pending.clear()
        elif results.reference is not None:
            run["diff"] = mean_abs_diff(sample.frames, results.reference)
        else:
            pending.append((sample.frames, run))
        if index == 0:
            record["warmup_s"] = sample.seconds["total"]
        else:
            record["runs"].append(run)
        results.save()
        took[name] = time.perf_counter() - started
        total = sample.seconds["total"]
        print(f"  round {index or 'warm-up'}: {name} {total:.2f} s", file=sys.stderr, flush=True)
    return took


def fit_check(profile: Any, size: str, steps: int, timeout: float) -> dict[str, Any]:
    cap = float(profile.fit.get("gpu_memory_gib", 22))
    command = [sys.executable, str(HERE / "fit_check.py"), "--profile", profile.name]
    command += ["--cap-gib", str(cap), "--size", size, "--steps", str(steps)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=max(timeout, 30))
    except subprocess.TimeoutExpired:
        return {"ok": None, "error": f"no answer within {max(timeout, 30):.0f} s", "cap_gib": cap}
    lines = done.stdout.strip().splitlines()
    try:
        return json.loads(lines[-1])
    except (IndexError, json.JSONDecodeError):
        return {
            "ok": None,
            "error": f"exit {done.returncode}: {done.stderr[-600:]}",
            "cap_gib": cap,
        }


def main(argv: list[str] | None = None) -> int:
    started = time.perf_counter()
    from ltxv.core.profiles import all_profiles

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--profile",
        choices=sorted(all_profiles()),
        help="default: "
        "ltx-video-2b-distilled on CUDA (full size, random weights), "
        "tiny-random on the CPU",
    )
    parser.add_argument(
        "--size", type=parse_size, help="HEIGHTxWIDTHxFRAMES (CUDA: the profile's; CPU: 256x576x25)"
    )
    parser.add_argument("--steps", type=int, help="denoising steps (default: the profile's)")
    parser.add_argument("--repeats", type=int, default=3, help="measured rounds (3)")
    parser.add_argument("--warmup", type=int, default=1, help="unmeasured rounds first (1)")
    parser.add_argument("--arms", help="comma-separated arm names to run (default: all)")
    parser.add_argument(
        "--attention-backend",
        help="the attention arm's backend, where the "
        "profile's is native (default: _native_cudnn on CUDA, _native_math on the CPU)",
    )
    parser.add_argument(
        "--fp8",
        help="the fp8 arm's mode, where the profile's is off "
        "(default: dynamic on CUDA, weights on the CPU)",
    )
    parser.add_argument(
        "--budget-seconds",
        type=float,
        help="wall-clock bound for the whole run (default: 400 on CUDA, 300 on the CPU)",
    )
    parser.add_argument("--no-fit-check", action="store_true", help="skip the capped run")
    parser.add_argument("--device", choices=("cuda", "cpu"))
    parser.add_argument("--model-dir", type=Path, help="tiny-random: where its model lives")
    parser.add_argument("--json", type=Path, help="write the results here (after every render)")
    args = parser.parse_args(argv)

    import diffusers
    import torch
    import transformers

    from full_size import build_random_full_size
    from gpu_worker import tiny_random
    from gpu_worker.sampling import condition_scheduler
    from render_arms import build_arms, request_for

    diffusers.utils.logging.set_verbosity_error()
    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()
    cuda = (args.device or ("cuda" if torch.cuda.is_available() else "cpu")) == "cuda"
    device = "cuda" if cuda else "cpu"
    profile = all_profiles()[args.profile or ("ltx-video-2b-distilled" if cuda else "tiny-random")]
    defaults = profile.defaults
    # On the CPU, the smallest size at which the VAE decodes in tiles (wider than 512), so
    # that the tiling arm does something; on CUDA, the profile's (704x1216x121).
    size = args.size or (
        (defaults["height"], defaults["width"], defaults["num_frames"]) if cuda else CPU_SIZE
    )
    steps = args.steps or defaults["num_inference_steps"]
    budget = args.budget_seconds or (400.0 if cuda else 300.0)
    on = {
        "attention_backend": args.attention_backend
        or ("_native_cudnn" if cuda else "_native_math"),
        "fp8": args.fp8 or ("dynamic" if cuda else "weights"),
    }
    arms = arms_for(profile.fit, on)
    if args.arms:
        wanted = set(args.arms.split(","))
        arms = [arm for arm in arms if arm.name in wanted or arm.name == PLAIN]

    env = environment(cuda)
    label = "x".join(map(str, size))
    header = {
        "profile": profile.name,
        "pipeline": profile.pipeline,
        "dtype": profile.dtype,
        "device": device,
        "size": label,
        "steps": steps,
        "budget_s": budget,
        **env,
        "command": " ".join(sys.argv),
    }
    print(" ".join(f"{k}={v}" for k, v in header.items() if k != "command"), flush=True)
    results = Results(args.json, header)

    if cuda and not args.no_fit_check:
        # First, while this process holds no GPU memory; its compile also fills Inductor's
        # cache (shared through TORCHINDUCTOR_CACHE_DIR) for the compiled arms below.
        print(
            f"L4 fit check: the project path capped at {profile.fit.get('gpu_memory_gib', 22)}"
            " GiB, in a subprocess ...",
            flush=True,
        )
        results.data["fit_check"] = fit_check(profile, label, steps, min(300, budget / 2))
        results.save()

    tiny = profile.source.get("kind") == "tiny-random"
    if tiny:
        cls = getattr(diffusers, profile.pipeline)
        base = cls.from_pretrained(
            tiny_random.ensure(args.model_dir), dtype=getattr(torch, profile.dtype)
        )
        if profile.pipeline == "LTXConditionPipeline":
            # As full_size.py builds it: the scheduler diffusers' own conversions of the
            # 0.9.5+ models (those LTXConditionPipeline's docs call) ship, no shift; the
            # tiny model keeps the 0.9.0 conversion's, which such a call cannot step.
            base.scheduler = condition_scheduler(base.scheduler)
    else:  # never a download: the published sizes, random weights
        base = build_random_full_size(profile, device)
    build_s = time.perf_counter() - started
    print(f"built in {build_s:.1f} s", flush=True)
    runners = build_arms(profile, arms, base, device)
    for arm in arms:
        record = results.arm(arm.name)
        record["fit"] = arm.fit
        if isinstance(runners[arm.name], Exception):
            exc = runners.pop(arm.name)
            record["error"] = f"setup: {type(exc).__name__}: {exc}"[:300]
        else:
            applied = record["applied"] = runners[arm.name].applied
            record["load_warm_up_s"] = getattr(runners[arm.name], "warm_up_s", None)
            if applied and arm.fit:  # a switch this machine cannot run fell back
                record["fallbacks"] = {
                    k: v for k, v in applied.items() if k in arm.fit and arm.fit[k] != v
                }
    setup_s = time.perf_counter() - started
    results.data.update(build_s=build_s, setup_s=setup_s)
    results.save()
    print(f"{len(runners)} arms set up in {setup_s - build_s:.1f} s", flush=True)

    request = request_for(profile, size, steps)
    order = [arm.name for arm in arms if arm.name in runners]
    warm: dict[str, float] = {}
    for _ in range(args.warmup):
        warm = measure_round(runners, rotated(order, 0), request, results, 0)
    # A warm-up that compiled overstates the arm's render; plain's is the yardstick.
    per_arm = {name: min(s, 2 * warm.get(PLAIN, s)) for name, s in warm.items()}
    left = budget - (time.perf_counter() - started)
    order, dropped = plan(left, per_arm, [n for n in order if n in runners], args.repeats)
    for name in dropped:
        results.data["dropped"][name] = "time budget"
    for index in range(1, args.repeats + 1):
        order = [name for name in order if name in runners]
        left = budget - (time.perf_counter() - started)
        if index > 1 and sum(per_arm.get(name, 0) for name in order) > left:
            print(f"budget: stopping after {index - 1} rounds", file=sys.stderr)
            break
        per_arm.update(measure_round(runners, rotated(order, index), request, results, index))
        results.data["rounds"] = index

    print_tables(results, cuda)
    if results.data["rounds"] < 3:
        print(f"\nonly {results.data['rounds']} measured rounds: not a measurement to quote")
    if dropped:
        print(f"dropped for the time budget: {', '.join(dropped)}")
    check = results.data.get("fit_check")
    if check is None:
        print(
            "\nL4 fit check (capped subprocess): skipped: "
            + ("--no-fit-check" if cuda else "no CUDA device (torch.cuda caps only GPU memory)")
        )
    else:
        verdict = {True: "fits", False: "DOES NOT FIT", None: "unknown"}[check.get("ok")]
        print(
            f"\nL4 fit check, project path capped at {check.get('cap_gib')} GiB: {verdict}; "
            f"peak allocated {check.get('peak_allocated_gib', float('nan')):.2f} GiB, "
            f"render {check.get('render_s', float('nan')):.1f} s {check.get('error', '')}"
        )
    results.data["load_average_end"] = round(os.getloadavg()[0], 2)
    print(
        f"\nwall time {time.perf_counter() - started:.0f} s; load average (1 min) "
        f"{env['load_average']} at the start, {results.data['load_average_end']} at the end"
    )
    results.save()
    return 0 if any(row.get("text") for row in results.rows()) else 1


if __name__ == "__main__":
    sys.exit(main())
