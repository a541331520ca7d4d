"""A job's files in Cloud Storage: written once, by the job that owns them, never over
anyone else's.

Every object is created with `if_generation_match=0` and labelled with the job's id
(custom metadata `ltxv-job-id`). If the name is taken, it is replaced only when the label
says this same job wrote it (an earlier attempt that crashed before finishing, or this
upload's own request retried after its answer was lost), and only that exact generation;
anything else fails the job with `destination_exists`. The generation written is recorded
on the job, and the API signs URLs for that generation alone, so a later write to the same
name (by whoever may write there) never shows up under this job.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import google.cloud.storage as storage
from google.api_core import exceptions as gexc
from google.cloud.storage.retry import DEFAULT_RETRY

from ltxv.core.jobs import Job
from ltxv.core.results import RESULT_NAME, output_prefix
from ltxv.core.signing import split_gs_uri

from .joined_video import EXTENDED_NAME

log = logging.getLogger(__name__)

JOB_LABEL = "ltxv-job-id"


class DestinationTaken(Exception):
    """The job's destination holds an object another writer put there."""

    def __init__(self, uri: str) -> None:
        super().__init__(f"{uri} already exists; a destination is never overwritten")
        self.uri = uri


@dataclass(frozen=True)
class Target:
    bucket: str
    name: str

    @property
    def uri(self) -> str:
        return f"gs://{self.bucket}/{self.name}"


class JobOutputs:
    def __init__(
        self, client: storage.Client, outputs_bucket: str, retry_seconds: float = 60.0
    ) -> None:
        self.client = client
        self.outputs_bucket = outputs_bucket
        # Conditional writes are safe to retry (a repeat is refused, not duplicated);
        # past the deadline the job is requeued instead.
        self.retry = DEFAULT_RETRY.with_timeout(retry_seconds)

    def video_target(self, job: Job) -> Target:
        destination = job["request"].get("gcs_destination")
        if destination:
            return Target(*split_gs_uri(destination))
        return Target(self.outputs_bucket, output_prefix(job["job_id"]) + "video.mp4")

    def check_destination(self, job: Job) -> None:
        """Before spending GPU time: raise DestinationTaken if the video's name is taken
        by another writer (the upload's precondition stays the authority)."""
        target = self.video_target(job)
        blob = self.client.bucket(target.bucket).get_blob(target.name, retry=self.retry)
        if blob is not None and not _written_by(blob, job["job_id"]):
            raise DestinationTaken(target.uri)

    def upload(self, job: Job, folder: Path) -> dict[str, str]:
        """Upload the video, poster and (an extend's) joined video; the job's `outputs`
        (URIs and generations)."""
        job_id = job["job_id"]
        video = self.video_target(job)
        poster = Target(self.outputs_bucket, output_prefix(job_id) + "poster.jpg")
        video_generation = self._create(video, folder / "video.mp4", "video/mp4", job_id, 300)
        poster_generation = self._create(poster, folder / "poster.jpg", "image/jpeg", job_id, 60)
        outputs = {
            "video": video.uri,
            "video_generation": str(video_generation),
            "poster": poster.uri,
            "poster_generation": str(poster_generation),
            "result": f"gs://{self.outputs_bucket}/{output_prefix(job_id)}{RESULT_NAME}",
        }
        if (folder / EXTENDED_NAME).exists():
            # Always in the job's own tree: gcs_destination redirects the video alone.
            joined = Target(self.outputs_bucket, output_prefix(job_id) + EXTENDED_NAME)
            generation = self._create(joined, folder / EXTENDED_NAME, "video/mp4", job_id, 300)
            outputs.update(extended=joined.uri, extended_generation=str(generation))
        return outputs

    def _create(
        self, target: Target, path: Path, content_type: str, job_id: str, timeout: int
    ) -> int:
        bucket = self.client.bucket(target.bucket)
        expected = 0  # nothing there
        for _ in range(3):
            blob = bucket.blob(target.name)
            blob.metadata = {JOB_LABEL: job_id}
            try:
                blob.upload_from_filename(
                    path,
                    content_type=content_type,
                    if_generation_match=expected,
                    timeout=timeout,
                    retry=self.retry,
                )
                return blob.generation
            except gexc.PreconditionFailed:
                existing = bucket.get_blob(target.name, retry=self.retry)
                if existing is not None and not _written_by(existing, job_id):
                    raise DestinationTaken(target.uri) from None
                # Gone again, or this job's own: try once more against what is there now.
                expected = existing.generation if existing is not None else 0
                log.info("replacing this job's earlier upload", extra={"object": target.uri})
        raise RuntimeError(f"{target.uri} kept changing while it was uploaded")


def _written_by(blob: storage.Blob, job_id: str) -> bool:
    return (blob.metadata or {}).get(JOB_LABEL) == job_id
