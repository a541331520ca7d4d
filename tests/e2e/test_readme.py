"""Every command the README shows works as shown.

`sh` and `python` blocks run in order, verbatim, against a full local stack (what
`make dev` starts) from a scratch directory laid out like a checkout (`.local/`, `.venv/`).
A block the test cannot run carries `<!-- readme: skip; REASON -->` right above it, and the
reason must name the test that covers it or say it needs Google Cloud.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from ltxv.cli import build_parser
from ltxv.client import read_stack_env
from ltxv.local.components import EMULATORS, components_for
from ltxv.local.stack import REPO_ROOT

from .conftest import running_stack, user_env

README = REPO_ROOT / "README.md"
FENCE = re.compile(
    r"(?:<!-- readme: skip; (?P<skip>.+?) -->\n)?```(?P<lang>\w*)\n(?P<body>.*?)```", re.S
)
RUNNABLE = {"sh", "python"}
PLACEHOLDERS = {"N": "5", "JOB": "a-job-id"}


@dataclass(frozen=True)
class Block:
    number: int
    lang: str
    body: str
    skip: str | None

    def __str__(self) -> str:
        first = self.body.strip().splitlines()[0]
        return f"README block {self.number} ({self.lang}): {first[:70]}"


def blocks() -> list[Block]:
    found = FENCE.finditer(README.read_text())
    return [Block(n, m["lang"], m["body"], m["skip"]) for n, m in enumerate(found, 1)]


def commands(block: Block) -> list[str]:
    """The block's command lines, continuation lines joined, comments dropped."""
    joined = block.body.replace("\\\n", " ")
    lines = [line.split("  #")[0].strip() for line in joined.splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


# --- without a stack ----------------------------------------------------------------------


def test_every_block_is_run_here_or_says_what_covers_it():
    runnable = [b for b in blocks() if b.lang in RUNNABLE]
    assert len(runnable) >= 15
    for block in runnable:
        if block.skip is None:
            continue
        covered = re.findall(r"tests/[\w/]+\.py|\.ci/run", block.skip)
        assert covered or "needs Google Cloud" in block.skip, f"{block}: say why it is not run"
        for path in covered:
            assert (REPO_ROOT / path).exists(), f"{block}: {path} does not exist"


def test_every_ltxv_command_shown_parses():
    """Including those in skipped blocks and in the tables' inline code."""
    text = README.read_text()
    shown = [c for b in blocks() if b.lang == "sh" for c in commands(b)]
    # Inline code naming a command with arguments (a bare `ltxv drop` is prose).
    shown += [c for c in re.findall(r"`(ltxv [^`…]+)`", text) if len(c.split()) > 2]
    invocations = [c for c in shown if c.startswith("ltxv ") or " ltxv " in c]
    assert len(invocations) >= 20
    parser = build_parser()
    for command in invocations:
        words = shlex.split(command[command.index("ltxv ") :].split("|")[0].split(")")[0])
        words = [w for w in words[1:] if w not in ("&", "||", "true")]
        words = [w.replace("[", "").replace("]", "") for w in words if w != "..."]
        # A synopsis's placeholders stand for values.
        words = [PLACEHOLDERS.get(w, w) for w in words if w and not w.startswith("COMPONENT")]
        try:
            parser.parse_args(words)
        except SystemExit as exc:
            if exc.code == 0:  # --help
                continue
            pytest.fail(f"the README shows `{command}`, which ltxv does not accept")


def test_terraform_outputs_the_readme_reads_exist():
    declared = set(
        re.findall(r'^output "(\w+)"', (REPO_ROOT / "terraform/outputs.tf").read_text(), re.M)
    )
    used = set(
        re.findall(
            r"terraform(?: -chdir=terraform)? output (?:-raw |-json )?(\w+)", README.read_text()
        )
    )
    assert used and used <= declared, used - declared


def test_the_make_targets_it_names_run_the_commands_it_describes():
    makefile = (REPO_ROOT / "Makefile").read_text()
    for target, command in (
        ("dev", "ltxv dev up"),
        ("down", "ltxv dev down"),
        ("status", "ltxv dev status"),
    ):
        recipe = re.search(rf"^{target}:.*\n((?:\t.*\n)+)", makefile, re.M)
        assert recipe and command in recipe.group(1), f"make {target} should run {command}"


# --- against the local stack --------------------------------------------------------------


@pytest.fixture(scope="module")
def stack(emulators):
    everything = [c.name for c in components_for(emulators.settings) if c.name not in EMULATORS]
    with running_stack(emulators, everything) as running:
        yield running


@pytest.mark.emulators
@pytest.mark.timeout(900)
def test_the_readme_commands_work_as_shown(stack, clean_firestore, tmp_path):
    checkout = tmp_path / "checkout"
    checkout.mkdir()
    (checkout / ".local").symlink_to(stack.state_dir)
    (checkout / ".venv").symlink_to(Path(sys.prefix))
    env = user_env(
        PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        LTXV_STATE_DIR=str(stack.state_dir),
        # The session's names, as `make dev`'s would be its own.
        LTXV_PROJECT=stack.settings.project,
        LTXV_PREFIX=stack.settings.prefix,
        PYTHONUNBUFFERED="1",
    )
    ran = 0
    for block in blocks():
        if block.lang not in RUNNABLE or block.skip:
            continue
        if block.lang == "sh":
            argv = ["bash", "-euo", "pipefail", "-c", block.body]
            block_env = env
        else:  # python blocks run with .local/stack.env loaded, as the README says
            argv = [sys.executable, "-c", block.body]
            block_env = {**env, **read_stack_env(stack.stack_env_file)}
        process = subprocess.Popen(
            argv,
            cwd=checkout,
            env=block_env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,  # so a block's background jobs go with it
        )
        try:
            output, _ = process.communicate(timeout=240)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            output, _ = process.communicate()
            pytest.fail(f"{block} did not finish in 240 s:\n{output[-3000:]}")
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
        assert process.returncode == 0, f"{block} exited {process.returncode}:\n{output[-3000:]}"
        assert "Traceback" not in output, f"{block}:\n{output[-3000:]}"
        ran += 1
    assert ran >= 12
    # What the blocks promised to leave behind.
    assert (checkout / "fox.mp4").stat().st_size > 0
    assert (checkout / "waves.mp4").stat().st_size > 0
    assert (checkout / "balloon.mp4").stat().st_size > 0
    assert list((checkout / "hooks").glob("evt_*.json"))


def test_the_api_reference_is_generated_from_the_current_openapi_document():
    check = subprocess.run(
        [sys.executable, str(REPO_ROOT / "tools" / "api_reference.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert check.returncode == 0, check.stderr
