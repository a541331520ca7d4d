"""The worker groups' scaling, healing and boot settings (issue 13), evaluated offline.

Each test names the rule Google documents that the value must keep (terraform/workers.tf
cites the pages); docs/boot-budget.md is where the boot times come from.
"""

from __future__ import annotations

import json
import re

import pytest

from .conftest import MODELS, PROJECT, TERRAFORM, address, by_address, evaluate, references
from .test_worker_pools import by_model

# Google's health checkers (https://cloud.google.com/load-balancing/docs/health-check-concepts).
HEALTH_CHECK_RANGES = {"35.191.0.0/16", "130.211.0.0/22"}
IAP_RANGE = "35.235.240.0/20"


def _variable(tf, name: str) -> dict:
    (variable,) = [v for v in tf["variable"] if v["__tfmeta"]["label"] == name]
    return variable


def _validations(variable: dict) -> list[dict]:
    found = variable.get("validation")
    return found if isinstance(found, list) else [found] if found else []


def _with(tmp_path, name: str, **values) -> dict:
    lines = [f'project_id = "{PROJECT}"', f"models = {json.dumps(list(MODELS))}"]
    lines += [f"{key} = {json.dumps(value)}" for key, value in values.items()]
    var_file = tmp_path / f"{name}.tfvars"
    var_file.write_text("\n".join(lines) + "\n")
    return evaluate(var_file)


@pytest.mark.parametrize("model", MODELS)
def test_each_autoscaled_group_uses_a_shape_and_redistribution_google_supports(tf, model):
    group = by_model(tf, "google_compute_region_instance_group_manager", "workers")[model]
    assert model in by_model(tf, "google_compute_region_autoscaler", "workers")
    shape = group.get("distribution_policy_target_shape", "EVEN")
    redistribution = group["update_policy"]["instance_redistribution_type"]
    # An autoscaled regional MIG: EVEN with proactive redistribution (scale in and out), or
    # BALANCED, which requires it off. NONE with EVEN stops the autoscaler from working.
    assert (shape, redistribution) in {("EVEN", "PROACTIVE"), ("BALANCED", "NONE")}


@pytest.mark.parametrize(
    ("zones", "zone_count"),
    [([], 3), (["us-central1-a"], 1), (["us-central1-a", "us-central1-b", "us-central1-c"], 3),
     (["us-central1-a", "us-central1-b", "us-central1-c", "us-central1-f"], 4)],
    ids=["empty", "one", "three", "four"],
)  # fmt: skip
def test_max_unavailable_is_zero_or_at_least_the_zone_count_for_every_allowed_zone_list(
    tmp_path, zones, zone_count
):
    tf = _with(tmp_path, "zones", worker_zones=zones)
    assert all(v["condition"] for v in _validations(_variable(tf, "worker_zones")))
    for group in by_model(tf, "google_compute_region_instance_group_manager", "workers").values():
        policy = group["update_policy"]
        # The API: "has to be either 0 or at least equal to the number of zones"; an empty
        # list lets the group choose up to three zones of the region.
        fixed = policy["max_unavailable_fixed"]
        assert fixed == 0 or fixed >= zone_count
        assert fixed == zone_count  # up to one VM per zone replaced at a time
        assert policy["max_surge_fixed"] == 0  # RECREATE needs no surge; 0 is always valid
        assert group.get("distribution_policy_zones", []) == zones


def test_the_default_image_has_python_3_11_or_newer_and_22_04_images_are_refused(tmp_path, tf):
    image = _variable(tf, "worker_image")
    assert image["default"].endswith("/family/common-cu128-ubuntu-2404-nvidia-570")
    assert all(v["condition"] for v in _validations(image))
    for template in tf["google_compute_instance_template"]:
        assert "ubuntu-2404" in template["disk"]["source_image"], address(template)

    family = "common-cu128-ubuntu-2204-nvidia-570"
    old = f"projects/deeplearning-platform-release/global/images/family/{family}"
    (refused,) = _validations(
        _variable(_with(tmp_path, "old-image", worker_image=old), "worker_image")
    )
    assert refused["condition"] is False
    assert "Python 3.10" in refused["error_message"] and "3.11" in refused["error_message"]


def test_auto_healing_probes_the_workers_healthz_and_replaces_a_dead_one_within_minutes(tf):
    (check,) = tf["google_compute_health_check"]
    assert "tcp_health_check" not in check
    assert check["http_health_check"]["port"] == 8080
    assert check["http_health_check"]["request_path"] == "/healthz"
    assert check["timeout_sec"] <= check["check_interval_sec"]
    # From the worker's death to the group's verdict: long enough for systemd's restart
    # and a model reload from a cold page cache (~1 min) to pass, at most five minutes.
    assert 150 <= check["check_interval_sec"] * check["unhealthy_threshold"] <= 300
    assert ("time_sleep", "apis_ready") in references(check)
    for group in by_model(tf, "google_compute_region_instance_group_manager", "workers").values():
        # A first boot of a deployment (pip build + Hugging Face download) must not be
        # cut short: docs/boot-budget.md column c, about 10 minutes.
        assert group["auto_healing_policies"]["initial_delay_sec"] >= 900


def test_health_checkers_reach_port_8080_only_and_ssh_comes_through_iap_only(tf):
    firewalls = by_address(tf, "google_compute_firewall")
    checks = firewalls["google_compute_firewall.health_checks"]
    assert set(checks["source_ranges"]) == HEALTH_CHECK_RANGES
    assert checks["allow"] == {**checks["allow"], "protocol": "tcp", "ports": ["8080"]}
    ssh = firewalls["google_compute_firewall.iap_ssh"]
    assert ssh["source_ranges"] == [IAP_RANGE] and ssh["allow"]["ports"] == ["22"]
    for rule in firewalls.values():
        allows = rule["allow"] if isinstance(rule["allow"], list) else [rule["allow"]]
        if "22" in [p for a in allows for p in a.get("ports", [])]:
            assert rule["source_ranges"] == [IAP_RANGE], address(rule)


@pytest.mark.parametrize("model", MODELS)
def test_one_job_per_vm_so_scale_in_never_removes_a_rendering_vm(tf, model):
    autoscaler = by_model(tf, "google_compute_region_autoscaler", "workers")[model]
    policy = autoscaler["autoscaling_policy"]
    assert [metric["single_instance_assignment"] for metric in policy["metric"]] == [1, 1, 1]
    assert policy["mode"] == "ON"
    # The initialization period is a fresh VM's boot with the caches in place (b).
    assert 120 <= policy["cooldown_period"] <= 600
    description = _variable(tf, "jobs_per_worker")["description"]
    assert "mid-render" in description and "delivery attempt" in description


def test_jobs_per_worker_refuses_fractions(tmp_path):
    tf = _with(tmp_path, "half", jobs_per_worker=1.5)
    (validation,) = _validations(_variable(tf, "jobs_per_worker"))
    assert validation["condition"] is False


@pytest.mark.parametrize("model", MODELS)
def test_each_group_keeps_stopped_standby_vms_that_boot_fully_before_they_stop(tf, model):
    group = by_model(tf, "google_compute_region_instance_group_manager", "workers")[model]
    standby = group["standby_policy"]
    assert standby["mode"] == "SCALE_OUT_POOL"
    # Stopped, never suspended: a VM with GPUs cannot be suspended.
    assert group["target_suspended_size"] == 0
    assert group["target_stopped_size"] == _variable(tf, "worker_standby_stopped")["default"] == 1
    # A VM prepared for the pool runs no worker (so it fails the health check): the group
    # stops it before auto-healing starts probing it, with a minute to spare, and after a
    # first boot of a deployment could have finished (~8 minutes, docs/boot-budget.md).
    healing = group["auto_healing_policies"]["initial_delay_sec"]
    assert 600 <= standby["initial_delay_sec"] <= healing - 60


def test_the_standby_pool_can_be_turned_off(tmp_path):
    tf = _with(tmp_path, "no-standby", worker_standby_stopped=0)
    for group in by_model(tf, "google_compute_region_instance_group_manager", "workers").values():
        assert group["target_stopped_size"] == 0


def test_the_boot_disk_is_a_persistent_disk_fast_enough_for_the_warm_budget(tf, tmp_path):
    for template in tf["google_compute_instance_template"]:
        disk = template["disk"]
        assert disk["disk_type"] == "pd-ssd" and disk["boot"] is True
        # Documented pd-ssd read: 140 MiB/s baseline + 0.48 MiB/s per GiB; the warm budget
        # (docs/boot-budget.md) reads 15 GiB of weights in under a minute.
        assert 15 * 1024 / (140 + 0.48 * disk["disk_size_gb"]) <= 60, address(template)
    tf = _with(tmp_path, "hyperdisk", worker_disk_type="hyperdisk-ml")
    (validation,) = _validations(_variable(tf, "worker_disk_type"))
    assert validation["condition"] is False


def test_new_worker_resources_wait_for_the_apis(tf):
    # Every google_* resource in workers.tf and network.tf depends on time_sleep.apis_ready,
    # directly or through a reference to a resource that does.
    resources = {address(r): r for k in tf if k.startswith("google_") for r in tf[k]}
    gated = {"time_sleep.apis_ready"}
    changed = True
    while changed:
        changed = False
        for name, resource in resources.items():
            refs = {f"{label}.{ref}".split("[")[0] for label, ref in references(resource)}
            if name not in gated and refs & {g.split("[")[0] for g in gated}:
                gated.add(name)
                changed = True
    ours = [
        n for n, r in resources.items() if r["__tfmeta"]["filename"] in ("workers.tf", "network.tf")
    ]
    assert ours and [n for n in ours if n not in gated] == []


def test_no_comment_claims_one_vm_at_a_time():
    for name in ("workers.tf", "network.tf", "variables.tf", "terraform.tfvars.example"):
        text = (TERRAFORM / name).read_text()
        assert not re.search(r"\bone (VM )?at a time", text, re.IGNORECASE), name


def test_the_features_catch_redistribution_off_and_two_jobs_per_vm(tf, tmp_path):
    from .plan import render
    from .test_policies import _compliance

    plan = render(tf)
    changed = [r["values"] for r in plan["planned_values"]["root_module"]["resources"]]
    changed += [c["change"]["after"] for c in plan["resource_changes"]]
    for values in changed:
        if "update_policy" in values and "target_stopped_size" in values:
            values["update_policy"][0]["instance_redistribution_type"] = "NONE"
        if "autoscaling_policy" in values:
            values["autoscaling_policy"][0]["metric"][0]["single_instance_assignment"] = 2
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(plan, separators=(",", ":")))
    result = _compliance(path)
    assert result.returncode != 0
    assert "instance_redistribution_type" in result.stdout
    assert "single_instance_assignment" in result.stdout
