"""Short-lived signed URLs for outputs, so clients can fetch videos from private buckets."""

from __future__ import annotations

from datetime import timedelta

import google.auth
import google.auth.transport.requests
from google.cloud import storage
from google.oauth2 import service_account


def split_gs_uri(uri: str) -> tuple[str, str]:
    if not uri.startswith("gs://") or "/" not in uri[5:]:
        raise ValueError(f"not a gs://bucket/object URI: {uri!r}")
    bucket, _, name = uri[5:].partition("/")
    return bucket, name


class UrlSigner:
    """Signs V4 GET URLs with a key file (local stack) or through IAM signBlob (deployed).

    On Cloud Run functions and GCE the runtime credentials hold no private key; the
    library then signs remotely with the service account's own access token, which needs
    roles/iam.serviceAccountTokenCreator on that account (terraform grants it).
    """

    def __init__(
        self,
        client: storage.Client,
        credentials_file: str | None = None,
        endpoint: str = "https://storage.googleapis.com",
    ) -> None:
        self.client = client
        self._key_credentials = (
            service_account.Credentials.from_service_account_file(credentials_file)
            if credentials_file
            else None
        )
        self.endpoint = endpoint

    def sign(self, gs_uri: str, minutes: int = 60, *, attachment: str | None = None) -> str:
        """A V4 GET URL; with `attachment`, Cloud Storage serves the object as a download of
        that file name (`response-content-disposition`, part of what is signed)."""
        bucket, name = split_gs_uri(gs_uri)
        blob = self.client.bucket(bucket).blob(name)
        options = {
            "version": "v4",
            "method": "GET",
            "expiration": timedelta(minutes=minutes),
            "api_access_endpoint": self.endpoint,
        }
        if attachment:
            options["response_disposition"] = f'attachment; filename="{attachment}"'

        if self._key_credentials is not None:
            return blob.generate_signed_url(credentials=self._key_credentials, **options)
        credentials, _ = google.auth.default()
        credentials.refresh(google.auth.transport.requests.Request())
        return blob.generate_signed_url(
            service_account_email=credentials.service_account_email,
            access_token=credentials.token,
            **options,
        )
