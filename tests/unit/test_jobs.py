from datetime import UTC, datetime

import pytest

from ltxv import schemas
from ltxv.jobs import (
    TERMINAL,
    InvalidTransition,
    State,
    check_transition,
    job_id_for_idempotency_key,
    job_id_for_prompt_line,
    new_job,
    new_job_id,
    to_json,
)
from ltxv.validation import request_hash

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
