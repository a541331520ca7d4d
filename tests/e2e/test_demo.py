"""`make demo` as a newcomer runs it: its own stack, every job rendered and its webhook
verified, the videos in ./out/, and nothing left running afterwards."""

from __future__ import annotations

import subprocess
import sys

import pytest

from ltxv.core.media import probe
from ltxv.local.demo import NOISE_NOTICE
from ltxv.local.stack import REPO_ROOT

from .conftest import user_env

pytestmark = [pytest.mark.emulators, pytest.mark.timeout(600)]


def test_the_demo_runs_end_to_end_and_stops_what_it_started(tmp_path):
    env = user_env()
    run = subprocess.run(
        [sys.executable, "-m", "ltxv.local.demo"],
        cwd=tmp_path,  # ./out/ lands here
        env=env,
        capture_output=True,
        text=True,
        timeout=580,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "Demo finished: every job succeeded and its webhook was verified" in run.stdout
    assert run.stdout.count("signature valid") == 4
    assert NOISE_NOTICE in run.stdout
    videos = sorted((tmp_path / "out").glob("*.mp4"))
    assert len(videos) == 4
    assert {probe(v).num_frames for v in videos} == {121, 9, 17}
    assert "webhook-id" not in run.stderr and "Traceback" not in run.stderr

    pids = REPO_ROOT / ".local" / "demo" / "pids"
    for pidfile in pids.glob("*.pid"):
        pytest.fail(f"{pidfile.name} left behind")
    assert not [
        line
        for line in subprocess.run(
            ["ps", "-eo", "args"], capture_output=True, text=True
        ).stdout.splitlines()
        if str(REPO_ROOT / ".local" / "demo") in line
    ]
