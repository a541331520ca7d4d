"""POST /v1/uploads over real HTTP (functions-framework's app in a server thread) against
the emulators: the signed URL really takes the PUT of the bytes on fake-gcs-server, each
key writes under its own prefix, bad bodies are 422s naming the field, and the hourly cap
holds under concurrent requests."""

from __future__ import annotations

import hashlib
import json
import re
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from urllib.parse import parse_qsl, quote, urlsplit

import pytest
import requests
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from functions_framework import create_app
from google.cloud import storage
from werkzeug.serving import make_server

from ltxv.core import schemas
from ltxv.core.profiles import enabled_profiles
from ltxv.intake.uploads import UPLOAD_CORS_HEADERS, upload_limits

from .conftest import API_KEY, OTHER_KEY, SUBMIT_SOURCE

pytestmark = pytest.mark.emulators


def create_app_for_api():
    return create_app(target="api", source=SUBMIT_SOURCE, signature_type="http")


PNG = bytes.fromhex("89504e470d0a1a0a") + b"not really a picture; intake checks that later"


@pytest.fixture
def api_url(env) -> Iterator[str]:
    server = make_server("127.0.0.1", 0, create_app_for_api(), threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()


def upload(api_url: str, body: object, key: str = API_KEY) -> requests.Response:
    return requests.post(f"{api_url}/v1/uploads", json=body, headers={"X-API-Key": key}, timeout=10)


def test_the_signed_url_takes_the_put_of_those_bytes(api_url, settings):
    started = datetime.now().astimezone()
    response = upload(api_url, {"content_type": "image/png", "size": len(PNG)})

    assert response.status_code == 201, response.text
    answer = response.json()
    assert not list(schemas.validator("upload").iter_errors(answer))
    assert answer["uri"] == f"gs://{settings.inputs}/keys/default/uploads/{answer['upload_id']}"
    assert answer["method"] == "PUT"
    custom_time = answer["headers"]["x-goog-custom-time"]
    assert answer["headers"] == {
        "Content-Type": "image/png",
        "x-goog-content-length-range": f"{len(PNG)},{len(PNG)}",
        "x-goog-if-generation-match": "0",
        # The inputs bucket's retention counts from it (terraform storage.tf): now, in the
        # RFC 3339 form Cloud Storage takes, UTC and whole seconds.
        "x-goog-custom-time": custom_time,
    }
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", custom_time)
    signed_at = datetime.fromisoformat(custom_time)
    assert started.replace(microsecond=0) <= signed_at <= datetime.now().astimezone()
    expires = datetime.fromisoformat(answer["expires_at"])
    assert timedelta(minutes=14) < expires - started <= timedelta(minutes=15, seconds=5)
    query = dict(parse_qsl(urlsplit(answer["upload_url"]).query))
    assert query["X-Goog-Expires"] == "900"
    assert query["X-Goog-SignedHeaders"] == (
        "content-type;host;x-goog-content-length-range;x-goog-custom-time;"
        "x-goog-if-generation-match"
    )

    put = requests.put(answer["upload_url"], headers=answer["headers"], data=PNG, timeout=10)

    assert put.status_code == 200, put.text
    bucket_name, _, name = answer["uri"][5:].partition("/")
    blob = storage.Client().bucket(bucket_name).get_blob(name)
    assert blob is not None and blob.download_as_bytes() == PNG
    assert blob.content_type == "image/png"


def test_the_returned_headers_are_exactly_the_signed_ones(api_url, signing_key_file):
    """Cloud Storage (unlike fake-gcs-server) checks the signature: recomputed here from the
    URL and the answer's headers as Google's V4 algorithm does, it must verify with the
    signing key, and fail once any header the client would send differs."""
    answer = upload(api_url, {"content_type": "video/mp4", "size": 1000}).json()
    private_key = json.loads(signing_key_file.read_text())["private_key"].encode()
    key = load_pem_private_key(private_key, None).public_key()

    def verifies(headers: dict[str, str]) -> bool:
        url = urlsplit(answer["upload_url"])
        query = dict(parse_qsl(url.query, keep_blank_values=True))
        signature = bytes.fromhex(query.pop("X-Goog-Signature"))
        sent = {"host": url.netloc, **{k.lower(): v for k, v in headers.items()}}
        signed = query["X-Goog-SignedHeaders"].split(";")
        canonical = "\n".join(
            [
                "PUT",
                url.path,
                "&".join(
                    f"{quote(k, safe='')}={quote(v, safe='')}" for k, v in sorted(query.items())
                ),
                "".join(f"{name}:{sent.get(name, '')}\n" for name in signed),
                ";".join(signed),
                "UNSIGNED-PAYLOAD",
            ]
        )
        date = query["X-Goog-Date"]
        scope = query["X-Goog-Credential"].split("/", 1)[1]
        digest = hashlib.sha256(canonical.encode()).hexdigest()
        to_sign = f"GOOG4-RSA-SHA256\n{date}\n{scope}\n{digest}".encode()
        try:
            key.verify(signature, to_sign, padding.PKCS1v15(), hashes.SHA256())
        except Exception:
            return False
        return True

    assert verifies(answer["headers"])
    assert not verifies({**answer["headers"], "x-goog-content-length-range": "1000,2000000"})
    assert not verifies({**answer["headers"], "Content-Type": "text/html"})
    assert not verifies({k: v for k, v in answer["headers"].items() if "generation" not in k})
    # Custom-Time is required as signed: neither left out (never expiring) nor backdated.
    assert not verifies({k: v for k, v in answer["headers"].items() if "custom-time" not in k})
    assert not verifies({**answer["headers"], "x-goog-custom-time": "2000-01-01T00:00:00Z"})


def test_each_key_uploads_under_its_own_prefix(api_url, settings):
    mine = upload(api_url, {"content_type": "image/png", "size": 10}).json()
    theirs = upload(api_url, {"content_type": "image/png", "size": 10}, OTHER_KEY).json()

    assert theirs["uri"].startswith(f"gs://{settings.inputs}/keys/other/uploads/")
    assert mine["uri"].startswith(f"gs://{settings.inputs}/keys/default/uploads/")
    assert mine["upload_id"] != theirs["upload_id"]
    assert urlsplit(theirs["upload_url"]).path.endswith(
        f"/keys/other/uploads/{theirs['upload_id']}"
    )


def test_a_browser_may_put_to_it_from_another_origin(api_url):
    """The web page PUTs from the API's origin: fake-gcs-server's preflight must allow the
    method and every signed header (the stack passes them with -cors-headers)."""
    answer = upload(api_url, {"content_type": "image/webp", "size": 3}).json()
    preflight = requests.options(
        answer["upload_url"],
        headers={
            "Origin": api_url,
            "Access-Control-Request-Method": "PUT",
            "Access-Control-Request-Headers": ",".join(h.lower() for h in answer["headers"]),
        },
        timeout=10,
    )
    assert preflight.status_code == 200
    allowed = preflight.headers["Access-Control-Allow-Headers"].lower()
    assert all(name.lower() in allowed for name in UPLOAD_CORS_HEADERS)
    assert preflight.headers["Access-Control-Allow-Origin"] in ("*", api_url)

    put = requests.put(
        answer["upload_url"], headers={**answer["headers"], "Origin": api_url}, data=b"abc"
    )
    assert put.status_code == 200
    assert put.headers["Access-Control-Allow-Origin"] in ("*", api_url)


MAX_BYTES = upload_limits(enabled_profiles("tiny-random", ()))[1]


@pytest.mark.parametrize(
    ("body", "paths"),
    [
        ({"content_type": "text/html", "size": 10}, ["$.content_type"]),
        ({"content_type": "IMAGE/PNG", "size": 10}, ["$.content_type"]),
        ({"content_type": "", "size": 10}, ["$.content_type"]),
        ({"content_type": 5, "size": 10}, ["$.content_type"]),
        ({"content_type": "image/png", "size": 0}, ["$.size"]),
        ({"content_type": "image/png", "size": -1}, ["$.size"]),
        ({"content_type": "image/png", "size": MAX_BYTES + 1}, ["$.size"]),
        ({"content_type": "image/png", "size": "10"}, ["$.size"]),
        ({"content_type": "image/png", "size": 1.5}, ["$.size"]),
        ({"content_type": "image/png", "size": True}, ["$.size"]),
        ({"content_type": "image/png", "size": 10**19}, ["$.size"]),
        ({}, ["$.content_type", "$.size"]),
        ({"content_type": "image/png", "size": 10, "name": "x.png"}, ["$.name"]),
        (["image/png", 10], ["$"]),
    ],
)
def test_a_bad_body_is_422_naming_the_field(api_url, body, paths):
    response = upload(api_url, body)

    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "validation_failed"
    assert sorted({d["path"] for d in error["details"]}) == paths


def test_the_largest_allowed_size_is_signed(api_url):
    response = upload(api_url, {"content_type": "video/webm", "size": MAX_BYTES})
    assert response.status_code == 201
    assert response.json()["headers"]["x-goog-content-length-range"] == f"{MAX_BYTES},{MAX_BYTES}"
    # JSON Schema counts 5.0 as an integer; it is signed as 5 (the fuzzer found "5.0").
    whole = upload(api_url, {"content_type": "video/webm", "size": 5.0})
    assert whole.json()["headers"]["x-goog-content-length-range"] == "5,5"
    too_big = upload(api_url, {"content_type": "video/webm", "size": float(MAX_BYTES + 1)})
    assert too_big.status_code == 422


def test_malformed_requests_are_4xx(api_url):
    url = f"{api_url}/v1/uploads"
    auth = {"X-API-Key": API_KEY}
    not_json = requests.post(url, data="{", headers={**auth, "Content-Type": "application/json"})
    assert not_json.status_code == 400
    as_form = requests.post(url, data={"content_type": "image/png"}, headers=auth)
    assert as_form.status_code == 415
    assert as_form.json()["error"]["details"][0]["path"] == "header.Content-Type"
    huge = requests.post(url, json={"content_type": "x" * 70_000, "size": 1}, headers=auth)
    assert huge.status_code == 413


def test_without_a_valid_key_it_is_401(api_url):
    body = {"content_type": "image/png", "size": 10}
    assert requests.post(f"{api_url}/v1/uploads", json=body, timeout=10).status_code == 401
    assert upload(api_url, body, key="ltxv_not-a-key").status_code == 401
    wrong_method = requests.get(f"{api_url}/v1/uploads", headers={"X-API-Key": API_KEY})
    assert wrong_method.status_code == 405


def test_a_key_mints_at_most_its_hourly_allowance_even_all_at_once(env, monkeypatch):
    monkeypatch.setenv("LTXV_UPLOADS_PER_HOUR", "5")
    server = make_server("127.0.0.1", 0, create_app_for_api(), threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    api_url = f"http://127.0.0.1:{server.server_port}"
    body = {"content_type": "image/png", "size": 10}
    try:
        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(lambda _: upload(api_url, body), range(12)))
        statuses = sorted(r.status_code for r in answers)
        assert statuses == [201] * 5 + [429] * 7
        refused = next(r for r in answers if r.status_code == 429)
        assert refused.json()["error"]["code"] == "too_many_uploads"
        assert refused.json()["error"]["retryable"] is True
        assert 1 <= int(refused.headers["Retry-After"]) <= 3600
        # Another key's allowance is its own; an invalid body is not counted.
        assert upload(api_url, {"size": 1}, OTHER_KEY).status_code == 422
        assert upload(api_url, body, OTHER_KEY).status_code == 201
    finally:
        server.shutdown()


def test_the_upload_uri_is_not_a_job_id_collision(api_url):
    """Ids are random per call: 20 uploads of the same body are 20 objects."""
    ids = {
        upload(api_url, {"content_type": "image/png", "size": 4}).json()["upload_id"]
        for _ in range(20)
    }
    assert len(ids) == 20


def test_the_document_states_this_deployments_limits(api_url):
    document = requests.get(f"{api_url}/openapi.json", timeout=10).json()
    request = document["components"]["schemas"]["UploadRequest"]["properties"]
    assert request["size"]["maximum"] == MAX_BYTES
    assert "image/png" in request["content_type"]["enum"]
    assert "text/html" not in request["content_type"]["enum"]
    assert "post" in document["paths"]["/v1/uploads"]
