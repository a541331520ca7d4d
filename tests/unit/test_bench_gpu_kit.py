"""What the GPU bench carries to an offline machine: bench/gpu.sh and bench/wheels.py."""

from __future__ import annotations

from pathlib import Path

from bench import wheels

from ..shellcheck import assert_shellcheck_clean

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "gpu.sh"


def test_gpu_script_passes_shellcheck():
    assert_shellcheck_clean(SCRIPT)


def test_the_wheels_are_the_bench_stack_without_torch_and_what_torch_brings():
    skip = wheels.torch_closure() | {"numpy"}
    assert {"torch", "filelock", "sympy"} <= skip
    pins = wheels.closure(list(wheels.ROOTS), "3.11", skip)
    assert {"diffusers", "transformers", "accelerate", "torchao", "jsonschema"} <= set(pins)
    assert not set(pins) & skip
    assert all(pins[name] for name in ("diffusers", "transformers"))  # pinned, as installed
