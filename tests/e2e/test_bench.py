"""The benchmarks still run: each at its smallest size, as `make bench` runs them (their
numbers are measured by hand and recorded in docs/benchmarks.md, never asserted here)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from ltxv.local.stack import REPO_ROOT

from .conftest import user_env

pytestmark = [pytest.mark.emulators, pytest.mark.timeout(300)]


@pytest.mark.parametrize(
    ("script", "args", "says"),
    [
        (
            "submit.py",
            ["--requests", "4", "--concurrency", "2", "--warmup", "2"],
            "API / floor p50 per round",
        ),
        ("worker.py", ["--jobs", "2"], "outside the model"),
        ("count_conditioning.py", [], "VAE encoder resident weights"),
        (
            "prepare_frames.py",
            ["--inputs", "256", "--video", "320x180", "--frames", "5", "--repeat", "1"],
            "decode + prepare, one by one",
        ),
        # Every arm at the smallest size, one round: the table, not a measurement.
        ("generate.py", ["--size", "64x96x9", "--warmup", "0", "--repeats", "1"], "x plain"),
    ],
)
def test_a_benchmark_runs_to_its_table(script, args, says):
    run = subprocess.run(
        [sys.executable, str(REPO_ROOT / "bench" / script), *args],
        cwd=REPO_ROOT,
        env=user_env(),
        capture_output=True,
        text=True,
        timeout=280,
    )
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    assert says in run.stdout
    if script == "generate.py":  # plain diffusers and the project's path, each with a ratio
        rows: dict[str, list[str]] = {}
        for line in run.stdout.split("medians:", 1)[1].splitlines():
            if line.strip():
                rows.setdefault(line.split()[0], line.split())  # the medians table's rows
        assert rows["arm"][:7] == ["arm", "text", "s", "denoise", "s", "decode", "s"]
        assert rows["plain"][6] == "1.00"  # its own ratio
        assert float(rows["project"][6]) > 0
