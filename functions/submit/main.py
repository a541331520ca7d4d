"""Cloud Function entry points for intake.

- `api` (HTTP): the jobs API, the old /predict, health and the OpenAPI document.
- `prompt_file` (CloudEvent, storage object finalized): prompt files under incoming/.
- `redispatch` (CloudEvent, Pub/Sub message from Cloud Scheduler): the sweep; fails queued
  jobs past their queue deadline and publishes jobs that a crash left recorded but
  unpublished.

Thin on purpose: the wiring is in `ltxv.intake.compose`, the logic in the `ltxv` package.
"""

from __future__ import annotations

from functools import cache

import functions_framework
from cloudevents.http import CloudEvent
from flask import Request, Response

from ltxv.core.compose import settings_for
from ltxv.intake import compose as compose_submit
from ltxv.intake.responses import framework_error

# Each entry point is deployed as a function of its own: its process builds its parts
# (`compose_submit`, one root per entry point) at its first event, not at import.
_api = cache(lambda: compose_submit.api(settings_for("submit")))
_prompt_files = cache(lambda: compose_submit.prompt_file(settings_for("submit")))
_redispatch = cache(lambda: compose_submit.redispatch(settings_for("submit")))


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
    _redispatch()()
