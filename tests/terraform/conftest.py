"""The deployment's terraform, evaluated offline (no provider can be downloaded here).

tfparse evaluates the configuration with `ci.tfvars` (variables, locals, for_each, dynamic
blocks); attributes only the provider knows (ids, emails) come back as references to the
resource they name, which is what several checks look at.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
TERRAFORM = ROOT / "terraform"
VARS = Path(__file__).with_name("ci.tfvars")
TF_TOOLS = ROOT / ".venv-tf" / "bin"
PREFIX = "ltxv-ci"
PROJECT = "ltxv-ci-project"
# ci.tfvars enables two models, so every worker pool resource comes twice; the first is
# the default model.
MODELS = ("ltx-video-2b-distilled", "ltx-video-2b")


def evaluate(var_file: Path) -> dict[str, list[dict[str, Any]]]:
    import tfparse

    # tfparse reads var files relative to the module directory.
    return tfparse.load_from_path(TERRAFORM, vars_paths=[os.path.relpath(var_file, TERRAFORM)])


def evaluate_with(tmp_path: Path, **variables) -> dict[str, list[dict[str, Any]]]:
    """The configuration evaluated with the CI project and prefix and these variables."""
    lines = [f'project_id = "{PROJECT}"', f'prefix = "{PREFIX}"']
    lines += [f"{name} = {json.dumps(value)}" for name, value in variables.items()]
    tfvars = tmp_path / "test.tfvars"
    tfvars.write_text("\n".join(lines) + "\n")
    return evaluate(tfvars)


@pytest.fixture(scope="session")
def tf() -> dict[str, list[dict[str, Any]]]:
    return evaluate(VARS)


def blocks(value: Any) -> list[dict[str, Any]]:
    """Nested blocks as a list (tfparse gives one block as a dict, several as a list)."""
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


def address(resource: dict[str, Any]) -> str:
    return resource["__tfmeta"]["path"]


def by_address(tf, kind: str) -> dict[str, dict[str, Any]]:
    return {address(r): r for r in tf.get(kind, [])}


def references(resource: dict[str, Any]) -> set[tuple[str, str]]:
    """(label, name) of everything a block refers to, nested blocks included."""
    found = set()
    for ref in resource.get("__tfmeta", {}).get("references", []):
        found.add((ref["label"], ref["name"]))
    for value in resource.values():
        for block in blocks(value) if isinstance(value, dict | list) else []:
            if isinstance(block, dict) and "__tfmeta" in block:
                found |= references(block)
    return found
