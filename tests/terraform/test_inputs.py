"""The inputs bucket (issue 17): private, forgetting its uploads, open to browser PUTs from
the API's origin only, written only by the API and read by whom checks or renders inputs,
kept for a retention counted from each object's Custom-Time, which intake may move;
and the input buckets a deployment allows, read-only."""

from __future__ import annotations

import re

import pytest

from ltxv.core.settings import Settings
from ltxv.intake.upload_quota import COLLECTION as UPLOAD_COUNTS
from ltxv.intake.uploads import UPLOAD_CORS_HEADERS

from .conftest import MODELS, PREFIX, PROJECT, address, blocks, by_address, evaluate_with
from .graph import graph

settings = Settings(project=PROJECT, prefix=PREFIX)
SHARED = f"{PREFIX}-shared-media"  # ci.tfvars' input_buckets


def _account(name: str) -> str:
    return f"serviceAccount:{PREFIX}-{name}@{PROJECT}.iam.gserviceaccount.com"


def _bucket(tf, name: str) -> dict:
    (bucket,) = [b for b in tf["google_storage_bucket"] if b["name"] == name]
    return bucket


def _grants(tf, bucket: str) -> set[tuple[str, str]]:
    return {
        (_role_name(m["role"]), m["member"])
        for m in tf["google_storage_bucket_iam_member"]
        if m["bucket"] == bucket
    }


def test_the_inputs_bucket_is_private_and_labelled_like_the_others(tf):
    bucket = _bucket(tf, settings.inputs)
    assert bucket["uniform_bucket_level_access"] is True
    assert bucket["public_access_prevention"] == "enforced"
    assert bucket["force_destroy"] is False
    assert bucket["labels"]["purpose"] == "inputs"
    assert bucket["location"] == _bucket(tf, settings.outputs)["location"]


def test_inputs_expire_by_their_custom_time_not_their_age(tf, tmp_path):
    """Custom-Time is set when intake writes or signs an input and moved forward when a job
    pins it: an input a job still needs is not deleted by its creation date."""

    def rules(evaluated) -> list:
        return [
            (
                r["condition"]["matches_prefix"],
                r["condition"].get("days_since_custom_time"),
                r["condition"].get("age"),
                r["condition"].get("send_age_if_zero"),
                r["action"]["type"],
            )
            for r in blocks(_bucket(evaluated, settings.inputs).get("lifecycle_rule"))
        ]

    # keys/KEY/uploads/ and keys/KEY/inline/ (ltxv.core.inputs) all sit under keys/; no age
    # condition at all (an age of 0 sent would match every object at once).
    assert rules(tf) == [(["keys/"], 7, None, False, "Delete")]
    assert rules(evaluate_with(tmp_path, inputs_retention_days=2)) == [
        (["keys/"], 2, None, False, "Delete")
    ]
    # The other buckets still forget by age.
    for name in (settings.outputs, settings.prompts):
        conditions = [r["condition"] for r in blocks(_bucket(tf, name).get("lifecycle_rule"))]
        assert conditions and all(c["age"] >= 1 for c in conditions)
        assert not any(c.get("days_since_custom_time") for c in conditions)


def _role_name(value) -> str:
    """A bucket grant's role: a predefined role's name, or the custom role it refers to."""
    if isinstance(value, dict):
        return value["__attribute__"]
    return value


def test_intake_may_patch_inputs_metadata_through_a_one_permission_role(tf):
    roles = by_address(tf, "google_project_iam_custom_role")
    role = roles["google_project_iam_custom_role.inputs_touch"]
    # Metadata only: replacing the bytes also needs storage.objects.delete.
    assert role["permissions"] == ["storage.objects.update"]
    # A deleted custom role's id stays taken for 7 to 37 days (provider docs): the id
    # carries the deployment's random suffix, like the other custom roles'.
    assert role["role_id"].startswith(f"{PREFIX.replace('-', '_')}_inputs_touch_")
    assert "random_id.custom_roles" in graph()["google_project_iam_custom_role.inputs_touch"]
    longest = "a" * 16 + "_inputs_touch_" + "0" * 6  # prefix is at most 16 characters
    assert re.fullmatch(r"[a-zA-Z0-9_.]{3,64}", longest)
    touches = {
        (m["bucket"], _role_name(m["role"]), m["member"])
        for m in tf["google_storage_bucket_iam_member"]
        if address(m).startswith("google_storage_bucket_iam_member.inputs_touch")
    }
    assert touches == {
        (settings.inputs, "google_project_iam_custom_role.inputs_touch.name", _account("api")),
        (settings.inputs, "google_project_iam_custom_role.inputs_touch.name", _account("prompts")),
    }


def test_browsers_may_put_from_the_api_origin_with_the_signed_headers(tf, tmp_path):
    (cors,) = blocks(_bucket(tf, settings.inputs).get("cors"))
    assert cors["origin"] == [f"https://us-central1-{PROJECT}.cloudfunctions.net"]
    assert cors["method"] == ["PUT"]
    assert cors["response_header"] == list(UPLOAD_CORS_HEADERS)
    # No other bucket answers browsers at all.
    others = [b for b in tf["google_storage_bucket"] if b["name"] != settings.inputs]
    assert all(not blocks(b.get("cors")) for b in others), [address(b) for b in others]

    custom = evaluate_with(tmp_path, inputs_cors_origins=["https://api.example.com"])
    (cors,) = blocks(_bucket(custom, settings.inputs).get("cors"))
    assert cors["origin"][1:] == ["https://api.example.com"]


def test_only_intake_writes_inputs_and_nothing_may_delete_them(tf):
    assert _grants(tf, settings.inputs) == {
        # Custom-Time moved forward when a job pins an input (storage.objects.update only).
        ("google_project_iam_custom_role.inputs_touch.name", _account("api")),
        ("google_project_iam_custom_role.inputs_touch.name", _account("prompts")),
        # Inline data: URLs (from the API and from prompt-file lines) and signed upload PUTs
        # (a signed URL acts with its signer's permissions); objectCreator cannot delete,
        # so cannot overwrite either.
        ("roles/storage.objectCreator", _account("api")),
        ("roles/storage.objectViewer", _account("api")),
        ("roles/storage.objectCreator", _account("prompts")),
        ("roles/storage.objectViewer", _account("prompts")),
        ("roles/storage.objectViewer", _account("worker")),
    }
    # Extend reads the earlier job's video, over the API and in a prompt-file line.
    outputs = _grants(tf, settings.outputs)
    assert ("roles/storage.objectViewer", _account("api")) in outputs
    assert ("roles/storage.objectViewer", _account("prompts")) in outputs


def test_allowed_input_buckets_are_read_only(tf):
    assert _grants(tf, SHARED) == {
        ("roles/storage.objectViewer", _account("api")),
        ("roles/storage.objectViewer", _account("prompts")),
        ("roles/storage.objectViewer", _account("worker")),
    }


@pytest.mark.parametrize("function", ["api", "prompt-file", "redispatch"])
def test_submit_functions_know_the_inputs_buckets(tf, function):
    (found,) = [
        f for f in tf["google_cloudfunctions2_function"] if f["name"] == f"{PREFIX}-{function}"
    ]
    env = found["service_config"]["environment_variables"]
    parsed = Settings.from_env({**env, "LTXV_PROJECT": PROJECT})
    assert parsed.inputs == settings.inputs
    assert parsed.input_buckets == {SHARED: frozenset({"default"})}


def test_workers_are_told_the_inputs_bucket(tf):
    templates = [t for t in tf["google_compute_instance_template"]]
    assert len(templates) == len(MODELS)
    for template in templates:
        assert template["metadata"]["ltxv-inputs-bucket"] == settings.inputs


def test_upload_counts_expire(tf):
    ttl = {f["collection"]: f["field"] for f in tf["google_firestore_field"] if f.get("ttl_config")}
    assert ttl[UPLOAD_COUNTS] == "expires_at"


@pytest.mark.parametrize(
    ("variables", "refused"),
    [
        ({"inputs_retention_days": 0}, "inputs_retention_days must be"),
        # A pin touches Custom-Time only once it is a day old: 1 could delete a just-pinned input.
        ({"inputs_retention_days": 1}, "inputs_retention_days must be"),
        ({"inputs_retention_days": 1.5}, "inputs_retention_days must be"),
        ({"input_buckets": {"Not A Bucket": ["default"]}}, "input_buckets must map"),
        ({"input_buckets": {"fine-bucket": []}}, "input_buckets must map"),
        ({"input_buckets": {"fine-bucket": ["ghost"]}}, "not in api_key_ids"),
        ({"input_buckets": {f"{PREFIX}-outputs": ["default"]}}, "must not name the deployment"),
        ({"input_buckets": {f"{PREFIX}-inputs": ["default"]}}, "must not name the deployment"),
        ({"inputs_cors_origins": ["http://insecure.example.com"]}, "must be https origins"),
        ({"inputs_cors_origins": ["https://x.example.com/path"]}, "must be https origins"),
    ],
)
def test_bad_variables_are_refused(tmp_path, variables, refused):
    evaluated = evaluate_with(tmp_path, **variables)
    checks = [v["validation"] for v in evaluated["variable"] if "validation" in v]
    checks = [c for check in checks for c in (check if isinstance(check, list) else [check])]
    (api,) = [
        f for f in evaluated["google_cloudfunctions2_function"] if f["name"] == f"{PREFIX}-api"
    ]
    checks += blocks(api["lifecycle"]["precondition"])
    failed = [c["error_message"] for c in checks if c["condition"] is False]
    assert any(refused in message for message in failed), failed


def test_the_ci_values_pass_every_check(tf):
    variables = [v for v in tf["variable"] if v["__tfmeta"]["label"].startswith("input")]
    assert {v["__tfmeta"]["label"] for v in variables} == {
        "inputs_retention_days",
        "input_buckets",
        "inputs_cors_origins",
    }
    for variable in variables:
        assert variable["description"] and variable["type"], address(variable)
        assert all(c["condition"] is True for c in blocks(variable["validation"]))
