"""Least privilege for builds and URL signing; operator SSH, GPU quota requests and alert
emails, each only when asked for (issue 13, findings 8 and 10)."""

from __future__ import annotations

from ..boot_script import boot_script
from .conftest import PREFIX, PROJECT, address, by_address, evaluate_with
from .graph import local_expression

BUILD_SA = f"serviceAccount:{PREFIX}-build@{PROJECT}.iam.gserviceaccount.com"
API_SA = f"serviceAccount:{PREFIX}-api@{PROJECT}.iam.gserviceaccount.com"


def _points_to(tf, value, kind: str) -> bool:
    """Whether an evaluated value refers to a resource of `kind` (tfparse puts the
    referenced block's id where the provider's value would be)."""
    ids = {r["id"] for r in tf.get(kind, [])}
    return any(i in str(value) for i in ids) or kind in str(value)


def _all_roles(tf) -> list[tuple[str, str, str]]:
    """(resource type, role, member) of every IAM member binding."""
    return [
        (kind, r.get("role"), r.get("member"))
        for kind, resources in tf.items()
        if kind.endswith("_iam_member")
        for r in resources
    ]


def test_the_build_account_holds_logs_at_project_level_and_pushes_to_one_repository(tf):
    unconditional = [r for r in tf["google_project_iam_member"] if not r.get("condition")]
    project = {(str(r["role"]), r["member"]) for r in unconditional}
    assert {role for role, member in project if member == BUILD_SA} == {"roles/logging.logWriter"}
    # Read on Cloud Functions' own source bucket of the region, by condition.
    sources = by_address(tf, "google_project_iam_member")[
        "google_project_iam_member.build_reads_function_sources"
    ]
    assert (sources["role"], sources["member"]) == ("roles/storage.objectViewer", BUILD_SA)
    # The bucket (and its objects) only, not every bucket whose name starts the same.
    assert sources["condition"]["expression"] == (
        'resource.name == "${local.function_sources_bucket}"'
        ' || resource.name.startsWith("${local.function_sources_bucket}/")'
    )
    assert local_expression("function_sources_bucket") == (
        "projects/_/buckets/gcf-v2-sources-${data.google_project.this.number}-${var.region}"
    )
    (push,) = tf["google_artifact_registry_repository_iam_member"]
    assert (push["role"], push["member"]) == ("roles/artifactregistry.writer", BUILD_SA)
    (repo,) = tf["google_artifact_registry_repository"]
    assert repo["repository_id"] == f"{PREFIX}-functions"
    assert repo["format"] == "DOCKER"
    # Every function builds into that repository, with the build account.
    for function in tf["google_cloudfunctions2_function"]:
        build = function["build_config"]
        assert _points_to(tf, build["docker_repository"], "google_artifact_registry_repository")
        assert _points_to(tf, build["service_account"], "google_service_account")


def test_no_broad_role_is_granted_anywhere(tf):
    broad = {
        "roles/cloudbuild.builds.builder",  # runs builds that may publish anywhere
        "roles/iam.serviceAccountTokenCreator",  # tokens, ID tokens and signJwt
        "roles/owner",
        "roles/editor",
    }
    assert not [g for g in _all_roles(tf) if isinstance(g[1], str) and g[1] in broad]


def test_the_api_may_sign_blobs_as_itself_and_nothing_more(tf):
    roles = by_address(tf, "google_project_iam_custom_role")
    role = roles["google_project_iam_custom_role.sign_blob"]
    assert role["permissions"] == ["iam.serviceAccounts.signBlob"]
    assert role["role_id"].startswith(f"{PREFIX.replace('-', '_')}_sign_blob_")
    signs = by_address(tf, "google_service_account_iam_member")[
        "google_service_account_iam_member.api_signs_as_itself"
    ]
    assert signs["member"] == API_SA
    assert _points_to(tf, signs["role"], "google_project_iam_custom_role")


def test_nothing_optional_is_created_by_default(tf):
    assert not tf.get("google_cloud_quotas_quota_preference")
    assert not tf.get("google_monitoring_notification_channel")
    operators = [r for r in tf["google_project_iam_member"] if "operators" in address(r)]
    assert not operators


def test_operators_get_iap_tunnel_os_login_and_the_worker_account(tmp_path):
    tf = evaluate_with(tmp_path, operators=["user:alice@example.com", "group:oncall@example.com"])
    granted = {
        (r["member"], r["role"])
        for r in tf["google_project_iam_member"]
        if "operators" in address(r)
    }
    assert granted == {
        (member, role)
        for member in ("user:alice@example.com", "group:oncall@example.com")
        for role in ("roles/iap.tunnelResourceAccessor", "roles/compute.osLogin")
    }
    act_as = [
        r
        for r in tf["google_service_account_iam_member"]
        if "operators_act_as_worker" in address(r)
    ]
    assert {(r["member"], r["role"]) for r in act_as} == {
        ("user:alice@example.com", "roles/iam.serviceAccountUser"),
        ("group:oncall@example.com", "roles/iam.serviceAccountUser"),
    }
    assert all(_points_to(tf, r["service_account_id"], "google_service_account") for r in act_as)


def test_quota_requests_follow_the_provisioning_model(tmp_path):
    request = {"gpus": 4, "contact_email": "ops@example.com"}
    for spot, regional in (
        (True, "PREEMPTIBLE-NVIDIA-L4-GPUS-per-project-region"),
        (False, "NVIDIA-L4-GPUS-per-project-region"),
    ):
        tf = evaluate_with(tmp_path, gpu_quota_request=request, worker_spot=spot)
        quotas = {q["quota_id"]: q for q in tf["google_cloud_quotas_quota_preference"]}
        assert set(quotas) == {regional, "GPUS-ALL-REGIONS-per-project"}
        assert quotas[regional]["dimensions"] == {"region": "us-central1"}
        for quota in quotas.values():
            assert quota["service"] == "compute.googleapis.com"
            assert quota["parent"] == f"projects/{PROJECT}"
            assert quota["quota_config"]["preferred_value"] == 4
            assert quota["contact_email"] == "ops@example.com"


def test_alert_emails_become_channels_every_alert_notifies(tmp_path):
    tf = evaluate_with(tmp_path, alert_emails=["oncall@example.com"])
    (channel,) = tf["google_monitoring_notification_channel"]
    assert channel["type"] == "email"
    assert channel["labels"] == {"email_address": "oncall@example.com"}
    for policy in tf["google_monitoring_alert_policy"]:
        assert _points_to(
            tf, policy["notification_channels"], "google_monitoring_notification_channel"
        )


def test_a_failing_boot_alerts_on_the_line_the_boot_script_writes(tf):
    policies = by_address(tf, "google_monitoring_alert_policy")
    boot = policies["google_monitoring_alert_policy.worker_boot_failures"]
    match = boot["conditions"]["condition_matched_log"]
    assert '"ltxv-startup: ERROR"' in match["filter"]
    assert boot["alert_strategy"]["notification_rate_limit"]["period"]
    # No log-based metric: one created in the same apply is not found for minutes.
    assert not tf.get("google_logging_metric")
    startup = boot_script()
    assert 'echo "ltxv-startup: ${level}: $*"' in startup and "log ERROR" in startup
    # Only a failed boot logs ERROR: what the boot survives is a warning.
    assert "log ERROR" not in startup.split("install_ops_agent() {", 1)[1].split("\n}\n", 1)[0]


def test_workers_may_read_instance_groups_and_nothing_else_of_compute(tf):
    roles = by_address(tf, "google_project_iam_custom_role")
    read = roles["google_project_iam_custom_role.read_instance_groups"]
    assert read["permissions"] == [
        "compute.instanceGroupManagers.get",
        "compute.instanceGroupManagers.list",
    ]
    grant = by_address(tf, "google_project_iam_member")[
        "google_project_iam_member.worker_reads_instance_groups"
    ]
    assert grant["member"] == f"serviceAccount:{PREFIX}-worker@{PROJECT}.iam.gserviceaccount.com"
    assert _points_to(tf, grant["role"], "google_project_iam_custom_role")
