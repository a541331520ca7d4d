"""Security policy (checkov) and the compliance features (terraform-compliance), offline.

Both tools live in .venv-tf (`make test` builds it): checkov pins versions this project's
environment cannot share.
"""

from __future__ import annotations

import json
import subprocess

import pytest

from .conftest import ROOT, TERRAFORM, TF_TOOLS
from .plan import render, write

FEATURES = ROOT / "tests" / "terraform" / "features"


def _tool(name: str) -> str:
    path = TF_TOOLS / name
    if not path.exists():
        pytest.fail(f"{path} is missing: run `make tf-tools` (make test does)")
    return str(path)


def test_checkov_finds_nothing_failed():
    result = subprocess.run(
        [_tool("checkov"), "-d", str(TERRAFORM), "--framework", "terraform",
         "--skip-download", "-o", "json"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    report = json.loads(result.stdout)
    failed = [
        f"{c['check_id']} {c['resource']} ({c['file_path']}:{c['file_line_range'][0]})"
        for c in report["results"]["failed_checks"]
    ]
    assert not failed, "checkov failed:\n" + "\n".join(failed)
    assert report["summary"]["parsing_errors"] == 0
    # Every skip carries its reason inline, beside the resource.
    for skipped in report["results"]["skipped_checks"]:
        assert skipped["check_result"].get("suppress_comment"), skipped["check_id"]


def _compliance(plan) -> subprocess.CompletedProcess:
    return subprocess.run(
        [_tool("terraform-compliance"), "-p", str(plan), "-f", str(FEATURES), "--no-ansi"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def test_compliance_features_pass_on_the_plan_rendered_offline(tf, tmp_path):
    result = _compliance(write(tf, tmp_path / "plan.json"))
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "0 failed" not in result.stdout or "passed" in result.stdout


def test_the_features_catch_a_public_bucket(tf, tmp_path):
    plan = render(tf)
    for resource in plan["planned_values"]["root_module"]["resources"]:
        if resource["type"] == "google_storage_bucket":
            resource["values"]["public_access_prevention"] = "inherited"
    for change in plan["resource_changes"]:
        if change["type"] == "google_storage_bucket":
            change["change"]["after"]["public_access_prevention"] = "inherited"
    path = tmp_path / "public.json"
    path.write_text(json.dumps(plan, separators=(",", ":")))
    result = _compliance(path)
    assert result.returncode != 0
    assert "public_access_prevention" in result.stdout
