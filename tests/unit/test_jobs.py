from datetime import UTC, datetime, timedelta

import pytest

from ltxv.core import schemas
from ltxv.core.jobs import (
    TERMINAL,
    TRANSITIONS,
    DeliveryAttempt,
    InvalidTransition,
    Job,
    RunningRecord,
    State,
    WebhookRecord,
    check_transition,
    job_id_for_idempotency_key,
    job_id_for_prompt_line,
    lease_end,
    new_job,
    new_job_id,
    to_json,
    transition,
)
from ltxv.intake.validation import request_hash

REQUEST = {
    "prompt": "a cat",
    "negative_prompt": "",
    "seed": 1,
    "height": 64,
    "width": 96,
    "num_frames": 9,
    "num_inference_steps": 3,
    "fps": 8,
    "gcs_destination": None,
    "webhook_url": "https://hooks.example.com/x",
    "metadata": {"a": 1},
    "model": "tiny-random",
}


def test_allowed_transitions_follow_the_contract():
    check_transition("queued", "running")
    check_transition("queued", "canceled")
    check_transition("running", "queued")  # lost worker
    check_transition("queued", "failed")  # dead-lettered before a worker finished it
    for terminal in TERMINAL:
        check_transition("running", terminal)
        for target in State:
            with pytest.raises(InvalidTransition):
                check_transition(terminal, target)
    with pytest.raises(InvalidTransition):
        check_transition("queued", "succeeded")


NOW = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)
LEASE = {"owner": "worker-1", "expires_at": NOW + timedelta(seconds=120)}


def test_a_transition_writes_the_state_when_it_entered_it_and_the_fields():
    moves = [(current, target) for current in State for target in TRANSITIONS[current]]
    assert len(moves) == 8  # queued: 3; running: 5 (another worker taking over included)
    for current, target in moves:
        job = {"state": current.value, "lease": LEASE if current == State.RUNNING else None}
        changes = transition(job, target, NOW, attempts=2)
        assert changes["state"] == target.value and changes["attempts"] == 2
        assert changes[f"state_times.{target.value}"] == NOW
        # Only a running job holds a lease: every other state is written without one.
        if target == State.RUNNING:
            assert "lease" not in changes
        else:
            assert changes["lease"] is None


def test_a_transition_into_running_takes_the_lease_it_is_given():
    queued = {"state": "queued", "lease": None}
    changes = transition(queued, State.RUNNING, NOW, lease=LEASE)
    assert changes == {"state": "running", "state_times.running": NOW, "lease": LEASE}
    running = {"state": "running", "lease": LEASE}
    assert transition(running, State.QUEUED, NOW) == {
        "state": "queued",
        "state_times.queued": NOW,
        "lease": None,
    }


def test_a_transition_the_contract_does_not_allow_is_refused():
    for terminal in TERMINAL:
        for target in State:
            with pytest.raises(InvalidTransition, match=f"a {terminal} job cannot become"):
                transition({"state": terminal.value}, target, NOW)
    for target in (State.QUEUED, State.SUCCEEDED):
        with pytest.raises(InvalidTransition):
            transition({"state": "queued"}, target, NOW)


def test_a_lease_is_live_only_on_a_running_job_until_it_ends():
    later = NOW + timedelta(seconds=120)
    assert lease_end({"state": "running", "lease": LEASE}, NOW) == later
    assert lease_end({"state": "running", "lease": LEASE}, later) is None  # ran out
    assert lease_end({"state": "running", "lease": None}, NOW) is None
    assert lease_end({"state": "queued", "lease": LEASE}, NOW) is None


def test_the_job_document_type_names_the_schemas_fields():
    schema = schemas.load("job")
    # API answers add them.
    shown_only = {"video_url", "poster_url", "download_url", "extended_url", "queue"}
    assert set(Job.__annotations__) == set(schema["properties"]) - shown_only
    assert Job.__required_keys__ == set(schema["required"])
    for kind, part in [
        (WebhookRecord, schema["$defs"]["webhook_record"]),
        (RunningRecord, schema["$defs"]["running_record"]),
        (DeliveryAttempt, schema["$defs"]["delivery_attempt"]),
    ]:
        assert set(kind.__annotations__) == set(part["properties"])
        assert kind.__required_keys__ == set(part["required"])


def test_ids_are_stable_per_key_and_per_prompt_line():
    assert job_id_for_idempotency_key("k1", "abc") == job_id_for_idempotency_key("k1", "abc")
    assert job_id_for_idempotency_key("k1", "abc") != job_id_for_idempotency_key("k2", "abc")
    a = job_id_for_prompt_line("b", "incoming/x.jsonl", "17", 1)
    assert a == job_id_for_prompt_line("b", "incoming/x.jsonl", "17", 1)
    assert a != job_id_for_prompt_line("b", "incoming/x.jsonl", "18", 1)
    assert a != job_id_for_prompt_line("b", "incoming/x.jsonl", "17", 2)
    assert new_job_id() != new_job_id()


def test_a_new_job_document_matches_the_job_schema():
    now = datetime(2026, 11, 23, 10, 0, 0, 123456, tzinfo=UTC)
    job = new_job(
        job_id=new_job_id(),
        request=REQUEST,
        request_hash=request_hash(REQUEST),
        api_key_id="default",
        idempotency_key="k",
        now=now,
    )
    document = to_json(job)
    schemas.validator("job").validate(document)
    assert document["state"] == "queued"
    assert document["created_at"] == "2026-11-23T10:00:00.123456Z"
    assert document["webhook"]["url"] == REQUEST["webhook_url"]
    assert document["expires_at"].startswith("2026-12-23")


def test_request_hash_ignores_key_order():
    assert request_hash(dict(reversed(list(REQUEST.items())))) == request_hash(REQUEST)


def test_a_stored_number_json_cannot_spell_is_shown_as_null():
    """Documents stored before validation refused 1e999 must not break every answer."""
    import json

    body = to_json({"metadata": {"far": float("inf"), "nan": float("nan"), "ok": 1.5}})
    assert body == {"metadata": {"far": None, "nan": None, "ok": 1.5}}
    json.dumps(body, allow_nan=False)
