"""The OpenAPI 3.1 document of the HTTP API, assembled from the JSON Schemas in schemas/.

OpenAPI 3.1 speaks JSON Schema 2020-12, so the files are embedded as components as they
are; only their `$ref`s are rewritten from schema ids to component pointers. The paths are
the API's routes (`routes.ROUTES`), each described by its endpoint's entry here, and the
patterns are the ones the API checks requests with (`routes.JOB_ID`, ...).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from ltxv.core import schemas
from ltxv.core.jobs import State
from ltxv.core.profiles import ModelProfile
from ltxv.core.webhook_secrets import SECRET_PREFIX
from ltxv.intake.routes import (
    IDEMPOTENCY_KEY,
    JOB_ID,
    LIST_PARAMS,
    MAX_PAGE_SIZE,
    PAGE_ENDPOINTS,
    ROUTES,
    methods,
    openapi_path,
)
from ltxv.intake.uploads import upload_limits
from ltxv.intake.validation import request_rules

COMPONENTS = {
    "job-request": "JobRequest",
    "job": "Job",
    "result": "JobResult",
    "webhook-event": "WebhookEvent",
    "receipt": "PromptFileReceipt",
    "prompt-file": "PromptFileBatch",
    "batch-manifest": "BatchManifest",
    "error": "Error",
    "predict-response": "PredictResponse",
    "upload-request": "UploadRequest",
    "upload": "Upload",
}


def _component_ref(ref: str, current: str) -> str:
    target, _, fragment = ref.partition("#")
    name = current
    if target:
        short = next(n for n in COMPONENTS if schemas.schema_id(n) == target)
        name = COMPONENTS[short]
    return f"#/components/schemas/{name}{fragment}"


def _rewrite(node: Any, current: str) -> Any:
    if isinstance(node, dict):
        return {
            key: _component_ref(value, current) if key == "$ref" else _rewrite(value, current)
            for key, value in node.items()
            if key not in ("$id", "$schema")
        }
    if isinstance(node, list):
        return [_rewrite(item, current) for item in node]
    return node


def _json(schema_ref: str, description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": schema_ref}}},
    }


def _errors(*statuses: int) -> dict[str, Any]:
    meaning = {
        400: "Malformed JSON or invalid header/query parameter",
        401: "Missing or invalid API key",
        404: "No such job for this API key",
        405: "Method not allowed on this path",
        409: "Conflict (Idempotency-Key reused with another body, a job already settled, "
        "or a retry of a job that did not fail and was not canceled)",
        413: "Request body larger than the documented limit",
        415: "Content-Type is not application/json",
        422: "The request is invalid; details name every field by JSON path",
        429: "This API key has its limit of jobs queued or running; retry once some finish",
        503: "A backend is unavailable; nothing was accepted, retry",
        504: "The job did not finish in time; it goes on (see Location)",
    }
    return {str(s): _json("#/components/schemas/Error", meaning[s]) for s in statuses}


RULES_EXTENSION = "x-ltxv-request-rules"
JOB = "#/components/schemas/Job"
UPLOAD = "#/components/schemas/UploadRequest"


def _extra_components() -> dict[str, Any]:
    """The response shapes that have no file in schemas/."""
    secret = {"type": "string", "pattern": "^" + re.escape(SECRET_PREFIX)}
    return {
        "JobList": {
            "type": "object",
            "additionalProperties": False,
            "required": ["jobs", "next_page_token", "usage_total"],
            "properties": {
                "jobs": {"type": "array", "items": {"$ref": JOB}},
                "next_page_token": {"type": ["string", "null"]},
                "usage_total": {"$ref": JOB + "/$defs/usage_total"},
            },
        },
        "WebhookSecret": {
            "type": "object",
            "additionalProperties": False,
            "required": ["key_id", "secret", "secrets"],
            "properties": {
                "key_id": {"type": "string", "description": "The API key these secrets belong to."},
                "secret": {
                    **secret,
                    "description": "The current secret: verify deliveries with it.",
                },
                "secrets": {
                    "type": "array",
                    "minItems": 1,
                    "items": secret,
                    "description": "Every secret that signs this key's events, current first "
                    "(two during a rotation: each delivery carries a signature by each).",
                },
            },
        },
        "WebhookRecord": {"$ref": JOB + "/$defs/webhook_record"},
        "Health": {
            "type": "object",
            "required": ["status"],
            "properties": {"status": {"const": "ok"}},
        },
    }


def _operations(max_body_bytes: int) -> dict[str, dict[str, Any]]:
    """What each endpoint of `routes.ROUTES` does, by endpoint name."""
    body = {
        "required": True,
        "description": f"At most {max_body_bytes} bytes.",
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/JobRequest"}}},
    }
    job_id_param = {
        "name": "job_id",
        "in": "path",
        "required": True,
        "schema": {"type": "string", "pattern": JOB_ID.pattern},
    }
    idempotency = {
        "name": "Idempotency-Key",
        "in": "header",
        "required": False,
        "description": "Replays with the same key and body return the same job; "
        "another body is 409.",
        "schema": {"type": "string", "pattern": IDEMPOTENCY_KEY.pattern},
    }
    prefer = {
        "name": "Prefer",
        "in": "header",
        "required": False,
        "description": "wait=N: answer when the job settles, or after N seconds (capped).",
        "schema": {"type": "string"},
    }
    list_params = {
        "state": {"type": "string", "enum": [state.value for state in State]},
        "page_size": {"type": "integer", "minimum": 1, "maximum": MAX_PAGE_SIZE},
        "page_token": {"type": "string"},
    }
    return {
        "create_job": {
            "operationId": "createJob",
            "summary": "Submit a job",
            "parameters": [idempotency, prefer],
            "requestBody": body,
            "responses": {
                "200": _json(JOB, "Finished within Prefer: wait"),
                "202": _json(JOB, "Accepted (queued or running)"),
                **_errors(400, 401, 409, 413, 415, 422, 429, 503),
            },
        },
        "list_jobs": {
            "operationId": "listJobs",
            "summary": "This key's jobs, newest first",
            "parameters": [
                {"name": name, "in": "query", "schema": list_params[name]} for name in LIST_PARAMS
            ],
            "responses": {
                "200": _json(
                    "#/components/schemas/JobList",
                    "A page of jobs, and usage_total: their GPU seconds, cost and how many "
                    "used a GPU, summed over this page (not all time)",
                ),
                **_errors(400, 401, 503),
            },
        },
        "get_job": {
            "operationId": "getJob",
            "summary": "A job, with a signed video URL once it succeeded",
            "parameters": [job_id_param],
            "responses": {"200": _json(JOB, "The job"), **_errors(401, 404, 503)},
        },
        "job_events": {
            "operationId": "jobEvents",
            "summary": "The job's state changes and progress as Server-Sent Events, until "
            "it settles",
            "description": "`event: state` (first on each connection, and on each change of "
            "state, attempts, cancel request or error) and `event: progress` (the "
            "denoising step moved), each with the job as `GET /v1/jobs/{job_id}` answers "
            "it as `data` and an `id`; `: keep-alive` comments while nothing changes. The "
            "stream ends after a settled job's event, or after its lifetime with a "
            "`retry:` field: reconnect with `Last-Event-ID`. Streams per instance and per "
            "key are capped (429/503: poll instead).",
            "parameters": [
                job_id_param,
                {
                    "name": "Last-Event-ID",
                    "in": "header",
                    "required": False,
                    "description": "The id of the last event received: only what changed "
                    "since is sent.",
                    "schema": {"type": "string"},
                },
            ],
            "responses": {
                "200": {
                    "description": "An event stream (text/event-stream)",
                    "content": {"text/event-stream": {"schema": {"type": "string"}}},
                },
                "204": {"description": "The job settled and Last-Event-ID is its last event"},
                **_errors(400, 401, 404),
                "429": _json(
                    "#/components/schemas/Error",
                    "This API key has its limit of event streams open; poll instead",
                ),
                **_errors(503),
            },
        },
        "cancel_job": {
            "operationId": "cancelJob",
            "summary": "Cancel: a queued job at once, a running one between steps",
            "parameters": [job_id_param],
            "responses": {
                "200": _json(JOB, "Canceled"),
                "202": _json(JOB, "Cancel requested; the worker stops the render"),
                **_errors(401, 404, 409, 503),
            },
        },
        "retry_job": {
            "operationId": "retryJob",
            "summary": "Run a failed or canceled job's request again as a new job "
            "(parent_job_id names the old one); no body",
            "description": "The stored request passes the current validation again (422 "
            "names a field that no longer does) and counts against the key's jobs in "
            "flight. A queued, running or succeeded job is 409 not_retryable.",
            "parameters": [
                job_id_param,
                {
                    **idempotency,
                    "description": "Repeats of a retry of the same job with the same key "
                    "return the same new job; without it each retry is a new job.",
                },
                prefer,
            ],
            "responses": {
                "200": _json(JOB, "The new job, finished within Prefer: wait"),
                "202": _json(JOB, "The new job, accepted (queued or running)"),
                **_errors(400, 401, 404, 409, 422, 429, 503),
            },
        },
        "redeliver_webhook": {
            "operationId": "redeliverWebhook",
            "summary": "Send the job's settled event again (same webhook-id), as one more "
            "attempt on its webhook record; no body",
            "description": "Allowed once the job and the delivery of its settled event have "
            "settled (webhook state delivered or failed); otherwise 409 (no_webhook, "
            "job_not_settled, webhook_not_requested, webhook_delivery_pending). At most one "
            "redelivery per LTXV_WEBHOOK_REDELIVERY_INTERVAL_SECONDS (60) and "
            "LTXV_WEBHOOK_REDELIVERIES_MAX (10) per job: 429 too_many_redeliveries with "
            "Retry-After, or redelivery_limit_reached. Each redelivery is exactly one attempt, "
            "sent by the notify function; follow it on GET /v1/jobs/{job_id} (webhook).",
            "parameters": [job_id_param],
            "responses": {
                "202": _json(
                    "#/components/schemas/WebhookRecord",
                    "Redelivery recorded (state pending); the attempt follows",
                ),
                **_errors(401, 404, 409, 503),
                "429": _json(
                    "#/components/schemas/Error",
                    "Redelivered too recently (see Retry-After), or the job's limit reached",
                ),
            },
        },
        "create_upload": {
            "operationId": "createUpload",
            "summary": "A signed URL to PUT one conditioning input to, and its gs:// URI",
            "description": "PUT the file to upload_url with every header in headers, exactly "
            "as given, before expires_at; it writes only that object, once, of `size` bytes. "
            "Name `uri` in a job's conditions, which checks the bytes. At most "
            "LTXV_UPLOADS_PER_HOUR (200) per key and hour: 429 too_many_uploads.",
            "requestBody": {**body, "content": {"application/json": {"schema": {"$ref": UPLOAD}}}},
            "responses": {
                "201": _json("#/components/schemas/Upload", "Where and how to PUT the file"),
                **_errors(400, 401, 413, 415, 422, 503),
                "429": _json("#/components/schemas/Error", "Upload URLs for this hour used up"),
            },
        },
        "predict": {
            "operationId": "predict",
            "summary": "The old synchronous API: waits for the video",
            "parameters": [idempotency],
            "requestBody": body,
            "responses": {
                "200": _json("#/components/schemas/PredictResponse", "The video"),
                **_errors(400, 401, 409, 413, 415, 422, 429, 503, 504),
            },
        },
        "webhook_secret": {
            "operationId": "getWebhookSecret",
            "summary": "This key's webhook signing secret (Standard Webhooks, whsec_)",
            "responses": {
                "200": _json("#/components/schemas/WebhookSecret", "The secrets"),
                "404": _json("#/components/schemas/Error", "This key has no secret"),
                **_errors(401, 503),
            },
        },
        "health": {
            "summary": "Liveness",
            "security": [],
            "responses": {"200": _json("#/components/schemas/Health", "Alive")},
        },
        "openapi": {
            "summary": "This document",
            "security": [],
            "responses": {"200": {"description": "OpenAPI 3.1 document"}},
        },
    }


def _paths(operations: Mapping[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Every route of the API (not the web page's files), in `ROUTES`' order."""
    paths: dict[str, dict[str, Any]] = {}
    for rule in ROUTES.iter_rules():
        if rule.endpoint in PAGE_ENDPOINTS:
            continue
        for method in methods(rule):
            paths.setdefault(openapi_path(rule), {})[method.lower()] = operations[rule.endpoint]
    return paths


def document(
    profiles: Mapping[str, ModelProfile],
    max_body_bytes: int = 65536,
    default_model: str | None = None,
) -> dict[str, Any]:
    components = {
        component: _rewrite(schemas.load(short), component)
        for short, component in COMPONENTS.items()
    }
    components["JobRequest"]["properties"]["model"]["enum"] = sorted(profiles)
    # What this deployment's conditioning models accept, as the API checks uploads.
    media_types, max_input_bytes = upload_limits(profiles)
    upload = components["UploadRequest"]["properties"]
    upload["content_type"]["enum"] = media_types
    upload["size"]["maximum"] = max_input_bytes
    components.update(_extra_components())
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "ltx-video-pipeline API",
            "version": "1.0.0",
            "description": "Asynchronous text-to-video jobs with LTX-Video. "
            "Authenticate with X-API-Key or Authorization: Bearer.",
        },
        "jsonSchemaDialect": "https://json-schema.org/draft/2020-12/schema",
        # Per-model defaults and limits and the 8k + 1 frame rule, which JSON Schema cannot
        # say: the web page validates its form from here rather than from copied constants.
        RULES_EXTENSION: request_rules(profiles, default_model or min(profiles)),
        "security": [{"ApiKey": []}, {"Bearer": []}],
        "paths": _paths(_operations(max_body_bytes)),
        "components": {
            "schemas": components,
            "securitySchemes": {
                "ApiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
                "Bearer": {"type": "http", "scheme": "bearer"},
            },
        },
    }
