import json
import threading
import time

import pytest

from ltxv.intake.auth import KeyRing, find_key_id, generate_api_key, hash_api_key, parse_key_hashes


def test_keys_are_random_and_stored_only_as_hashes():
    a, b = generate_api_key(), generate_api_key()
    assert a != b and a.startswith("ltxv_") and len(a) > 40
    hashes = {"alice": hash_api_key(a), "bob": hash_api_key(b)}
    assert a not in json.dumps(hashes)
    assert find_key_id(a, hashes) == "alice"
    assert find_key_id(b, hashes) == "bob"
    assert find_key_id(a + "x", hashes) is None
    assert find_key_id("", hashes) is None
    assert find_key_id(None, hashes) is None


class Source:
    """Secret Manager as the key ring sees it: a document that may change, stall or fail."""

    def __init__(self, key: str) -> None:
        self.document = json.dumps({"k": hash_api_key(key)})
        self.calls = 0
        self.gate = threading.Event()
        self.gate.set()
        self.error: Exception | None = None
        self.finished = threading.Event()

    def load(self) -> str:
        self.calls += 1
        try:
            self.gate.wait(10)
            if self.error:
                raise self.error
            return self.document
        finally:
            self.finished.set()


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_keyring_reloads_after_its_ttl_without_making_a_request_wait():
    old, new = generate_api_key(), generate_api_key()
    source, clock = Source(old), Clock()
    ring = KeyRing(source.load, ttl_seconds=300, clock=clock)
    assert ring.authenticate(old) == "k" and source.calls == 1
    clock.now = 301
    source.document = json.dumps({"k": hash_api_key(new)})
    source.gate.clear()  # Secret Manager is slow now
    source.finished.clear()
    assert ring.authenticate(old) == "k"  # answered from the cache, not after the reload
    assert ring.authenticate(old) == "k" and source.calls == 2  # one reload at a time
    source.gate.set()
    assert source.finished.wait(5)
    deadline = threading.Event()
    while ring.authenticate(new) is None and not deadline.wait(0.01):
        pass
    assert ring.authenticate(new) == "k" and ring.authenticate(old) is None


def test_a_failing_reload_keeps_the_cached_keys_and_is_tried_again_later():
    key = generate_api_key()
    source, clock = Source(key), Clock()
    ring = KeyRing(source.load, ttl_seconds=300, clock=clock, retry_seconds=10)
    ring.authenticate(key)
    clock.now = 400
    source.error = RuntimeError("Secret Manager is down")
    source.finished.clear()  # (set by the first load; the reload sets it again)
    assert ring.authenticate(key) == "k"
    assert source.finished.wait(5)
    assert ring.authenticate(key) == "k" and source.calls == 2  # not again before 10 s
    clock.now = 411
    deadline = time.monotonic() + 5
    while source.calls < 3 and time.monotonic() < deadline:  # once the last reload is done
        assert ring.authenticate(key) == "k"
        time.sleep(0.01)
    assert source.calls == 3


def test_the_first_load_is_waited_for_and_its_failure_is_the_callers():
    source = Source(generate_api_key())
    source.error = RuntimeError("Secret Manager is down")
    ring = KeyRing(source.load)
    with pytest.raises(RuntimeError):
        ring.authenticate("ltxv_anything")


def test_malformed_hash_documents_are_refused():
    for raw in ("[]", '{"k": 1}', '{"k": "short"}'):
        try:
            parse_key_hashes(raw)
        except ValueError:
            continue
        raise AssertionError(raw)


def test_after_a_failed_first_load_callers_fail_fast_until_the_retry_time():
    source, clock = Source(generate_api_key()), Clock()
    source.error = RuntimeError("Secret Manager is down")
    ring = KeyRing(source.load, clock=clock, retry_seconds=10)
    for _ in range(3):  # a cold instance's burst: one wait on the source, not three
        with pytest.raises(RuntimeError):
            ring.authenticate("ltxv_anything")
    assert source.calls == 1
    clock.now = 11
    source.error = None
    assert ring.authenticate("ltxv_anything") is None and source.calls == 2
