"""Per-key webhook signing secrets, their rotation and who may read them; the API's one
conditional write to the outputs bucket. Evaluated offline by tfparse with the CI values
and with rotation values of the test's own (tfparse also evaluates validations and
preconditions, so what they refuse can be checked without a provider)."""

from __future__ import annotations

import json

import pytest

from ltxv.core.webhook_triggers import (
    TRIGGER_SUFFIX,
    batch_completed_object,
    redelivery_object,
    running_object,
)

from .conftest import PREFIX, PROJECT, address, by_address, references
from .conftest import evaluate_with as evaluate

API_SA = f"serviceAccount:{PREFIX}-api@{PROJECT}.iam.gserviceaccount.com"
RESULTS_SA = f"serviceAccount:{PREFIX}-results@{PROJECT}.iam.gserviceaccount.com"
PROMPT_FILE_SA = f"serviceAccount:{PREFIX}-prompts@{PROJECT}.iam.gserviceaccount.com"
OUTPUTS = f"{PREFIX}-outputs"


def secret_versions(tf) -> set[str]:
    return {address(r).split("[", 1)[1].strip('"]') for r in tf["random_bytes"]}


def webhook_secrets_version(tf) -> dict:
    return by_address(tf, "google_secret_manager_secret_version")[
        "google_secret_manager_secret_version.webhook_secrets"
    ]


def test_each_api_key_gets_its_own_webhook_secret_in_one_secret(tmp_path):
    tf = evaluate(tmp_path, api_key_ids=["default", "acme"])
    assert secret_versions(tf) == {"default/1", "acme/1"}
    secret_ids = [s["secret_id"] for s in tf["google_secret_manager_secret"]]
    assert secret_ids.count(f"{PREFIX}-webhook-secrets") == 1
    version = webhook_secrets_version(tf)
    assert ("google_secret_manager_secret", "webhook_secrets") in references(version)
    # The JSON webhook_secrets.py reads: key id -> [whsec_ + the key's random bytes].
    data = json.loads(version["secret_data"])
    assert set(data) == {"default", "acme"}
    assert all(len(v) == 1 and v[0].startswith("whsec_") for v in data.values())
    assert data["default"] != data["acme"]
    assert all(r["length"] == 32 for r in tf["random_bytes"])
    assert version["lifecycle"]["create_before_destroy"] is True
    outputs = by_address(tf, "output")
    assert outputs["output.webhook_secrets"]["sensitive"] is True
    assert outputs["output.webhook_secrets"]["value"] == {k: v[0] for k, v in data.items()}


def test_a_rotation_mints_a_generation_and_keeps_the_previous_for_the_overlap(tmp_path):
    tf = evaluate(
        tmp_path,
        api_key_ids=["default", "acme"],
        webhook_secret_generations={"default": 2, "acme": 4},
        webhook_secret_keep_previous=["default"],
    )
    # default: new and previous both sign (current first); acme: replaced outright.
    assert secret_versions(tf) == {"default/2", "default/1", "acme/4"}
    data = json.loads(webhook_secrets_version(tf)["secret_data"])
    assert len(data["default"]) == 2 and len(data["acme"]) == 1
    assert (
        by_address(tf, "output")["output.webhook_secrets"]["value"]["default"]
        == (data["default"][0])
    )
    assert all(
        p["condition"] is True for p in webhook_secrets_version(tf)["lifecycle"]["precondition"]
    )


@pytest.mark.parametrize(
    ("variables", "refused"),
    [
        ({"webhook_secret_generations": {"default": 0}}, "whole number, 1 or more"),
        ({"webhook_secret_generations": {"default": 1.5}}, "whole number, 1 or more"),
        ({"webhook_secret_generations": {"ghost": 2}}, "not in api_key_ids"),
        ({"webhook_secret_keep_previous": ["default"]}, "generation of 2 or more"),
        ({"webhook_secret_keep_previous": ["ghost"]}, "must be in api_key_ids"),
    ],
)
def test_rotation_settings_that_make_no_sense_are_refused(tmp_path, variables, refused):
    tf = evaluate(tmp_path, **variables)
    checks = [v["validation"] for v in tf["variable"] if "validation" in v]
    checks = [c for check in checks for c in (check if isinstance(check, list) else [check])]
    checks += webhook_secrets_version(tf)["lifecycle"]["precondition"]
    failed = [c["error_message"] for c in checks if c["condition"] is False]
    assert any(refused in message for message in failed), failed


def test_only_the_api_and_result_ready_read_the_webhook_secrets(tf):
    members = by_address(tf, "google_secret_manager_secret_iam_member")
    webhook = {k: m for k, m in members.items() if ".webhook_secrets[" in k}
    assert {m["member"] for m in webhook.values()} == {API_SA, RESULTS_SA}
    for member in webhook.values():
        assert member["role"] == "roles/secretmanager.secretAccessor"
        assert ("google_secret_manager_secret", "webhook_secrets") in references(member)
    # And nobody else reads either secret.
    others = {k: m for k, m in members.items() if k not in webhook}
    assert {m["member"] for m in others.values()} == {API_SA}
    assert all(
        ("google_secret_manager_secret", "api_keys") in references(m) for m in others.values()
    )


def test_the_api_may_create_result_json_and_webhook_triggers_in_outputs_and_nothing_more(tf):
    grants = [
        m
        for m in tf["google_storage_bucket_iam_member"]
        if m["member"] == API_SA and m["bucket"] == OUTPUTS
    ]
    roles = {m["role"]: m for m in grants}
    assert set(roles) == {"roles/storage.objectViewer", "roles/storage.objectCreator"}
    creator = roles["roles/storage.objectCreator"]
    assert creator["condition"]["expression"] == (
        f'resource.name.startsWith("projects/_/buckets/{OUTPUTS}/objects/jobs/")'
        ' && (resource.name.endsWith("/result.json")'
        f' || resource.name.endsWith("{TRIGGER_SUFFIX}"))'
    )
    # The names the API writes fall under it (the worker's running triggers too: the same
    # convention, though the worker's own role writes them).
    for name in (redelivery_object("a" * 26, 1), running_object("a" * 26, 2)):
        assert name.startswith("jobs/") and name.endswith(TRIGGER_SUFFIX)
    assert "condition" not in roles["roles/storage.objectViewer"]
    # objectCreator cannot delete, so nothing the workers wrote can be replaced.
    assert not any(
        m["role"]
        in ("roles/storage.objectUser", "roles/storage.objectAdmin", "roles/storage.admin")
        for m in grants
    )


def test_the_prompt_file_function_may_create_batch_triggers_in_outputs_and_nothing_more(tf):
    """For a file none of whose lines became a job: the one object it writes there."""
    (grant,) = [
        m
        for m in tf["google_storage_bucket_iam_member"]
        if m["member"] == PROMPT_FILE_SA and m["bucket"] == OUTPUTS
    ]
    assert grant["role"] == "roles/storage.objectCreator"  # cannot delete or replace
    assert grant["condition"]["expression"] == (
        f'resource.name.startsWith("projects/_/buckets/{OUTPUTS}/objects/batches/")'
        f' && resource.name.endsWith("{TRIGGER_SUFFIX}")'
    )
    name = batch_completed_object("a" * 26)
    assert name.startswith("batches/") and name.endswith(TRIGGER_SUFFIX)
