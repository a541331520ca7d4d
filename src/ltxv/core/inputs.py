"""Conditioning inputs: where a key's media live in the inputs bucket.

Intake writes there (uploads, inline data: URLs) and checks what a request names; the
worker reads the exact generation intake checked (the job's `inputs`, job.schema.json).
"""

from __future__ import annotations

# Each API key's own part of the inputs bucket: a condition may name an object of the
# inputs bucket only under its key's prefix, so one tenant never reads another's media.
KEYS = "keys/"
UPLOADS = "uploads/"  # POST /v1/uploads: keys/{key id}/uploads/{upload id}
INLINE = "inline/"  # data: URLs: keys/{key id}/inline/{sha256}, the same bytes once


def input_prefix(api_key_id: str) -> str:
    return f"{KEYS}{api_key_id}/"


def upload_name(api_key_id: str, upload_id: str) -> str:
    return f"{input_prefix(api_key_id)}{UPLOADS}{upload_id}"


def inline_name(api_key_id: str, sha256: str) -> str:
    return f"{input_prefix(api_key_id)}{INLINE}{sha256}"
