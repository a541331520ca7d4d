"""The worker pools, evaluated offline: one per model the API accepts, each pulling its own
subscription per priority lane, filtered on the message's model and lane attributes, and
scaled on those backlogs."""

from __future__ import annotations

import json
import os
import re

import pytest

from ltxv.core.dispatch import subscription_filter
from ltxv.core.profiles import all_profiles
from ltxv.core.resources import worker_lanes
from ltxv.core.settings import Settings

from ..boot_script import boot_script
from .conftest import MODELS, PREFIX, PROJECT, address, evaluate, references

# GCP's naming rule for compute resources (RFC 1035, lower case).
RFC1035 = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
# Declared once per pool and priority lane: keyed MODEL (the default lane) or MODEL/LANE.
LANE_RESOURCES = [
    ("google_pubsub_subscription", "worker"),
    ("google_pubsub_subscription_iam_member", "worker_subscriber"),
    ("google_pubsub_subscription_iam_member", "dead_letter_source_subscriber"),
]
POOL_RESOURCES = [
    ("google_compute_instance_template", "worker"),
    ("google_compute_region_instance_group_manager", "workers"),
    ("google_compute_region_autoscaler", "workers"),
]


def api_settings(tf) -> Settings:
    """The settings the API function runs with (what it accepts), read as the code reads them."""
    (api,) = [f for f in tf["google_cloudfunctions2_function"] if f["name"] == f"{PREFIX}-api"]
    with pytest.MonkeyPatch.context() as patch:
        for name in [n for n in os.environ if n.startswith("LTXV_")]:
            patch.delenv(name)
        for name, value in api["service_config"]["environment_variables"].items():
            patch.setenv(name, value)
        return Settings.from_env()


def by_model(tf, kind: str, name: str) -> dict[str, dict]:
    """model -> instance of a resource declared once per worker pool."""
    found = {}
    for resource in tf.get(kind, []):
        match = re.fullmatch(rf'{kind}\.{name}\["(.+)"\]', address(resource))
        if match:
            found[match.group(1)] = resource
    return found


def lane_key(model: str, lane: str) -> str:
    """How terraform keys a pool's lane (the default lane keeps the model's key)."""
    return model if lane == worker_lanes().default else f"{model}/{lane}"


def test_every_model_the_api_accepts_has_its_own_pool_and_no_other(tf):
    settings = api_settings(tf)
    assert settings.models == MODELS and settings.default_model == MODELS[0]
    for kind, name in POOL_RESOURCES:
        assert set(by_model(tf, kind, name)) == set(settings.models), (kind, name)
    lanes = {lane_key(model, lane) for model in MODELS for lane in worker_lanes().order}
    assert len(lanes) == 3 * len(MODELS)
    for kind, name in LANE_RESOURCES:
        assert set(by_model(tf, kind, name)) == lanes, (kind, name)


def test_each_subscription_is_filtered_exactly_as_the_code_filters(tf):
    # One rule in two languages: terraform's filter must be the string dispatch.py builds,
    # which is also what the worker re-checks (passes_filter) where Pub/Sub does not.
    settings = api_settings(tf)
    subscriptions = by_model(tf, "google_pubsub_subscription", "worker")
    for model in MODELS:
        for lane in worker_lanes().order:
            subscription = subscriptions[lane_key(model, lane)]
            assert subscription["name"] == settings.subscription_for(model, lane)
            assert subscription["filter"] == subscription_filter(
                model, settings.default_model, lane
            )
    # The default lane keeps the name the pool's only subscription had before lanes.
    assert subscriptions["ltx-video-2b"]["name"] == f"{PREFIX}-jobs-worker-ltx-video-2b"
    assert subscriptions["ltx-video-2b/low"]["name"] == f"{PREFIX}-jobs-worker-ltx-video-2b-low"
    assert subscriptions["ltx-video-2b-distilled"]["filter"] == (
        '(attributes.model = "ltx-video-2b-distilled" OR NOT attributes:model)'
        ' AND (attributes.lane = "normal" OR NOT attributes:lane)'
    )
    assert subscriptions["ltx-video-2b/high"]["filter"] == (
        'attributes.model = "ltx-video-2b" AND attributes.lane = "high"'
    )


@pytest.mark.parametrize("lane", worker_lanes().order)
@pytest.mark.parametrize("model", MODELS)
def test_each_subscription_is_exactly_once_with_backoff_and_a_dead_letter_topic(tf, model, lane):
    worker = by_model(tf, "google_pubsub_subscription", "worker")[lane_key(model, lane)]
    assert worker["enable_exactly_once_delivery"] is True
    assert worker["ack_deadline_seconds"] == 60
    assert worker["retry_policy"]["minimum_backoff"] == "10s"
    assert worker["retry_policy"]["maximum_backoff"] == "600s"
    policy = worker["dead_letter_policy"]
    assert policy["max_delivery_attempts"] == 5
    (dead_letter,) = [
        t for t in tf["google_pubsub_topic"] if t["name"] == f"{PREFIX}-jobs-dead-letter"
    ]
    assert policy["dead_letter_topic"] == dead_letter["id"]
    assert worker["expiration_policy"]["ttl"] == ""
    assert ("google_pubsub_topic", "jobs") in references(worker)


@pytest.mark.parametrize("lane", worker_lanes().order)
@pytest.mark.parametrize("model", MODELS)
def test_the_pubsub_agent_may_dead_letter_and_the_workers_may_pull_each_subscription(
    tf, model, lane
):
    topic_members = {address(m): m for m in tf["google_pubsub_topic_iam_member"]}
    agent = topic_members["google_pubsub_topic_iam_member.dead_letter_publisher"]
    assert agent["role"] == "roles/pubsub.publisher"
    assert ("google_pubsub_topic", "dead_letter") in references(agent)
    key = lane_key(model, lane)
    own = ("google_pubsub_subscription", f'worker["{key}"]')
    source = by_model(tf, "google_pubsub_subscription_iam_member", "dead_letter_source_subscriber")
    assert source[key]["role"] == "roles/pubsub.subscriber"
    assert own in references(source[key])
    pull = by_model(tf, "google_pubsub_subscription_iam_member", "worker_subscriber")[key]
    assert pull["role"] == "roles/pubsub.subscriber"
    assert own in references(pull) and ("google_service_account", "worker") in references(pull)


@pytest.mark.parametrize("model", MODELS)
def test_each_template_is_a_private_shielded_l4_that_loads_its_model(tf, model):
    template = by_model(tf, "google_compute_instance_template", "worker")[model]
    assert template["machine_type"].startswith("g2-standard-")
    assert "access_config" not in template["network_interface"]
    shielded = template["shielded_instance_config"]
    assert shielded["enable_vtpm"] and shielded["enable_integrity_monitoring"]
    assert template["scheduling"]["provisioning_model"] == "SPOT"
    assert template["scheduling"]["on_host_maintenance"] == "TERMINATE"
    metadata = template["metadata"]
    startup = boot_script()
    assert metadata["startup-script"] == startup
    # The keys the boot script requires (gpu_worker/vm/README.md), and the pool's model.
    assert {"ltxv-prefix", "ltxv-model", "ltxv-worker-package"} <= set(metadata)
    assert metadata["ltxv-prefix"] == PREFIX and metadata["ltxv-project"] == PROJECT
    assert metadata["ltxv-model"] == model
    assert metadata["ltxv-default-model"] == MODELS[0]
    assert metadata["ltxv-subscription"] == api_settings(tf).subscription_for(model)
    assert ("google_storage_bucket_object", 'package["worker"]') in references(template)
    assert metadata["enable-oslogin"] == "TRUE"
    assert ("google_service_account", "worker") in references(template)
    # Every ltxv-* key terraform sets is one the boot script reads: a key nothing reads is
    # a setting that silently does nothing.
    read = set(re.findall(r"\b(?:attr|cfg CFG_[A-Z_]+) (ltxv-[a-z0-9-]+)", startup))
    assert {key for key in metadata if key.startswith("ltxv-")} - read == set()


@pytest.mark.parametrize("model", MODELS)
def test_each_group_runs_its_template_heals_and_replaces_without_surge(tf, model):
    group = by_model(tf, "google_compute_region_instance_group_manager", "workers")[model]
    assert ("google_compute_instance_template", f'worker["{model}"]') in references(group)
    assert ("google_compute_health_check", "worker") in references(group)  # one, shared
    assert group["auto_healing_policies"]["initial_delay_sec"] >= 600
    assert group["update_policy"]["max_surge_fixed"] == 0


@pytest.mark.parametrize("model", MODELS)
def test_each_autoscaler_follows_its_own_subscription_from_zero(tf, model):
    autoscaler = by_model(tf, "google_compute_region_autoscaler", "workers")[model]
    group = ("google_compute_region_instance_group_manager", f'workers["{model}"]')
    assert group in references(autoscaler)
    policy = autoscaler["autoscaling_policy"]
    assert policy["min_replicas"] == 0
    assert policy["max_replicas"] == 4
    # One signal per lane: a filter may only AND equalities, so no one metric selects a
    # pool's lanes together (workers.tf quotes the docs); the autoscaler takes the largest
    # recommendation of the three.
    metrics = policy["metric"]
    assert [metric["filter"] for metric in metrics] == [
        "resource.type = pubsub_subscription AND "
        f'resource.labels.subscription_id = "{api_settings(tf).subscription_for(model, lane)}"'
        for lane in worker_lanes().order
    ]
    for metric in metrics:
        assert metric["name"] == "pubsub.googleapis.com/subscription/num_undelivered_messages"
        assert metric["single_instance_assignment"] >= 1
        assert " OR " not in metric["filter"] and "(" not in metric["filter"]
    assert len(metrics) <= 5  # the autoscaler's limit of Monitoring signals
    scale_in = policy["scale_in_control"]
    assert scale_in["max_scaled_in_replicas"]["fixed"] == 1 and scale_in["time_window_sec"] >= 600


def test_names_fit_gcp_limits_with_the_longest_prefix_and_every_profile(tmp_path):
    # The longest prefix variables.tf allows, and every model profile there is (the longest
    # first, so that it is the default and has the longer filter).
    models = sorted(all_profiles(), key=len, reverse=True)
    prefix = "ltxv-a0123456789"
    assert len(prefix) == 16
    var_file = tmp_path / "long.tfvars"
    var_file.write_text(
        f'project_id = "{PROJECT}"\nprefix = "{prefix}"\nmodels = {json.dumps(models)}\n'
    )
    tf = evaluate(var_file)

    templates = by_model(tf, "google_compute_instance_template", "worker")
    groups = by_model(tf, "google_compute_region_instance_group_manager", "workers")
    autoscalers = by_model(tf, "google_compute_region_autoscaler", "workers")
    subscriptions = by_model(tf, "google_pubsub_subscription", "worker")
    assert set(templates) == set(groups) == set(autoscalers) == set(models)
    lanes = worker_lanes().order
    assert set(subscriptions) == {lane_key(model, lane) for model in models for lane in lanes}
    for model in models:
        # Up to 37 characters the provider appends a full timestamp and counter; longer
        # prefixes get a shorter, collision-prone suffix (provider docs, name_prefix).
        name_prefix = templates[model]["name_prefix"]
        assert len(name_prefix) <= 37 and RFC1035.fullmatch(name_prefix + "x"), name_prefix
        for name in (groups[model]["name"], autoscalers[model]["name"]):
            assert len(name) <= 63 and RFC1035.fullmatch(name), name
        # Instances are named BASE-xxxx, and an instance name has at most 63 characters.
        base = groups[model]["base_instance_name"]
        assert len(base) <= 58 and RFC1035.fullmatch(base), base
        for lane in lanes:
            subscription = subscriptions[lane_key(model, lane)]
            assert re.fullmatch(r"[A-Za-z][-A-Za-z0-9_.~+%]{2,254}", subscription["name"])
            assert len(subscription["filter"].encode()) <= 256  # Pub/Sub's limit
    # No model's lane subscription is another model's ("x-high" vs model x's high lane).
    names = [s["name"] for s in subscriptions.values()]
    assert len(set(names)) == len(names)
    # Each pool's compute names are its own.
    for resources in (templates, groups, autoscalers):
        names = [r.get("name_prefix") or r["name"] for r in resources.values()]
        assert len(set(names)) == len(models), names
