"""Keeping an input alive while jobs still pin it.

The inputs bucket's lifecycle deletes `keys/` objects some days after their custom_time
(terraform: days_since_custom_time), not after their creation: a data: URL's stored copy
or an upload may be pinned again long after it was made. Intake stamps custom_time when
it stores an object and renews it whenever a submit pins one whose stamp is older than
TOUCH_AFTER (at most one metadata write a day per object). A job queued longer than the
retention after its inputs were last pinned can still lose them (input_unavailable).

The renewal happens before the generation is pinned: on Cloud Storage a metadata patch
keeps the generation, but fake-gcs-server (the local stack) gives the patched object a
new one and drops the old, which a job pinned before the patch could no longer read.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

import google.cloud.storage as storage
import requests

from ltxv.core.errors import BACKEND_ERRORS

log = logging.getLogger(__name__)

TOUCH_AFTER = timedelta(days=1)
RPC_SECONDS = 30.0


def now_stamp() -> datetime:
    """custom_time's value for now (Cloud Storage keeps it to the second)."""
    return datetime.now(UTC).replace(microsecond=0)


def keep(blob: storage.Blob) -> storage.Blob:
    """`blob`, its metadata just read, with custom_time renewed if unset or older than
    TOUCH_AFTER: a patch conditioned on the generation read, so a replaced object is
    never stamped. A failure is logged and the request goes on (the object is there now;
    only its later life is shorter)."""
    stamp = now_stamp()
    if blob.custom_time is not None and stamp - blob.custom_time < TOUCH_AFTER:
        return blob
    generation = blob.generation
    blob.custom_time = stamp
    try:
        blob.patch(if_generation_match=generation, timeout=RPC_SECONDS)
    except (*BACKEND_ERRORS, requests.RequestException) as exc:
        log.warning(
            "input's custom_time not renewed; it may be deleted sooner",
            extra={"object": f"gs://{blob.bucket.name}/{blob.name}", "error": str(exc)},
        )
    return blob
