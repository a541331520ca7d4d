"""The web page as the submit function serves it: files, headers, what needs a key."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
from google.auth.credentials import AnonymousCredentials
from google.cloud import storage

from ltxv.core.logs import JsonFormatter
from ltxv.core.settings import Settings
from ltxv.core.signing import UrlSigner
from ltxv.intake import api as api_module
from ltxv.intake import web
from ltxv.local.credentials import fake_service_account_key

pytestmark = pytest.mark.emulators

WEB = Path(web.__file__).parent
PUBLIC = {"/", "/assets/<path:name>", "/healthz", "/health", "/openapi.json"}
SECURITY = {
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


def csp(response) -> dict[str, str]:
    policy = response.headers["Content-Security-Policy"]
    return dict(part.strip().partition(" ")[::2] for part in policy.split(";"))


def test_the_page_needs_no_key_and_carries_the_security_headers(client, settings):
    response = client.get("/")
    assert response.status_code == 200
    assert response.content_type == "text/html; charset=utf-8"
    assert b'<script type="module" src="/assets/app.js">' in response.data
    for name, value in SECURITY.items():
        assert response.headers[name] == value
    policy = csp(response)
    storage_origin = settings.storage_emulator_host.rstrip("/")
    assert policy["script-src"] == "'self'" and policy["style-src"] == "'self'"
    assert policy["frame-ancestors"] == "'none'" and policy["default-src"] == "'none'"
    assert policy["media-src"] == storage_origin
    # blob: previews an image chosen for upload; uploads are PUT to the storage origin.
    assert policy["img-src"] == f"'self' {storage_origin} blob:"
    assert policy["connect-src"] == f"'self' {storage_origin}"
    assert "unsafe" not in response.headers["Content-Security-Policy"]


def test_in_the_cloud_the_media_origin_is_cloud_storage():
    policy = web.content_security_policy(Settings(storage_emulator_host=None).storage_origin)
    assert "media-src https://storage.googleapis.com;" in policy


def _referenced_assets() -> set[str]:
    """Every /assets/ file the page names, and every module those scripts import."""
    html = (WEB / "index.html").read_text()
    names = set(re.findall(r'(?:src|href)="/assets/([^"]+)"', html))
    for script in (WEB / "assets").glob("*.js"):
        names |= set(re.findall(r'from "\./([^"]+)"', script.read_text()))
    return names


@pytest.mark.parametrize(
    ("suffix", "content_type"),
    [
        (".js", "text/javascript; charset=utf-8"),
        (".css", "text/css; charset=utf-8"),
        (".svg", "image/svg+xml"),
    ],
)
def test_every_referenced_asset_is_served_with_its_type_and_headers(client, suffix, content_type):
    names = sorted(n for n in _referenced_assets() if n.endswith(suffix))
    assert names
    for name in names:
        response = client.get(f"/assets/{name}")
        assert response.status_code == 200, name
        assert response.content_type == content_type
        assert response.data == (WEB / "assets" / name).read_bytes()
        assert "frame-ancestors 'none'" in response.headers["Content-Security-Policy"]
        for header, value in SECURITY.items():
            assert response.headers[header] == value


def test_the_page_uses_no_inline_script_or_style_and_nothing_from_elsewhere():
    html = (WEB / "index.html").read_text()
    assert not re.search(r"<script(?![^>]*\bsrc=)", html)
    assert "<style" not in html and " style=" not in html and "javascript:" not in html
    everything = html + "".join(p.read_text() for p in (WEB / "assets").iterdir())
    assert not re.search(r"https?://", everything.replace("http://www.w3.org/2000/svg", ""))


def test_before_the_script_runs_no_form_can_put_the_key_in_a_url():
    html = (WEB / "index.html").read_text()
    forms = re.findall(r"<form\b[^>]*>", html)
    assert forms and all('method="post"' in form for form in forms)
    assert all(" disabled" in b for b in re.findall(r'<button[^>]*type="submit"[^>]*>', html))


def test_assets_revalidate_by_etag(client):
    first = client.get("/assets/app.js")
    assert first.headers["Cache-Control"] == "no-cache" and first.headers["ETag"]
    again = client.get("/assets/app.js", headers={"If-None-Match": first.headers["ETag"]})
    assert again.status_code == 304 and not again.data
    assert client.head("/").status_code == 200


@pytest.mark.parametrize(
    "path",
    [
        "/assets/nope.js",
        "/assets/",
        "/assets/__init__.py",
        "/assets/../__init__.py",
        "/assets/../../api.py",
        "/assets/..%2f__init__.py",
        "/assets/%2e%2e/%2e%2e/settings.py",
        "/assets/./app.js",
        "/assets//etc/passwd",
        "/assets/index.html/../../api.py",
        "/index.html",
    ],
)
def test_unknown_assets_and_traversal_are_404(client, path):
    response = client.get(path)
    assert response.status_code == 404
    assert response.get_json()["error"]["code"] == "not_found"
    assert b"import" not in response.data


def _requests_without_a_key():
    for rule in api_module.ROUTES.iter_rules():
        if rule.rule in PUBLIC:
            continue
        path = rule.rule.replace("<job_id>", "a" * 26)
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            yield pytest.param(method, path, id=f"{method} {path}")


@pytest.mark.parametrize(("method", "path"), list(_requests_without_a_key()))
def test_every_data_endpoint_still_needs_a_key(client, method, path):
    response = client.open(path, method=method, json={"prompt": "x"})
    assert response.status_code == 401
    assert "Content-Security-Policy" not in response.headers


def test_the_openapi_document_carries_the_rules_the_page_validates_with(client):
    rules = client.get("/openapi.json").get_json()["x-ltxv-request-rules"]
    assert rules["default_model"] == "tiny-random" and rules["num_frames_step"] == 8
    tiny = rules["models"]["tiny-random"]
    assert tiny["limits"]["width"] == {"min": 32, "max": 1280}
    assert tiny["defaults"]["num_frames"] == 9 and tiny["max_video_pixels"] > 0


def test_request_logs_hold_no_key_query_or_body(client, auth, caplog):
    caplog.set_level(logging.INFO)
    secret_query = "page_token=c2VjcmV0LXF1ZXJ5"
    client.get(f"/v1/jobs?{secret_query}", headers=auth)
    client.post("/v1/jobs", json={"prompt": "a very private prompt"}, headers=auth)
    client.get("/", headers=auth)
    formatter = JsonFormatter("submit")
    logged = "\n".join(formatter.format(record) for record in caplog.records)
    assert '"requestUrl": "/v1/jobs"' in logged
    for secret in (auth["X-API-Key"], "c2VjcmV0LXF1ZXJ5", "very private prompt"):
        assert secret not in logged


def test_a_download_url_is_signed_to_be_served_as_an_attachment(tmp_path):
    key = tmp_path / "sa.json"
    key.write_text(json.dumps(fake_service_account_key("proj")))
    client = storage.Client(project="proj", credentials=AnonymousCredentials())
    url = UrlSigner(client, str(key)).sign("gs://b/jobs/x/video.mp4", attachment="x.mp4")
    query = parse_qs(urlsplit(url).query)
    assert query["response-content-disposition"] == ['attachment; filename="x.mp4"']
    assert urlsplit(url).netloc == "storage.googleapis.com"
