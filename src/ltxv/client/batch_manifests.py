"""Waiting for a prompt file's batch manifest, `results/<name>.jsonl` in the prompts bucket.

Written once every job of the upload has settled. A name dropped again is a new batch, and
the newest upload's manifest replaces an older one's: the object's metadata names the
upload generation it describes, so a client waits for its own upload's.
"""

from __future__ import annotations

import json
import time
from typing import Any

import google.cloud.storage as storage
from google.api_core import exceptions as gexc

from ltxv.client.client import ClientError, ServiceUnavailable
from ltxv.core.prompt_names import MANIFEST_GENERATION, manifest_name


class ManifestTimedOut(ClientError):
    """The batch is not complete yet (its jobs go on)."""


def wait_for_manifest(
    bucket: storage.Bucket,
    object_name: str,
    generation: str,
    *,
    timeout: float | None = None,
    poll_interval: float = 1.0,
) -> list[dict[str, Any]]:
    """The manifest's rows (the header, then one per line of the file) once this upload's
    batch is complete; ManifestTimedOut after `timeout` seconds (None: no limit)."""
    name = manifest_name(object_name)
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        try:
            blob = bucket.get_blob(name)
            described = int(((blob.metadata or {}) if blob else {}).get(MANIFEST_GENERATION, 0))
            if blob is not None and described == int(generation):
                raw = blob.download_as_bytes(if_generation_match=blob.generation)
                return [json.loads(line) for line in raw.decode("utf-8").splitlines() if line]
        except gexc.PreconditionFailed:
            described = 0  # replaced between the two reads: look again
        except gexc.NotFound:
            described = 0
        except Exception as exc:  # google.api_core errors, requests' connection errors
            raise ServiceUnavailable(f"reading gs://{bucket.name}/{name}: {exc}") from exc
        if described > int(generation):
            raise ClientError(
                f"gs://{bucket.name}/{name} now describes a newer upload (generation "
                f"{described}); this one's jobs are listed in its receipt"
            )
        if deadline is not None and time.monotonic() >= deadline:
            raise ManifestTimedOut(
                f"no manifest gs://{bucket.name}/{name} for generation {generation} after "
                f"{timeout:.0f}s; its jobs go on (ltxv list shows them)"
            )
        time.sleep(poll_interval)
