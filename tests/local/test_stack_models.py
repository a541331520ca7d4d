"""The local stack with several models: a worker and a filtered subscription for each model
the API accepts, as terraform deploys a pool per model."""

from __future__ import annotations

import contextlib
import dataclasses
import time
import uuid

import pytest
from google.api_core import exceptions as gexc

from ltxv.core.dispatch import subscription_filter
from ltxv.core.profiles import enabled_profiles
from ltxv.core.resources import WorkerDelivery, worker_delivery
from ltxv.core.settings import Settings
from ltxv.local.components import EMULATORS
from ltxv.local.stack import LocalStack, StartupFailed

TWO_MODELS = {"default_model": "tiny-random", "enabled_models": ("tiny-random", "ltx-video-2b")}


def _delivery(subscription) -> WorkerDelivery:
    """What a subscription the emulator hands back says, in schemas/resources.json's terms."""
    retry = subscription.retry_policy
    return WorkerDelivery(
        ack_deadline_seconds=subscription.ack_deadline_seconds,
        max_delivery_attempts=subscription.dead_letter_policy.max_delivery_attempts,
        minimum_backoff_seconds=int(retry.minimum_backoff.total_seconds()),
        maximum_backoff_seconds=int(retry.maximum_backoff.total_seconds()),
        enable_exactly_once_delivery=subscription.enable_exactly_once_delivery,
    )


def _workers(stack: LocalStack) -> dict:
    return {name: spec for name, spec in stack.specs.items() if name.startswith("worker")}


def test_each_model_the_api_accepts_has_its_own_worker(tmp_path):
    settings = Settings(project="ltxv-test", prefix="ltxv", **TWO_MODELS)
    stack = LocalStack(tmp_path, settings=settings, echo=None)

    workers = _workers(stack)
    assert list(workers) == ["worker", "worker-ltx-video-2b"]
    envs = {name: spec.env(stack) for name, spec in workers.items()}
    assert {name: env["LTXV_WORKER_MODEL"] for name, env in envs.items()} == {
        "worker": "tiny-random",
        "worker-ltx-video-2b": "ltx-video-2b",
    }
    assert envs["worker"]["LTXV_SUBSCRIPTION"] == "ltxv-jobs-worker-tiny-random"
    assert envs["worker-ltx-video-2b"]["LTXV_SUBSCRIPTION"] == "ltxv-jobs-worker-ltx-video-2b"
    assert envs["worker-ltx-video-2b"]["LTXV_MODEL_DIR"] == str(
        stack.state_dir / "models" / "ltx-video-2b"
    )
    assert [spec.child_pidfile for spec in workers.values()] == [
        "worker.pid",
        "worker-ltx-video-2b.pid",
    ]
    assert stack.log_file("worker-ltx-video-2b").name == "worker-ltx-video-2b.log"
    # Only the default model's worker must come up; another model may not load here.
    assert workers["worker"].required and not workers["worker-ltx-video-2b"].required

    # The API accepts exactly the models that have a worker (the same list), and every
    # worker agrees on the default.
    api = stack.specs["api"].env(stack)
    accepted = enabled_profiles(api["LTXV_DEFAULT_MODEL"], tuple(api["LTXV_MODELS"].split(",")))
    assert set(accepted) == {env["LTXV_WORKER_MODEL"] for env in envs.values()}
    assert {env["LTXV_DEFAULT_MODEL"] for env in envs.values()} == {"tiny-random"}
    # Each prices its jobs' usage as a deployed pool would (LTXV_GPU_HOUR_USD).
    assert {env["LTXV_GPU_HOUR_USD"] for env in envs.values()} == {str(settings.gpu_hour_usd)}

    # One model: one worker, still `worker` (.local/worker.pid, as the README says).
    single = LocalStack(tmp_path / "one", settings=Settings(), echo=None)
    assert list(_workers(single)) == ["worker"]


@pytest.mark.emulators
def test_each_model_gets_a_subscription_filtered_on_it(emulators, tmp_path):
    # A prefix of its own on the session's emulator, so no other test sees these.
    settings = Settings(project=emulators.project, prefix=f"m{uuid.uuid4().hex[:8]}", **TWO_MODELS)
    stack = LocalStack(tmp_path, ports=emulators.stack.ports, settings=settings, echo=None)
    stack.create_pubsub_resources()
    with stack.pubsub_clients() as (publisher, subscriber):
        try:
            for model in settings.models:
                path = subscriber.subscription_path(
                    settings.project, settings.subscription_for(model)
                )
                subscription = subscriber.get_subscription(subscription=path)
                assert subscription.topic == publisher.topic_path(settings.project, settings.topic)
                assert subscription.filter == subscription_filter(model, "tiny-random")
                assert subscription.enable_exactly_once_delivery
                assert subscription.dead_letter_policy.max_delivery_attempts == 5
                # As terraform delivers: the one table both read (tests/terraform too).
                assert _delivery(subscription) == worker_delivery()
                assert subscription.dead_letter_policy.dead_letter_topic == (
                    publisher.topic_path(settings.project, settings.dead_letter_topic)
                )
        finally:
            project = f"projects/{settings.project}"
            for sub in subscriber.list_subscriptions(request={"project": project}):
                if sub.name.rsplit("/", 1)[-1].startswith(settings.prefix + "-"):
                    subscriber.delete_subscription(subscription=sub.name)
            for topic in publisher.list_topics(request={"project": project}):
                if topic.name.rsplit("/", 1)[-1].startswith(settings.prefix + "-"):
                    publisher.delete_topic(topic=topic.name)


@pytest.fixture
def no_hub(monkeypatch):
    # Nothing reaches the hub here: fail at once, as a machine without the weights would.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def _session_stack(emulators, lines: list[str], **models) -> LocalStack:
    """The session's stack directory and emulators, with other models enabled."""
    settings = dataclasses.replace(emulators.settings, **models)
    return LocalStack(
        emulators.state_dir, ports=emulators.stack.ports, settings=settings, echo=lines.append
    )


def _drop_subscription(stack: LocalStack, model: str) -> None:
    with stack.pubsub_clients() as (_, subscriber), contextlib.suppress(gexc.NotFound):
        name = stack.settings.subscription_for(model)
        subscriber.delete_subscription(
            subscription=subscriber.subscription_path(stack.project, name)
        )


@pytest.mark.emulators
@pytest.mark.timeout(120)
def test_a_worker_whose_model_cannot_load_is_reported_and_the_rest_runs(emulators, no_hub):
    lines: list[str] = []
    stack = _session_stack(emulators, lines, **TWO_MODELS)
    try:
        pids = stack.up(["worker-ltx-video-2b"])
    finally:
        stack.down(["worker-ltx-video-2b"])
        _drop_subscription(stack, "ltx-video-2b")

    assert pids["worker-ltx-video-2b"] is None and all(pids[name] for name in EMULATORS)
    (report,) = [line for line in lines if "NOT READY" in line]
    assert "worker-ltx-video-2b exited before loading ltx-video-2b" in report
    assert "jobs for ltx-video-2b stay queued" in report
    assert "stopped: start it again with `ltxv dev up --components worker-ltx-video-2b`" in report
    # Stopped rather than left to restart forever, and the log says why it failed.
    assert not stack.pid_file("worker-ltx-video-2b").exists()
    assert "Cannot load model" in stack.log_file("worker-ltx-video-2b").read_text()


@pytest.mark.emulators
@pytest.mark.timeout(120)
def test_a_default_worker_that_cannot_load_fails_up_without_waiting_out_the_timeout(
    emulators, no_hub
):
    stack = _session_stack(emulators, [], default_model="ltx-video-2b")
    started = time.monotonic()
    try:
        with pytest.raises(StartupFailed, match="worker exited before loading ltx-video-2b"):
            stack.up(["worker"])
    finally:
        stack.down(["worker"])
        _drop_subscription(stack, "ltx-video-2b")
    assert time.monotonic() - started < stack.timeout
    assert stack.pid("worker") is None


@pytest.mark.emulators
@pytest.mark.timeout(120)
def test_down_still_stops_the_worker_of_a_model_no_longer_enabled(emulators):
    # Started with two models (the default one a model that cannot load here, so the other
    # worker is tiny-random's), then addressed by a stack with the plain settings, as a
    # later `make down` without LTXV_MODELS is.
    both = {"default_model": "ltx-video-2b", "enabled_models": ("ltx-video-2b", "tiny-random")}
    stack = _session_stack(emulators, [], **both)
    try:
        pid = stack.up(["worker-tiny-random"])["worker-tiny-random"]
        assert pid
        plain = _session_stack(emulators, [])
        assert "worker-tiny-random" not in plain.components  # `up` would not start it
        assert plain.status()["worker-tiny-random"] == pid
        plain.down(["worker-tiny-random"])
        assert stack.pid("worker-tiny-random") is None
    finally:
        stack.down(["worker-tiny-random"])
        _drop_subscription(stack, "ltx-video-2b")
