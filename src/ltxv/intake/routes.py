"""The HTTP API's routes, and the formats of what a request names in its path and headers.

One table for two readers: `api.JobsApi` dispatches on `ROUTES` and checks requests with
these patterns, and `openapi.document` lists its paths from `ROUTES` and states the same
patterns, so the document cannot describe a route or a format the API does not have.
"""

from __future__ import annotations

import re

from werkzeug.routing import Map, Rule

from ltxv.core import schemas

# A job id as job.schema.json states it (26 base32 characters, jobs.new_job_id).
JOB_ID = re.compile(schemas.load("job")["properties"]["job_id"]["pattern"])
IDEMPOTENCY_KEY = re.compile(r"^[\x21-\x7e]{1,255}$")
# GET /v1/jobs: its query parameters, in the order the document lists them.
LIST_PARAMS = ("state", "page_size", "page_token")
MAX_PAGE_SIZE = 100

# In the order the document lists them: the API, then the web page's own files.
ROUTES = Map(
    [
        Rule("/v1/jobs", endpoint="create_job", methods=["POST"]),
        Rule("/v1/jobs", endpoint="list_jobs", methods=["GET"]),
        Rule("/v1/jobs/<job_id>", endpoint="get_job", methods=["GET"]),
        Rule("/v1/jobs/<job_id>/events", endpoint="job_events", methods=["GET"]),
        Rule("/v1/jobs/<job_id>/cancel", endpoint="cancel_job", methods=["POST"]),
        Rule("/v1/jobs/<job_id>/retry", endpoint="retry_job", methods=["POST"]),
        Rule("/v1/jobs/<job_id>/webhook/redeliver", endpoint="redeliver_webhook", methods=["POST"]),
        Rule("/v1/uploads", endpoint="create_upload", methods=["POST"]),
        Rule("/predict", endpoint="predict", methods=["POST"]),
        Rule("/v1/webhooks/secret", endpoint="webhook_secret", methods=["GET"]),
        Rule("/healthz", endpoint="health", methods=["GET"]),
        Rule("/health", endpoint="health", methods=["GET"]),
        Rule("/openapi.json", endpoint="openapi", methods=["GET"]),
        Rule("/", endpoint="page", methods=["GET"]),
        Rule("/assets/<path:name>", endpoint="asset", methods=["GET"]),
    ],
    strict_slashes=False,
    # Merging would answer `//x` with a redirect (RequestRedirect); an API has no use for
    # one, so such a path simply matches no route.
    merge_slashes=False,
)
# The web page (docs/web.md): served beside the API, not part of its document.
PAGE_ENDPOINTS = frozenset({"page", "asset"})

_ARGUMENT = re.compile(r"<(?:[^:<>]+:)?([^<>]+)>")


def openapi_path(rule: Rule) -> str:
    """A rule's path as OpenAPI writes it: `/v1/jobs/<job_id>` is `/v1/jobs/{job_id}`."""
    return _ARGUMENT.sub(r"{\1}", rule.rule)


def methods(rule: Rule) -> list[str]:
    """The methods a rule was declared with (werkzeug adds HEAD to every GET)."""
    return sorted(rule.methods - {"HEAD", "OPTIONS"} if rule.methods else ())
