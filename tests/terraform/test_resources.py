"""One table, `schemas/resources.json`, names the deployment's resources and says how Pub/Sub
delivers jobs to the workers: terraform reads it, and so does the code (`ltxv.core.resources`,
behind Settings' names and the local stack's subscriptions; tests/local/test_stack_models.py
reads the local stack's subscriptions back from the emulator)."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
from pathlib import Path

from ltxv.core import resources
from ltxv.core.resources import WorkerDelivery, worker_delivery, worker_lanes
from ltxv.core.settings import Settings

from .conftest import MODELS, PREFIX, ROOT, TERRAFORM, VARS, address, evaluate_with

# Every name and every value unlike the committed table's, to tell reading from agreeing.
ALTERED = {
    "names": {
        kind: pattern.replace("{prefix}", "{prefix}-alt")
        for kind, pattern in resources.table()["names"].items()
    },
    "worker_subscription": {
        "ack_deadline_seconds": 45,
        "max_delivery_attempts": 7,
        "minimum_backoff_seconds": 3,
        "maximum_backoff_seconds": 300,
        "enable_exactly_once_delivery": False,
    },
    "worker_lanes": {
        **resources.table()["worker_lanes"],
        "subscription_suffix": {"high": "-urgent", "normal": "", "low": "-batch"},
    },
}
KINDS = {"bucket": "google_storage_bucket", "subscription": "google_pubsub_subscription"}


def _declared(tf, kind: str) -> set[str]:
    """The names terraform gives to resources of a kind of the table (`..._bucket`, ...)."""
    resource = KINDS.get(kind.rsplit("_", 1)[-1], "google_pubsub_topic")
    return {r["name"] for r in tf[resource]}


def _worker_subscriptions(tf) -> dict[str, dict]:
    return {
        re.fullmatch(r'.*\.worker\["(.+)"\]', address(s)).group(1): s
        for s in tf["google_pubsub_subscription"]
        if address(s).startswith("google_pubsub_subscription.worker[")
    }


def _delivery(subscription: dict) -> WorkerDelivery:
    """What a terraform worker subscription says, in the table's terms."""
    retry = subscription["retry_policy"]
    backoff = {k: int(retry[k].removesuffix("s")) for k in ("minimum_backoff", "maximum_backoff")}
    return WorkerDelivery(
        ack_deadline_seconds=subscription["ack_deadline_seconds"],
        max_delivery_attempts=subscription["dead_letter_policy"]["max_delivery_attempts"],
        minimum_backoff_seconds=backoff["minimum_backoff"],
        maximum_backoff_seconds=backoff["maximum_backoff"],
        enable_exactly_once_delivery=subscription["enable_exactly_once_delivery"],
    )


def _evaluate_with_table(tmp_path: Path, table: dict) -> dict:
    """The configuration evaluated beside another schemas/resources.json."""
    import tfparse

    shutil.copytree(TERRAFORM, tmp_path / "terraform")
    (tmp_path / "schemas").mkdir()
    (tmp_path / "schemas" / resources.RESOURCES_FILE).write_text(json.dumps(table))
    for folder in ("gpu_worker", "tools"):  # what the configuration reads besides
        (tmp_path / folder).symlink_to(ROOT / folder)
    module = tmp_path / "terraform"
    return tfparse.load_from_path(module, vars_paths=[os.path.relpath(VARS, module)])


def test_terraform_names_each_resource_as_the_table_does(tf):
    for kind in resources.table()["names"]:
        expected = {resources.name(kind, PREFIX, model=model) for model in MODELS}
        assert expected <= _declared(tf, kind), kind


def test_terraform_delivers_to_each_pool_as_the_table_says(tf):
    subscriptions = _worker_subscriptions(tf)
    lanes = worker_lanes()
    assert set(subscriptions) == {
        model if lane == lanes.default else f"{model}/{lane}"
        for model in MODELS
        for lane in lanes.order
    }
    for subscription in subscriptions.values():
        assert _delivery(subscription) == worker_delivery()


def test_terraform_reads_the_table_rather_than_repeating_it(tmp_path):
    tf = _evaluate_with_table(tmp_path, ALTERED)
    for kind, pattern in ALTERED["names"].items():
        expected = {pattern.format(prefix=PREFIX, model=model) for model in MODELS}
        assert expected <= _declared(tf, kind), kind
    altered = WorkerDelivery(**ALTERED["worker_subscription"])
    for subscription in _worker_subscriptions(tf).values():
        assert _delivery(subscription) == altered
    pool = ALTERED["names"]["worker_subscription"].format(prefix=PREFIX, model=MODELS[1])
    assert _worker_subscriptions(tf)[f"{MODELS[1]}/low"]["name"] == f"{pool}-batch"


def test_a_deployment_may_override_the_ack_deadline_and_the_attempts(tmp_path):
    tf = evaluate_with(tmp_path, max_delivery_attempts=9, worker_ack_deadline_seconds=120)
    overridden = dataclasses.replace(
        worker_delivery(), max_delivery_attempts=9, ack_deadline_seconds=120
    )
    for subscription in _worker_subscriptions(tf).values():
        assert _delivery(subscription) == overridden


def test_the_table_is_within_pubsubs_limits():
    policy = worker_delivery()
    assert 10 <= policy.ack_deadline_seconds <= 600
    assert 5 <= policy.max_delivery_attempts <= 100
    assert 0 <= policy.minimum_backoff_seconds <= policy.maximum_backoff_seconds <= 600
    # Workers claim a job once (lifecycle.py) and acknowledge it exactly once.
    assert policy.enable_exactly_once_delivery is True


def test_settings_name_resources_from_the_table(monkeypatch):
    monkeypatch.setattr(resources, "table", lambda: ALTERED)
    settings = Settings(prefix="p", default_model="m")
    assert settings.topic == "p-alt-jobs"
    assert settings.subscription == settings.subscription_for("m") == "p-alt-jobs-worker-m"
    assert settings.dead_letter_topic == "p-alt-jobs-dead-letter"
    assert settings.sweep_topic == "p-alt-sweep"
    assert (settings.prompts, settings.outputs) == ("p-alt-prompts", "p-alt-outputs")
    assert (settings.model_cache, settings.function_source) == (
        "p-alt-model-cache",
        "p-alt-function-source",
    )
