import json

from ltxv.auth import KeyRing, find_key_id, generate_api_key, hash_api_key, parse_key_hashes


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


def test_keyring_reloads_after_its_ttl():
    calls = []
    key = generate_api_key()

    def load():
        calls.append(1)
        return json.dumps({"k": hash_api_key(key)})

    ring = KeyRing(load, ttl_seconds=0)
    assert ring.authenticate(key) == "k"
    assert ring.authenticate(key) == "k"
    assert len(calls) == 2


def test_malformed_hash_documents_are_refused():
    for raw in ("[]", '{"k": 1}', '{"k": "short"}'):
        try:
            parse_key_hashes(raw)
        except ValueError:
            continue
        raise AssertionError(raw)
