"""Prompt files under incoming/: CloudEvents through functions-framework, emulators behind."""

from __future__ import annotations

import json

import pytest
from cloudevents.conversion import to_binary
from cloudevents.http import CloudEvent
from functions_framework import create_app
from google.cloud import storage

from ltxv.core import schemas

from .conftest import SUBMIT_SOURCE, prompt_files, pull_job_ids

pytestmark = pytest.mark.emulators

GOOD = [
    {"prompt": "a red fox in snow"},
    {"prompt": "waves at dusk", "seed": 3, "num_frames": 17},
    {"prompt": "a city at night", "height": 128, "width": 128},
]


@pytest.fixture
def prompt_client(env):
    return create_app(
        target="prompt_file", source=SUBMIT_SOURCE, signature_type="cloudevent"
    ).test_client()


def upload(settings, name: str, payload: bytes) -> storage.Blob:
    blob = storage.Client(project=settings.project).bucket(settings.prompts).blob(name)
    blob.upload_from_string(payload, content_type="application/octet-stream")
    blob.reload()
    return blob


def deliver(client, blob: storage.Blob, event_id: str = "1"):
    """Send the event Eventarc sends for a finalized object, in binary content mode."""
    data = {
        "bucket": blob.bucket.name,
        "name": blob.name,
        "generation": str(blob.generation),
        "size": str(blob.size),
        "contentType": blob.content_type,
    }
    event = CloudEvent(
        {
            "id": event_id,
            "source": f"//storage.googleapis.com/projects/_/buckets/{blob.bucket.name}",
            "type": "google.cloud.storage.object.v1.finalized",
            "subject": f"objects/{blob.name}",
        },
        data,
    )
    headers, body = to_binary(event)
    response = client.post("/", headers=headers, data=body)
    assert response.status_code == 200, response.get_data(as_text=True)


def receipt(settings, name: str) -> dict:
    bucket = storage.Client(project=settings.project).bucket(settings.prompts)
    text = bucket.blob(name).download_as_text()
    document = json.loads(text)
    schemas.validator("receipt").validate(document)
    return document


def test_jsonl_with_three_good_lines_and_one_bad_yields_three_jobs_and_a_receipt(
    prompt_client, settings, service
):
    lines = [json.dumps(GOOD[0]), json.dumps(GOOD[1]), "", '{"prompt": "x", "height": 100}']
    lines.append(json.dumps(GOOD[2]))
    blob = upload(settings, "incoming/batch.jsonl", "\n".join(lines).encode())
    deliver(prompt_client, blob)

    result = receipt(settings, "receipts/batch.jsonl.json")
    assert [entry["line"] for entry in result["accepted"]] == [1, 2, 5]
    assert result["rejected"] == [
        {"line": 4, "errors": [{"path": "$.height", "message": "must be divisible by 32"}]}
    ]
    assert result["error"] is None and result["generation"] == str(blob.generation)
    job_ids = [entry["job_id"] for entry in result["accepted"]]
    assert sorted(pull_job_ids(settings)) == sorted(job_ids)
    for line, job_id in zip((1, 2, 5), job_ids, strict=True):
        job = service.store.get(job_id)
        assert job["state"] == "queued" and job["published"] is True
        assert job["source"] == f"gs://{settings.prompts}/incoming/batch.jsonl"
        assert job["source_line"] == line and job["api_key_id"] == "default"


def test_a_redelivered_event_creates_no_second_job(prompt_client, settings, service):
    blob = upload(settings, "incoming/twice.jsonl", b'{"prompt": "once"}\n{"prompt": "only once"}')
    deliver(prompt_client, blob, event_id="a")
    deliver(prompt_client, blob, event_id="b")
    jobs = list(service.firestore.collection("jobs").stream())
    assert len(jobs) == 2
    first = pull_job_ids(settings)
    assert sorted(first) == sorted(job.id for job in jobs)  # published once each


def test_a_new_upload_under_the_same_name_is_new_jobs(prompt_client, settings, service):
    deliver(prompt_client, upload(settings, "incoming/again.json", b'{"prompt": "one"}'))
    deliver(prompt_client, upload(settings, "incoming/again.json", b'{"prompt": "one"}'))
    assert len(list(service.firestore.collection("jobs").stream())) == 2


def test_a_json_file_is_one_job(prompt_client, settings):
    blob = upload(settings, "incoming/single.json", json.dumps(GOOD[0], indent=2).encode())
    deliver(prompt_client, blob)
    result = receipt(settings, "receipts/single.json.json")
    assert len(result["accepted"]) == 1 and result["accepted"][0]["line"] == 1


@pytest.mark.parametrize(
    ("name", "payload", "code"),
    [
        ("incoming/empty.jsonl", b"", "empty"),
        ("incoming/blank.json", b"  \n ", "empty"),
        ("incoming/broken.json", b"{nope", "invalid_json"),
        ("incoming/list.json", b'[{"prompt": "a"}]', "not_an_object"),
        ("incoming/binary.jsonl", b"\xff\xfe\x00", "not_utf8"),
        ("incoming/notes.txt", b"hello", "unsupported_type"),
    ],
)
def test_unreadable_files_get_a_receipt_saying_why(prompt_client, settings, name, payload, code):
    deliver(prompt_client, upload(settings, name, payload))
    result = receipt(settings, "receipts/" + name.removeprefix("incoming/") + ".json")
    assert result["error"]["code"] == code and result["error"]["message"]
    assert result["accepted"] == []


def test_lines_that_are_not_json_or_not_objects_are_rejected_by_line(prompt_client, settings):
    payload = b'{"prompt": "fine"}\nnot json\n[1]\n{"prompt": "also fine", "model": "nope"}'
    deliver(prompt_client, upload(settings, "incoming/mixed.jsonl", payload))
    result = receipt(settings, "receipts/mixed.jsonl.json")
    assert [entry["line"] for entry in result["accepted"]] == [1]
    rejected = {entry["line"]: entry["errors"] for entry in result["rejected"]}
    assert rejected[2][0]["path"] == "$" and "not valid JSON" in rejected[2][0]["message"]
    assert rejected[3] == [{"path": "$", "message": "request body must be a JSON object"}]
    assert rejected[4][0]["path"] == "$.model"


def test_objects_outside_incoming_are_ignored(prompt_client, settings, service):
    deliver(prompt_client, upload(settings, "receipts/someone.json", b'{"prompt": "x"}'))
    deliver(prompt_client, upload(settings, "elsewhere/a.json", b'{"prompt": "x"}'))
    assert list(service.firestore.collection("jobs").stream()) == []


def test_a_poison_line_is_that_lines_rejection_and_the_lines_after_it_become_jobs(
    prompt_client, settings, service
):
    lines = [
        json.dumps(GOOD[0]),
        '{"prompt": "huge", "seed": ' + "9" * 4400 + "}",  # int() refuses past 4300 digits
        '{"prompt": "big", "metadata": {"n": 18446744073709551616}}',  # over 2^63
        '{"prompt": "reserved", "metadata": {"__x__": 1}}',  # Firestore's own key form
        '{"prompt": "far", "metadata": {"x": 1e999}}',
        json.dumps({"prompt": "a line\u2028separator and\u0085next line"}, ensure_ascii=False),
        json.dumps(GOOD[1]),
    ]
    blob = upload(settings, "incoming/poison.jsonl", "\n".join(lines).encode())
    deliver(prompt_client, blob)  # answers 200: nothing for Eventarc to redeliver

    result = receipt(settings, "receipts/poison.jsonl.json")
    assert [entry["line"] for entry in result["accepted"]] == [1, 6, 7]
    rejected = {entry["line"]: entry["errors"][0] for entry in result["rejected"]}
    assert set(rejected) == {2, 3, 4, 5}
    assert "more than 20 digits" in rejected[2]["message"]
    assert rejected[3]["path"] == "$.metadata.n" and "64-bit" in rejected[3]["message"]
    assert rejected[4]["path"] == "$.metadata" and "reserved" in rejected[4]["message"]
    assert rejected[5]["path"] == "$.metadata.x" and "finite" in rejected[5]["message"]
    line6 = service.store.get(result["accepted"][1]["job_id"])
    assert line6["request"]["prompt"] == "a line\u2028separator and\u0085next line"


def test_a_line_that_breaks_unexpectedly_is_rejected_alone(
    prompt_client, settings, service, monkeypatch
):
    from ltxv.intake.submission import Intake

    real = Intake.validate

    def validate(self, body, **kwargs):  # a bug that only one line's content triggers
        if body.get("prompt") == "trigger":
            raise KeyError("boom")
        return real(self, body, **kwargs)

    monkeypatch.setattr(Intake, "validate", validate)
    payload = b'{"prompt": "trigger"}\n{"prompt": "fine"}'
    deliver(prompt_client, upload(settings, "incoming/bug.jsonl", payload))
    result = receipt(settings, "receipts/bug.jsonl.json")
    assert [entry["line"] for entry in result["accepted"]] == [2]
    assert result["rejected"][0]["line"] == 1
    assert "boom" not in result["rejected"][0]["errors"][0]["message"]


def test_a_late_delivery_of_an_older_upload_never_replaces_a_newer_receipt(
    prompt_client, settings, monkeypatch
):
    """Two deliveries racing: the older upload's was read before the newer upload, but the
    newer one's receipt lands before the older one writes; its conditional write sees that
    and yields (an unconditional write would have put the older receipt on top)."""
    old = upload(settings, "incoming/race.json", b'{"prompt": "old"}')
    real_upload = storage.Blob.upload_from_string
    newer = []

    def upload_racing(self, data, *args, **kwargs):
        if self.name == "receipts/race.json.json" and not newer:
            newer.append(upload(settings, "incoming/race.json", b'{"prompt": "new"}'))
            deliver(prompt_client, newer[0], event_id="new")  # done in between
        return real_upload(self, data, *args, **kwargs)

    monkeypatch.setattr(storage.Blob, "upload_from_string", upload_racing)
    deliver(prompt_client, old, event_id="old")
    assert receipt(settings, "receipts/race.json.json")["generation"] == str(newer[0].generation)


def test_lines_past_the_owners_limit_of_jobs_in_flight_are_rejected_by_line(
    settings, service, monkeypatch
):
    monkeypatch.setenv("LTXV_MAX_JOBS_IN_FLIGHT", "2")
    client = create_app(
        target="prompt_file", source=SUBMIT_SOURCE, signature_type="cloudevent"
    ).test_client()
    payload = "\n".join(json.dumps(body) for body in GOOD).encode()
    blob = upload(settings, "incoming/capped.jsonl", payload)
    deliver(client, blob)
    deliver(client, blob, event_id="again")  # a redelivery: the same two jobs, no third
    result = receipt(settings, "receipts/capped.jsonl.json")
    assert [entry["line"] for entry in result["accepted"]] == [1, 2]
    (rejected,) = result["rejected"]
    assert rejected["line"] == 3
    assert "2 jobs queued or running" in rejected["errors"][0]["message"]
    assert len(list(service.firestore.collection("jobs").stream())) == 2


def test_each_webhook_host_of_a_file_is_looked_up_once(settings, service):
    """DNS per line made a 5000-line file wait on a slow name server 5000 times."""
    asked = []

    def resolver(host, port):  # the seam: name resolution (there is no DNS here)
        asked.append(host)
        return ["93.184.216.34"]

    lines = [
        json.dumps({"prompt": f"line {n}", "webhook_url": f"https://hooks.example.com/{n}"})
        for n in range(40)
    ]
    blob = upload(settings, "incoming/hooks.jsonl", "\n".join(lines).encode())
    files = prompt_files_resolving_with(service, settings, resolver)
    receipt = files.handle(settings.prompts, blob.name, str(blob.generation), blob.size)
    assert len(receipt.accepted) == 40
    assert asked == ["hooks.example.com"]
    files.handle(settings.prompts, blob.name, str(blob.generation), blob.size)
    assert asked == ["hooks.example.com"] * 2  # a new file (or delivery) looks up afresh


def test_a_line_whose_webhook_host_does_not_resolve_in_time_is_rejected_alone(settings, service):
    from ltxv.core.urlsafety import ResolveTimeout

    asked = []

    def resolver(host, port):  # the seam: name resolution; one name server never answers
        asked.append(host)
        if host == "stuck.example.com":
            raise ResolveTimeout(host)
        return ["93.184.216.34"]

    lines = [
        json.dumps({"prompt": "a", "webhook_url": "https://stuck.example.com/1"}),
        json.dumps({"prompt": "b", "webhook_url": "https://hooks.example.com/2"}),
        json.dumps({"prompt": "c", "webhook_url": "https://stuck.example.com/3"}),
    ]
    blob = upload(settings, "incoming/stuck.jsonl", "\n".join(lines).encode())
    files = prompt_files_resolving_with(service, settings, resolver)
    receipt = files.handle(settings.prompts, blob.name, str(blob.generation), blob.size)
    assert [entry["line"] for entry in receipt.accepted] == [2]
    assert [entry["line"] for entry in receipt.rejected] == [1, 3]
    assert "upload this line again later" in receipt.rejected[0]["errors"][0]["message"]
    assert asked.count("stuck.example.com") == 1  # not waited on once per line


def prompt_files_resolving_with(service, settings, resolver):
    """The prompt-file handler in-process, with `resolver` as its name resolution (the seam:
    there is no DNS here)."""
    import dataclasses

    service.intake.policy = dataclasses.replace(service.intake.policy, resolver=resolver)
    return prompt_files(service, settings)


def test_a_line_may_name_gs_conditions_and_a_bad_one_is_refused_by_line(
    prompt_client, settings, service
):
    from ltxv.intake.input_retention import now_stamp
    from tests import media_samples

    inputs = storage.Client(project=settings.project).bucket(settings.inputs)
    good = inputs.blob("keys/default/uploads/line.png")
    good.custom_time = now_stamp()  # as an upload's signed PUT stamps it: no renewal due
    good.upload_from_string(media_samples.png())
    good.reload()
    fake = inputs.blob("keys/default/uploads/fake.png")
    fake.upload_from_string(b"not a picture")
    lines = [
        {
            "prompt": "from an image",
            "conditions": [{"image": f"gs://{settings.inputs}/{good.name}"}],
        },
        {"prompt": "from text", "conditions": [{"image": f"gs://{settings.inputs}/{fake.name}"}]},
        {"prompt": "another key's", "conditions": [{"image": f"gs://{settings.inputs}/keys/x/a"}]},
    ]
    blob = upload(settings, "incoming/keyframes.jsonl", "\n".join(map(json.dumps, lines)).encode())
    deliver(prompt_client, blob)
    document = receipt(settings, "receipts/keyframes.jsonl.json")
    (accepted,) = document["accepted"]
    assert accepted["line"] == 1
    inputs_entry = service.store.get(accepted["job_id"])["inputs"][0]
    assert (inputs_entry["generation"], inputs_entry["select"]) == (
        good.generation,
        {"start": 0, "count": 1},
    )
    rejected = {r["line"]: r["errors"][0] for r in document["rejected"]}
    assert rejected[2]["path"] == "$.conditions[0].image"
    assert "not an image or video" in rejected[2]["message"]
    assert "may read conditions only from" in rejected[3]["message"]
