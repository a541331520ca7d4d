"""What a client is shown of a job: the document as JSON, plus short-lived signed URLs for
what the job itself wrote; and the old /predict API's response shape."""

from __future__ import annotations

from typing import Any

from .jobs import Job, State, to_json
from .results import output_prefix
from .signing import UrlSigner, split_gs_uri


class JobViews:
    def __init__(self, signer: UrlSigner, url_minutes: int) -> None:
        self.signer = signer
        self.url_minutes = url_minutes

    def job(self, job: Job) -> dict[str, Any]:
        """The job as the API answers it; a succeeded one with `video_url`, `download_url`
        (served as an attachment) and `poster_url`."""
        body = to_json(job)
        if job["state"] != State.SUCCEEDED:
            return body
        video = _signable(job, "video")
        if video:
            body["video_url"] = self._sign(*video)
            body["download_url"] = self._sign(*video, attachment=f"{job['job_id']}.mp4")
        poster = _signable(job, "poster")
        if poster:
            body["poster_url"] = self._sign(*poster)
        return body

    def predict(self, job: Job) -> dict[str, Any]:
        """A succeeded job in the old synchronous API's shape, plus its id."""
        video = (job.get("outputs") or {})["video"]
        bucket, blob = split_gs_uri(video)
        timings = job.get("timings") or {}
        signable = _signable(job, "video")
        return {
            "video_url": self._sign(*signable) if signable else None,
            "video_path": blob,
            "seed": job["request"]["seed"],
            "gcs_bucket": bucket,
            "gcs_blob": blob,
            "generation_time_seconds": timings.get("generate_seconds"),
            "metadata": job["request"].get("metadata") or {},
            "job_id": job["job_id"],
        }

    def _sign(self, uri: str, generation: int | None, attachment: str | None = None) -> str:
        return self.signer.sign(uri, self.url_minutes, attachment=attachment, generation=generation)


def _signable(job: Job, name: str) -> tuple[str, int | None] | None:
    """(URI, generation) of an output to sign a URL for: only the generation the job itself
    wrote, so a URL never shows what someone wrote to that name later. Jobs from before
    generations were recorded: only what lies in their own jobs/ tree."""
    outputs = job.get("outputs") or {}
    uri, generation = outputs.get(name), outputs.get(f"{name}_generation")
    if not uri:
        return None
    if generation:
        return uri, int(generation)
    _, object_name = split_gs_uri(uri)
    return (uri, None) if object_name.startswith(output_prefix(job["job_id"])) else None
