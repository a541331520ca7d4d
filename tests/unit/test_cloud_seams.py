"""The two calls that only work against real GCP, checked at their narrowest seams."""

from __future__ import annotations

import json
from types import SimpleNamespace
from urllib.parse import parse_qs, urlsplit

from google.auth.credentials import AnonymousCredentials
from google.cloud import storage

from ltxv.core import secrets, signing
from ltxv.intake.auth import KeyRing, generate_api_key, hash_api_key


def test_api_key_hashes_are_read_from_the_latest_secret_version(monkeypatch):
    key = generate_api_key()
    asked = []

    class FakeSecretManager:  # stands in for Secret Manager's remote API only
        def access_secret_version(self, name, timeout):
            asked.append((name, timeout))
            payload = json.dumps({"ops": hash_api_key(key)}).encode()
            return SimpleNamespace(payload=SimpleNamespace(data=payload))

    from google.cloud import secretmanager

    monkeypatch.setattr(secretmanager, "SecretManagerServiceClient", FakeSecretManager)
    secrets._secret_client.cache_clear()
    ring = KeyRing(lambda: secrets.read_secret("projects/p/secrets/ltxv-api-keys"))
    assert ring.authenticate(key) == "ops"
    assert ring.authenticate("ltxv_wrong") is None
    assert asked == [("projects/p/secrets/ltxv-api-keys/versions/latest", 10.0)]
    secrets._secret_client.cache_clear()


def test_deployed_signing_goes_through_iam_with_the_runtime_identity(monkeypatch):
    """On Cloud Run the credentials hold no key: the URL is signed via IAM signBlob."""
    monkeypatch.delenv("STORAGE_EMULATOR_HOST", raising=False)
    signed_with = []

    refreshed = []

    class RuntimeCredentials:  # what google.auth.default() gives on Cloud Run / GCE
        service_account_email = "submit@proj.iam.gserviceaccount.com"
        token = None

        @property
        def valid(self):
            return self.token is not None

        def refresh(self, request):
            refreshed.append(request)
            self.token = "ya29.token"

    monkeypatch.setattr(signing.google.auth, "default", lambda: (RuntimeCredentials(), "proj"))

    def iam_sign_blob(message, access_token, service_account_email, *_universe):
        """The library's one call to IAM credentials' signBlob endpoint."""
        signed_with.append((service_account_email, access_token))
        return "c2lnbmF0dXJl"

    from google.cloud.storage import _signing

    monkeypatch.setattr(_signing, "_sign_message", iam_sign_blob)
    client = storage.Client(project="proj", credentials=AnonymousCredentials())
    url = signing.UrlSigner(client).sign("gs://proj-outputs/jobs/abc/video.mp4", minutes=15)
    parts = urlsplit(url)
    assert parts.netloc == "storage.googleapis.com"
    assert parts.path == "/proj-outputs/jobs/abc/video.mp4"
    query = parse_qs(parts.query)
    assert query["X-Goog-Expires"] == ["900"]
    assert query["X-Goog-Credential"][0].startswith("submit@proj.iam.gserviceaccount.com/")
    assert signed_with == [("submit@proj.iam.gserviceaccount.com", "ya29.token")]
    signer = signing.UrlSigner(client)
    for _ in range(5):
        signer.sign("gs://proj-outputs/jobs/abc/video.mp4")
    # One token for all of them: the URL signing does not ask the metadata server each time.
    assert len(refreshed) == 2  # one per signer
    # And not with google.auth's default of 120 s: every signing waits behind a refresh.
    assert refreshed[0].__call__.__kwdefaults__["timeout"] == signing.REFRESH_TIMEOUT_SECONDS
