"""The client's calls for conditioned jobs: upload a medium, continue a finished video.

    uri = client.upload("first.png")                       # POST /v1/uploads, then PUT
    job = client.submit("a fox wakes up", conditions=[{"image": uri, "frame_index": 0}])
    more = client.extend(job["job_id"], frames=9)          # its last 9 frames, continued

`Client` inherits these; they live here so that client.py stays about plain jobs.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import requests

from ltxv.core.media_types import sniff

# What a job continued by `extend` takes over from the job it continues, unless given:
# the look and length of the video, not where it goes (gcs_destination, webhook_url) or
# what it carries (metadata).
CONTINUED_FIELDS = (
    "prompt",
    "negative_prompt",
    "model",
    "width",
    "height",
    "num_frames",
    "num_inference_steps",
    "fps",
)
FRAME_STEP = 8  # LTX lengths are 8k + 1


def read_media(source: str | Path | bytes) -> bytes:
    if isinstance(source, bytes):
        return source
    try:
        return Path(source).read_bytes()
    except OSError as exc:
        # Imported here: client.py imports this module while it is still being defined.
        from ltxv.client.client import ClientError

        raise ClientError(f"cannot read {source}: {exc.strerror}") from None


class ConditioningCalls:
    """Mixed into `Client`, which provides these."""

    if TYPE_CHECKING:
        timeout: float

        def _call(self, method: str, path: str, *, retry_429: bool = True, **kw: Any) -> Any: ...

        def get(self, job_id: str) -> dict[str, Any]: ...

        def submit(
            self, prompt: str | None = None, *, idempotency_key: str | None = None, **fields: Any
        ) -> dict[str, Any]: ...

    def upload(self, source: str | Path | bytes, content_type: str | None = None) -> str:
        """Put an image or video into this key's part of the inputs bucket; returns its
        `gs://` URI, to name in `conditions`. POST /v1/uploads asks for a short-lived signed
        URL, and the bytes go straight to storage with the headers it requires."""
        from ltxv.client.client import ClientError, ServiceUnavailable

        data = read_media(source)
        content_type = content_type or sniff(data)
        if content_type is None:
            raise ClientError(
                f"{source if not isinstance(source, bytes) else 'the bytes'}: not a PNG, "
                "JPEG or WebP image nor an MP4, WebM or QuickTime video"
            )
        ticket = self._call(
            "POST", "/v1/uploads", json={"content_type": content_type, "size": len(data)}
        )
        headers = dict(ticket.get("headers") or {})
        headers.setdefault("Content-Type", content_type)
        try:
            # The signed URL is its own authorisation: the API key must not travel there.
            response = requests.request(
                ticket.get("method", "PUT"),
                ticket["upload_url"],
                data=data,
                headers=headers,
                timeout=max(self.timeout, 120.0),
            )
        except requests.RequestException as exc:
            raise ServiceUnavailable(f"uploading to {ticket['uri']}: {exc}") from exc
        if response.status_code >= 500:
            raise ServiceUnavailable(f"uploading to {ticket['uri']}: HTTP {response.status_code}")
        if response.status_code >= 300:
            raise ClientError(
                f"uploading to {ticket['uri']}: HTTP {response.status_code} "
                f"{response.text.strip()[:200]}"
            )
        return str(ticket["uri"])

    def extend(
        self,
        job_id: str,
        frames: int = 9,
        *,
        idempotency_key: str | None = None,
        **fields: Any,
    ) -> dict[str, Any]:
        """A new job that continues a succeeded job of this key from its last `frames`
        frames (8k + 1). Prompt, size, model, steps and fps are the earlier job's unless
        given; its length too, or `frames + 8` when that is longer (a new job must be longer
        than what it continues from)."""
        earlier = self.get(job_id)["request"]
        body = {name: earlier[name] for name in CONTINUED_FIELDS if name in earlier}
        if "num_frames" not in fields:
            body["num_frames"] = max(body.get("num_frames", 0), frames + FRAME_STEP)
        body.update(fields)
        body["extend"] = {"job_id": job_id, "frames": frames}
        return self.submit(idempotency_key=idempotency_key, **body)
