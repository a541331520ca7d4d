"""`POST /v1/uploads`: a signed URL to PUT one conditioning input to, and its gs:// URI.

The API never carries the bytes (a function's request body is capped, and a video may be
64 MiB): it names a fresh object under the caller's own prefix of the inputs bucket
(`keys/{key}/uploads/{id}`, ltxv.core.inputs) and signs a V4 PUT for exactly that object.
The signature covers headers that Cloud Storage enforces on the PUT:

- `Content-Type`: the declared type (what is stored; intake sniffs the bytes anyway);
- `x-goog-content-length-range: size,size`: any other length is refused (400);
- `x-goog-if-generation-match: 0`: the object is created only if it does not exist, so a
  replayed URL cannot replace bytes a job has already been checked against;
- `x-goog-custom-time: <now, RFC 3339 UTC, whole seconds>`: the object's Custom-Time. The
  inputs bucket's lifecycle rule deletes `keys/` objects `inputs_retention_days` after
  their Custom-Time (terraform storage.tf), and intake moves it forward whenever a job
  pins the object, so an upload a job still needs is not deleted by its creation date.
  Signed, so a client cannot leave it unset (never deleted) or date it in the past.

Nothing is written here: an upload that never happens leaves nothing behind, and what is
uploaded is deleted by the bucket's lifecycle rule (terraform `inputs_retention_days`).
What the object holds is checked when a job names it (`conditions`), not here.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from ltxv.core.inputs import upload_name
from ltxv.core.jobs import new_job_id, utcnow
from ltxv.core.profiles import ModelProfile
from ltxv.core.signing import UrlSigner
from ltxv.intake.field_errors import FieldError, RequestInvalid, schema_errors
from ltxv.intake.responses import retry_after
from ltxv.intake.upload_quota import UploadQuota

log = logging.getLogger(__name__)

# The headers a browser's PUT to the signed URL sends beyond the simple ones: the
# bucket's CORS must allow them (terraform/storage.tf; fake-gcs-server's -cors-headers).
UPLOAD_CORS_HEADERS = (
    "Content-Type",
    "x-goog-content-length-range",
    "x-goog-if-generation-match",
    "x-goog-custom-time",
)


def custom_time_header(now: datetime) -> str:
    """`now` as x-goog-custom-time takes it: RFC 3339 in UTC, whole seconds (the signed
    value is what the client must send, so it carries no sub-second digits to mangle)."""
    return now.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def upload_limits(profiles: Mapping[str, ModelProfile]) -> tuple[list[str], int]:
    """The media types and the largest size some enabled model accepts as a condition
    (none and 0 when no enabled model conditions)."""
    limits = [p.conditioning for p in profiles.values() if p.conditioning]
    types = sorted({t for limit in limits for t in limit.media_types})
    return types, max((limit.max_input_bytes for limit in limits), default=0)


def validate_upload_request(body: Any, media_types: list[str], max_bytes: int) -> dict[str, Any]:
    """The body, checked against upload-request.schema.json and this deployment's limits;
    RequestInvalid names every bad field."""
    if not isinstance(body, dict):
        raise RequestInvalid([FieldError("$", "must be a JSON object")])
    errors = schema_errors(body, "upload-request", ("content_type", "size"))
    content_type, size = body.get("content_type"), body.get("size")
    if isinstance(size, float) and size.is_integer():
        size = int(size)  # JSON Schema's integer: 5.0 is one, and signs as "5", not "5.0"
    if not media_types:
        errors.append(
            FieldError("$.content_type", "no model of this deployment accepts conditioning inputs")
        )
    elif isinstance(content_type, str) and content_type not in media_types:
        errors.append(FieldError("$.content_type", f"must be one of {media_types}"))
    if type(size) is int and size > max_bytes > 0:
        errors.append(FieldError("$.size", f"must be at most {max_bytes} bytes"))
    if errors:
        raise RequestInvalid(sorted(set(errors), key=lambda e: (e.path, e.message)))
    return {"content_type": content_type, "size": size}


class Uploads:
    def __init__(
        self,
        profiles: Mapping[str, ModelProfile],
        signer: UrlSigner,
        inputs_bucket: str,
        quota: UploadQuota,
        minutes: int = 15,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.media_types, self.max_bytes = upload_limits(profiles)
        self.signer = signer
        self.inputs_bucket = inputs_bucket
        self.quota = quota
        self.minutes = minutes
        self.clock = clock

    def create(self, body: Any, api_key_id: str) -> dict[str, Any]:
        """The upload's answer (upload.schema.json). Raises RequestInvalid for a bad body
        and HttpError 429 past the key's hourly allowance."""
        wanted = validate_upload_request(body, self.media_types, self.max_bytes)
        now = self.clock()
        wait = self.quota.take(api_key_id, now)
        if wait:
            raise retry_after(
                429,
                "too_many_uploads",
                f"this API key has minted its {self.quota.per_hour} upload URLs for this hour; "
                f"ask again in {wait} s",
                wait,
            )
        upload_id = new_job_id()
        uri = f"gs://{self.inputs_bucket}/{upload_name(api_key_id, upload_id)}"
        size = wanted["size"]
        headers = {
            "Content-Type": wanted["content_type"],
            "x-goog-content-length-range": f"{size},{size}",
            "x-goog-if-generation-match": "0",
            "x-goog-custom-time": custom_time_header(now),
        }
        url = self.signer.sign_put(uri, self.minutes, headers)
        expires = now + timedelta(minutes=self.minutes)
        log.info(
            "upload URL signed",
            extra={"api_key_id": api_key_id, "upload_id": upload_id, "bytes": size},
        )
        return {
            "upload_id": upload_id,
            "uri": uri,
            "upload_url": url,
            "method": "PUT",
            "headers": headers,
            "expires_at": expires.isoformat().replace("+00:00", "Z"),
        }
