"""Imports point down: the core imports no part; intake and notify import the core; the
client imports the core; the worker imports the core; only the local stack and the CLI,
the top, may import everything. Read from every import statement (top level or inside a
function), and checked in a fresh interpreter for what an import really loads."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "src" / "ltxv"

# Which parts each part may import (besides itself).
ALLOWED = {
    "core": set(),
    "intake": {"core"},
    "notify": {"core"},
    "client": {"core"},
    "gpu_worker": {"core"},
    "local": {"core", "intake", "notify", "client"},
    "cli": {"core", "intake", "notify", "client", "local"},
}


def part_of(path: Path) -> str:
    if path.is_relative_to(ROOT / "gpu_worker"):
        return "gpu_worker"
    relative = path.relative_to(PACKAGE)
    return relative.parts[0] if len(relative.parts) > 1 else relative.stem


def imported_parts(path: Path) -> set[str]:
    parts = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        elif isinstance(node, ast.ImportFrom) and node.level > 1:
            raise AssertionError(f"{path}: import from a parent package; name it absolutely")
        for name in names:
            top, _, rest = name.partition(".")
            if top == "gpu_worker":
                parts.add("gpu_worker")
            elif top == "ltxv" and rest:
                parts.add(rest.split(".")[0])
    return parts


MODULES = sorted(
    [p for p in PACKAGE.rglob("*.py") if p.name != "__init__.py" or p.parent != PACKAGE]
    + list((ROOT / "gpu_worker").glob("*.py")),
)


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_point_down(path):
    part = part_of(path)
    wrong = imported_parts(path) - ALLOWED[part] - {part}
    assert not wrong, f"{path.relative_to(ROOT)} ({part}) imports {sorted(wrong)}"


def test_every_module_belongs_to_a_known_part():
    assert {part_of(p) for p in MODULES} == set(ALLOWED)


def loaded_after(statement: str) -> set[str]:
    probe = f"import sys; {statement}; print('\\n'.join(sys.modules))"
    run = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=ROOT
    )
    return set(run.stdout.split())


def test_the_client_loads_no_firestore_or_pubsub_library():
    loaded = loaded_after("import ltxv.client, ltxv.client.webhook_receiver")
    assert "ltxv.client" in loaded
    assert not {
        m for m in loaded if m.startswith(("google.cloud.firestore", "google.cloud.pubsub"))
    }


def test_the_worker_loads_no_intake_or_notify_code():
    loaded = loaded_after("import gpu_worker.__main__, gpu_worker.worker")
    assert "gpu_worker.worker" in loaded
    assert not {m for m in loaded if m.startswith(("ltxv.intake", "ltxv.notify", "ltxv.client"))}
