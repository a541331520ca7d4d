"""What intake reads, and when: over the API (and the prompt-file handler) against the
emulators and fake-gcs. A replay, a conflict or a full key is answered without reading
any input; one key takes one inspection turn at a time; a trimmed video's frames are
counted as the worker will decode them.

Reads are counted at the storage client seam: the inspector's real client, wrapped."""

from __future__ import annotations

import json
import threading
from typing import Any

import flask
import pytest
from google.cloud import storage

from gpu_worker.conditioning import InputUnavailable, selected_frames
from ltxv.core.settings import Settings
from ltxv.intake import compose as compose_submit
from ltxv.intake.input_retention import now_stamp
from tests import media_samples

from .conftest import API_KEY, OTHER_KEY, prompt_files, settle

pytestmark = pytest.mark.emulators


class CountingStorage:
    """The real storage client, counting each bucket it is asked for (every read and
    write of an input starts there)."""

    def __init__(self, client: storage.Client) -> None:
        self.client = client
        self.calls = 0

    def bucket(self, *args: Any, **kwargs: Any) -> storage.Bucket:
        self.calls += 1
        return self.client.bucket(*args, **kwargs)


def api_client(monkeypatch, **env: str):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    api = compose_submit.api(Settings.from_env())
    counting = CountingStorage(api.intake.inputs.storage)
    api.intake.inputs.storage = counting
    app = flask.Flask("api")
    app.add_url_rule("/<path:path>", "all", lambda path: api(flask.request), methods=["POST"])
    return app.test_client(), api, counting


def put(settings, name: str, data: bytes, bucket: str | None = None) -> storage.Blob:
    blob = storage.Client(project=settings.project).bucket(bucket or settings.inputs).blob(name)
    blob.custom_time = now_stamp()
    blob.upload_from_string(data)
    blob.reload()
    return blob


def gs(blob: storage.Blob) -> str:
    return f"gs://{blob.bucket.name}/{blob.name}"


def submit(client, key=API_KEY, headers=None, **fields):
    body = {"prompt": "a fox", "num_frames": 17, **fields}
    return client.post("/v1/jobs", json=body, headers={"X-API-Key": key, **(headers or {})})


def test_a_replay_of_a_conditioned_request_reads_no_input(env, monkeypatch, settings):
    client, _, counting = api_client(monkeypatch)
    blob = put(settings, "keys/default/uploads/replayed.png", media_samples.png())
    conditions = [
        {"image": media_samples.data_url(media_samples.png(color=(1, 1, 1)))},
        {"image": gs(blob), "frame_index": -1},
    ]
    key = {"Idempotency-Key": "replay-no-io"}
    first = submit(client, headers=key, conditions=conditions)
    assert first.status_code == 202, first.get_data(as_text=True)
    assert counting.calls > 0
    counting.calls = 0
    blob.delete()  # a replay that read it would now be refused
    again = submit(client, headers=key, conditions=conditions)
    assert again.status_code == 202, again.get_data(as_text=True)
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.get_json()["job_id"] == first.get_json()["job_id"]
    other = submit(client, headers=key, conditions=conditions[:1])
    assert other.status_code == 409
    assert counting.calls == 0


def test_a_retry_replay_reads_no_input(env, monkeypatch, settings, service):
    client, _, counting = api_client(monkeypatch)
    blob = put(settings, "keys/default/uploads/retried.png", media_samples.png())
    parent = submit(client, conditions=[{"image": gs(blob)}]).get_json()["job_id"]
    settle(service, parent, state="failed").join()
    headers = {"X-API-Key": API_KEY, "Idempotency-Key": "retry-no-io"}
    first = client.post(f"/v1/jobs/{parent}/retry", headers=headers)
    assert first.status_code == 202, first.get_data(as_text=True)
    counting.calls = 0
    blob.delete()
    again = client.post(f"/v1/jobs/{parent}/retry", headers=headers)
    assert again.status_code == 202, again.get_data(as_text=True)
    assert again.get_json()["job_id"] == first.get_json()["job_id"]
    assert counting.calls == 0


def test_a_key_at_its_limit_is_refused_before_any_inspection(env, monkeypatch, settings):
    client, api, counting = api_client(monkeypatch, LTXV_MAX_JOBS_IN_FLIGHT="1")
    blob = put(settings, "keys/default/uploads/limit.png", media_samples.png())
    assert submit(client).status_code == 202  # the key's one job in flight
    turns = []
    hold = api.intake.inputs.slots.hold
    api.intake.inputs.slots.hold = lambda key: turns.append(key) or hold(key)
    counting.calls = 0
    full = submit(client, conditions=[{"image": gs(blob)}])
    assert full.status_code == 429, full.get_data(as_text=True)
    assert full.get_json()["error"]["code"] == "too_many_jobs"
    assert (counting.calls, turns) == (0, [])
    # Another key has room: its inputs are read.
    ok = submit(
        client,
        key=OTHER_KEY,
        conditions=[{"image": media_samples.data_url(blob.download_as_bytes())}],
    )
    assert ok.status_code == 202, ok.get_data(as_text=True)
    assert turns == ["other"]


def test_one_key_holds_one_inspection_turn_and_others_still_get_theirs(env, monkeypatch, settings):
    client, api, _ = api_client(
        monkeypatch, LTXV_MAX_INSPECTIONS="2", LTXV_INSPECTION_WAIT_SECONDS="0.5"
    )
    blob = put(settings, "keys/default/uploads/turn.png", media_samples.png())
    other = media_samples.data_url(media_samples.png(color=(3, 3, 3)))
    holding, release = threading.Event(), threading.Event()

    def busy_inspection():  # "default" is checking a big input right now
        with api.intake.inputs.slots.hold("default"):
            holding.set()
            release.wait(10)

    worker = threading.Thread(target=busy_inspection)
    worker.start()
    try:
        assert holding.wait(5)
        waited = submit(client, conditions=[{"image": gs(blob)}])
        assert waited.status_code == 503, waited.get_data(as_text=True)
        assert waited.headers["Retry-After"] == "5"
        # A free slot remains, and it is another key's to take.
        assert submit(client, key=OTHER_KEY, conditions=[{"image": other}]).status_code == 202
        # The key's turn comes back while its request waits: that request goes through.
        threading.Timer(0.1, release.set).start()
        assert submit(client, conditions=[{"image": gs(blob)}]).status_code == 202
    finally:
        release.set()
        worker.join()
    assert api.intake.inputs.slots._turns == {}  # nothing left behind per key


def test_a_redelivered_prompt_file_reads_no_input_again(settings, service):
    blob = put(settings, "keys/default/uploads/line.png", media_samples.png())
    lines = [
        {"prompt": "from an image", "conditions": [{"image": gs(blob)}]},
        {
            "prompt": "inline",
            "conditions": [{"image": media_samples.data_url(media_samples.png())}],
        },
        {"prompt": "text only"},
    ]
    file = put(settings, "incoming/io.jsonl", "\n".join(map(json.dumps, lines)).encode(),
               bucket=settings.prompts)  # fmt: skip
    handler = prompt_files(service, settings)
    counting = CountingStorage(service.intake.inputs.storage)
    service.intake.inputs.storage = counting
    first = handler.handle(file.bucket.name, file.name, str(file.generation), file.size)
    assert [a["line"] for a in first.accepted] == [1, 2, 3] and counting.calls > 0
    counting.calls = 0
    blob.delete()
    again = handler.handle(file.bucket.name, file.name, str(file.generation), file.size)
    assert again.accepted == first.accepted and again.rejected == []
    assert counting.calls == 0


def test_a_trimmed_videos_frames_at_submit_are_the_workers(env, monkeypatch, settings, service):
    client, _, _ = api_client(monkeypatch)
    data = media_samples.trimmed_video(frames=25, cut=8)  # 25 packets, 8 cut by an edit list
    blob = put(settings, "keys/default/uploads/trimmed.mp4", data)
    response = submit(client, conditions=[{"video": gs(blob)}])
    assert response.status_code == 202, response.get_data(as_text=True)
    (entry,) = service.store.get(response.get_json()["job_id"])["inputs"]
    assert entry["frames"] == 17
    everything = {**entry, "select": {"start": 0, "count": entry["frames"]}}
    assert len(selected_frames(data, everything)) == entry["frames"]
    with pytest.raises(InputUnavailable, match="has 17 decodable frames"):
        selected_frames(data, {**entry, "select": {"start": 0, "count": entry["frames"] + 1}})
