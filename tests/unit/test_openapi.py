"""The OpenAPI document describes the routes the API has and the formats it checks: its paths
come from `routes.ROUTES` and its patterns are the API's own constants."""

from __future__ import annotations

import re

import pytest

from ltxv.core import schemas
from ltxv.core.jobs import State, new_job_id
from ltxv.core.profiles import all_profiles
from ltxv.core.webhooks import new_secret
from ltxv.intake import openapi, routes

DOCUMENT = openapi.document(all_profiles())
API_RULES = [
    rule for rule in routes.ROUTES.iter_rules() if rule.endpoint not in routes.PAGE_ENDPOINTS
]


def _parameter(operation: dict, name: str) -> dict:
    (found,) = [p for p in operation.get("parameters", []) if p["name"] == name]
    return found


def test_every_route_of_the_api_is_in_the_document_and_nothing_else():
    documented = {
        (path, method.upper()) for path, item in DOCUMENT["paths"].items() for method in item
    }
    routed = {(routes.openapi_path(rule), m) for rule in API_RULES for m in routes.methods(rule)}
    assert documented == routed
    assert ("/v1/jobs/{job_id}/cancel", "POST") in documented
    assert ("/v1/jobs/{job_id}/retry", "POST") in documented
    # The web page's files are served beside the API but are not part of it.
    assert not [path for path in DOCUMENT["paths"] if path == "/" or path.startswith("/assets")]


@pytest.mark.parametrize("rule", API_RULES, ids=lambda rule: f"{rule.endpoint} {rule.rule}")
def test_each_path_parameter_is_documented_and_routes_back_to_its_endpoint(rule):
    path = routes.openapi_path(rule)
    example = {argument: new_job_id() for argument in rule.arguments}
    for method in routes.methods(rule):
        operation = DOCUMENT["paths"][path][method.lower()]
        for argument in rule.arguments:
            assert _parameter(operation, argument)["in"] == "path"
        endpoint, _ = routes.ROUTES.bind("", "").match(path.format(**example), method)
        assert endpoint == rule.endpoint


def test_each_pattern_is_the_constant_the_api_checks_with():
    get_job = DOCUMENT["paths"]["/v1/jobs/{job_id}"]["get"]
    job_id = _parameter(get_job, "job_id")["schema"]["pattern"]
    assert job_id == routes.JOB_ID.pattern
    assert job_id == schemas.load("job")["properties"]["job_id"]["pattern"]
    assert routes.JOB_ID.match(new_job_id())
    for path, method in (
        ("/v1/jobs", "post"),
        ("/predict", "post"),
        ("/v1/jobs/{job_id}/retry", "post"),
    ):
        key = _parameter(DOCUMENT["paths"][path][method], "Idempotency-Key")["schema"]
        assert key["pattern"] == routes.IDEMPOTENCY_KEY.pattern


def test_the_list_parameters_are_the_ones_the_api_reads():
    listing = DOCUMENT["paths"]["/v1/jobs"]["get"]
    assert tuple(p["name"] for p in listing["parameters"]) == routes.LIST_PARAMS
    assert _parameter(listing, "state")["schema"]["enum"] == [state.value for state in State]
    assert _parameter(listing, "page_size")["schema"]["maximum"] == routes.MAX_PAGE_SIZE


def test_the_webhook_secret_pattern_matches_the_secrets_the_service_makes():
    shape = DOCUMENT["components"]["schemas"]["WebhookSecret"]["properties"]
    for schema in (shape["secret"], shape["secrets"]["items"]):
        assert re.match(schema["pattern"], new_secret())


def test_a_retried_jobs_parent_has_the_job_id_pattern_and_a_refused_retry_its_code():
    components = DOCUMENT["components"]["schemas"]
    parent = components["Job"]["properties"]["parent_job_id"]
    assert parent["type"] == ["string", "null"] and parent["pattern"] == routes.JOB_ID.pattern
    assert (
        "not_retryable" in components["Error"]["properties"]["error"]["properties"]["code"]["enum"]
    )
    retry = DOCUMENT["paths"]["/v1/jobs/{job_id}/retry"]["post"]
    assert "requestBody" not in retry
    assert {"202", "404", "409", "422", "429"} <= set(retry["responses"])
