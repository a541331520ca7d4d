"""What a client is shown of a job: the document as JSON, plus short-lived signed URLs for
what the job itself wrote, and where it stands in the queue; and the old /predict API's
response shape."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, cast

from ltxv.core.jobs import Job, State, to_json
from ltxv.core.results import output_prefix
from ltxv.core.signing import UrlSigner, split_gs_uri
from ltxv.intake.queue_estimates import QueueEstimates, running_estimate

# Poster URLs a list reuses: a page polled every 2 s would otherwise sign each poster
# again each time (deployed, one IAM signBlob call per URL).
POSTER_CACHE_SIZE = 2048


class JobViews:
    def __init__(
        self,
        signer: UrlSigner,
        url_minutes: int,
        queue: QueueEstimates | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.signer = signer
        self.url_minutes = url_minutes
        self.queue = queue
        self.clock = clock
        self._posters: OrderedDict[tuple[str, int | None], tuple[float, str]] = OrderedDict()
        self._lock = threading.Lock()

    def detailed(self, job: Job) -> dict[str, Any]:
        """GET /v1/jobs/{id}: the job, with `queue` (null once settled)."""
        body = self.job(job)
        body["queue"] = self.queue.for_job(job) if self.queue else None
        return body

    def listed(self, document: dict[str, Any]) -> dict[str, Any]:
        """An item of GET /v1/jobs: the job with `poster_url` when it succeeded, and `queue`
        when it runs (its own step rate: no read). A queued item leaves `queue` out: a count
        per queued item would make a page cost more the more of it waits."""
        job = cast(Job, document)
        body = to_json(job)
        if job["state"] == State.RUNNING:
            body["queue"] = running_estimate(job)
        poster = _signable(job, "poster") if job["state"] == State.SUCCEEDED else None
        if poster:
            body["poster_url"] = self._cached_poster(*poster)
        return body

    def _cached_poster(self, uri: str, generation: int | None) -> str:
        """A poster URL signed within the first half of its lifetime, so one handed out
        always has at least half of it left."""
        key, now = (uri, generation), self.clock()
        with self._lock:
            cached = self._posters.get(key)
            if cached and now - cached[0] < self.url_minutes * 30:
                self._posters.move_to_end(key)
                return cached[1]
        url = self._sign(uri, generation)
        with self._lock:
            self._posters[key] = (now, url)
            self._posters.move_to_end(key)
            while len(self._posters) > POSTER_CACHE_SIZE:
                self._posters.popitem(last=False)
        return url

    def job(self, job: Job) -> dict[str, Any]:
        """The job as the API answers it; a succeeded one with `video_url`, `download_url`
        (served as an attachment), `poster_url` and, made by an extend, `extended_url`."""
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
        extended = _signable(job, "extended")  # an extend's joined, longer video
        if extended:
            body["extended_url"] = self._sign(*extended)
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
