"""Short-lived signed URLs: GET for outputs, so clients can fetch videos from private
buckets; PUT for uploads, so clients can write one named input object and nothing else."""

from __future__ import annotations

import threading
from datetime import timedelta
from typing import Any, Protocol, cast

import google.auth
import google.auth.transport.requests
import google.cloud.storage as storage
from google.oauth2 import service_account

REFRESH_TIMEOUT_SECONDS = 10.0


class _RuntimeCredentials(Protocol):
    """What signing needs of the runtime's credentials (google.auth.default() on Cloud Run
    and GCE: the metadata server's service account), beyond google.auth's base class."""

    @property
    def valid(self) -> bool: ...

    @property
    def token(self) -> str: ...  # live once `valid`

    @property
    def service_account_email(self) -> str: ...

    def refresh(self, request: google.auth.transport.Request) -> None: ...


def split_gs_uri(uri: str) -> tuple[str, str]:
    if not uri.startswith("gs://") or "/" not in uri[5:]:
        raise ValueError(f"not a gs://bucket/object URI: {uri!r}")
    bucket, _, name = uri[5:].partition("/")
    return bucket, name


class UrlSigner:
    """Signs V4 URLs with a key file (local stack) or through IAM signBlob (deployed).

    On Cloud Run functions and GCE the runtime credentials hold no private key; the
    library then signs remotely with the service account's own access token, which needs
    roles/iam.serviceAccountTokenCreator on that account (terraform grants it). The token
    is fetched once and again only when it expires, not per URL: a GET of a finished job
    signs three URLs, and a list page or a busy poller many more.
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
        self._runtime_credentials: _RuntimeCredentials | None = None
        self._lock = threading.Lock()

    def sign(
        self,
        gs_uri: str,
        minutes: int = 60,
        *,
        attachment: str | None = None,
        generation: int | None = None,
    ) -> str:
        """A V4 GET URL; with `attachment`, Cloud Storage serves the object as a download of
        that file name (`response-content-disposition`, part of what is signed); with
        `generation`, only that generation of the object (another one is a 404)."""
        options = self._options("GET", minutes)
        if generation is not None:
            options["generation"] = generation
        if attachment:
            options["response_disposition"] = f'attachment; filename="{attachment}"'
        return self._signed(gs_uri, options)

    def sign_put(self, gs_uri: str, minutes: int, headers: dict[str, str]) -> str:
        """A V4 PUT URL for exactly that object. Every header in `headers` (Content-Type
        included) is part of the signature: the PUT must send each with exactly that value,
        or Cloud Storage refuses it."""
        return self._signed(gs_uri, {**self._options("PUT", minutes), "headers": dict(headers)})

    def _options(self, method: str, minutes: int) -> dict[str, Any]:
        return {
            "version": "v4",
            "method": method,
            "expiration": timedelta(minutes=minutes),
            "api_access_endpoint": self.endpoint,
        }

    def _signed(self, gs_uri: str, options: dict[str, Any]) -> str:
        bucket, name = split_gs_uri(gs_uri)
        blob = self.client.bucket(bucket).blob(name)
        if self._key_credentials is not None:
            return blob.generate_signed_url(credentials=self._key_credentials, **options)
        email, token = self._runtime_identity()
        return blob.generate_signed_url(service_account_email=email, access_token=token, **options)

    def _runtime_identity(self) -> tuple[str, str]:
        """The runtime service account and a live access token for it (google.auth's
        errors, e.g. RefreshError, reach the caller as the backend errors they are)."""
        with self._lock:
            if self._runtime_credentials is None:
                found, _ = google.auth.default()
                self._runtime_credentials = cast(_RuntimeCredentials, found)
            credentials = self._runtime_credentials
            if not credentials.valid:
                credentials.refresh(_BoundedRequest())
            return credentials.service_account_email, credentials.token


class _BoundedRequest(google.auth.transport.requests.Request):
    """google.auth's transport, with a timeout fit for a request path: its default is
    120 s, and every signing in the process waits behind a refresh."""

    def __call__(self, *args: Any, timeout: float = REFRESH_TIMEOUT_SECONDS, **kwargs: Any) -> Any:
        kwargs["timeout"] = timeout
        return super().__call__(*args, **kwargs)
