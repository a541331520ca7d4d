"""Cloud Function entry points for intake.

- `api` (HTTP): the jobs API, the old /predict, health and the OpenAPI document.
- `prompt_file` (CloudEvent, storage object finalized): prompt files under incoming/.
- `redispatch` (CloudEvent, Pub/Sub message from Cloud Scheduler): publishes jobs that a
  crash left recorded but unpublished.

Thin on purpose: everything here is wiring; the logic lives in the `ltxv` package.
"""

from __future__ import annotations

from datetime import timedelta
from functools import cache

import functions_framework
from cloudevents.http import CloudEvent
from flask import Request, Response

from ltxv.api import JobsApi, framework_error
from ltxv.prompt_files import PromptFiles
from ltxv.service import Service


@cache
def _service() -> Service:
    return Service.for_function("submit")


@cache
def _api() -> JobsApi:
    return JobsApi(_service())


@cache
def _prompt_files() -> PromptFiles:
    service = _service()
    settings = service.settings
    return PromptFiles(
        service.intake,
        service.storage,
        prompts_bucket=settings.prompts,
        owner=settings.prompt_file_owner,
        max_bytes=settings.prompt_file_max_bytes,
        max_lines=settings.prompt_file_max_lines,
    )


# Some requests never reach `api` (a path with a newline, say); answer those in JSON too.
for _status in (400, 404, 405, 413):
    functions_framework.errorhandler(_status)(framework_error)


@functions_framework.http
def api(request: Request) -> Response:
    return _api()(request)


@functions_framework.cloud_event
def prompt_file(event: CloudEvent) -> None:
    data = event.get_data() or {}
    _prompt_files().handle(
        bucket=data.get("bucket", ""),
        name=data.get("name", ""),
        generation=str(data.get("generation", "0")),
        size=int(data["size"]) if data.get("size") is not None else None,
    )


@functions_framework.cloud_event
def redispatch(event: CloudEvent) -> None:
    service = _service()
    service.intake.redispatch(timedelta(seconds=service.settings.redispatch_after_seconds))
