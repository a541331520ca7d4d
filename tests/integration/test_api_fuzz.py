"""Property-based fuzzing of the HTTP API from its own OpenAPI document (schemathesis).

Every generated request, valid or not, must get a non-5xx answer whose status, content
type and body match what the document promises.
"""

from __future__ import annotations

import socket
import threading
import time

import pytest
import schemathesis
from functions_framework import create_app
from google.cloud.firestore import FieldFilter
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from .conftest import SUBMIT_SOURCE, settle

pytestmark = pytest.mark.emulators

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]
_real_getaddrinfo = socket.getaddrinfo


def _offline_getaddrinfo(host, port, *args, **kwargs):
    """Webhook hosts the fuzzer invents must not turn into DNS queries leaving the machine."""
    if host in ("127.0.0.1", "::1", "localhost") or host is None:
        return _real_getaddrinfo(host, port, *args, **kwargs)
    raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")


@pytest.fixture
def stand_in_worker(service):
    """Finishes every queued job at once, so /predict and Prefer: wait answer 200 too."""
    stop = threading.Event()

    def run():
        queued = service.firestore.collection("jobs").where(
            filter=FieldFilter("state", "==", "queued")
        )
        while not stop.is_set():
            for snapshot in queued.limit(20).stream():
                settle(service, snapshot.id).join()
            time.sleep(0.02)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    yield
    stop.set()
    thread.join()


@pytest.fixture
def api_schema(env, monkeypatch, stand_in_worker):
    monkeypatch.setenv("LTXV_MAX_WAIT_SECONDS", "2")
    monkeypatch.setenv("LTXV_PREDICT_WAIT_SECONDS", "10")
    # An event stream the fuzzer opens ends within seconds even on a job still queued.
    monkeypatch.setenv("LTXV_EVENTS_LIFETIME_SECONDS", "2")
    monkeypatch.setattr(socket, "getaddrinfo", _offline_getaddrinfo)
    app = create_app(target="api", source=SUBMIT_SOURCE, signature_type="http")
    return schemathesis.openapi.from_wsgi("/openapi.json", app)


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=list(HealthCheck),
)
def test_api_never_5xx_and_matches_its_document(case, auth):
    case.call_and_validate(headers=auth, checks=CHECKS)


@schema.parametrize()
@settings(max_examples=10, deadline=None, suppress_health_check=list(HealthCheck))
def test_api_without_a_key_is_401_and_matches_its_document(case):
    response = case.call_and_validate(checks=CHECKS)
    public = {"/healthz", "/health", "/openapi.json"}
    if case.path not in public:
        assert response.status_code in (401, 404, 405)
