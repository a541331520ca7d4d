"""Each composite query the code runs has its index in terraform, derived from the query
itself: the emulator needs no index, so only this catches a query deployed without one
(Firestore would answer it with FailedPrecondition: every GET of a queued job a 503, a
sweep that never runs). The store's queries are built and captured, never sent."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from google.auth.credentials import AnonymousCredentials
from google.cloud import firestore
from google.cloud.firestore_v1.query import Query
from google.cloud.firestore_v1.types import StructuredQuery

from ltxv.core.jobs import new_job
from ltxv.core.store import JobStore
from ltxv.core.workers import WorkerRegistry
from ltxv.intake.queue_estimates import LANES, QueueEstimates

from .conftest import blocks

FieldOp = StructuredQuery.FieldFilter.Operator
EQUALITY = {FieldOp.EQUAL, FieldOp.IN, FieldOp.ARRAY_CONTAINS, FieldOp.ARRAY_CONTAINS_ANY}
NOW = datetime(2025, 1, 1, tzinfo=UTC)


def _field_filters(where: Any) -> list[Any]:
    if "composite_filter" in where:
        return [f for part in where.composite_filter.filters for f in _field_filters(part)]
    return [where.field_filter] if "field_filter" in where else []


def needed_index(query: Any) -> tuple[str, frozenset[str], tuple[tuple[str, str], ...]]:
    """(collection, equality fields in any order, then the range and order fields in order)
    of the composite index a query needs, as Firestore's planner reads it."""
    proto = query._to_protobuf()
    filters = _field_filters(proto.where)
    equal = frozenset(f.field.field_path for f in filters if f.op in EQUALITY)
    ranged = [(f.field.field_path, "ASCENDING") for f in filters if f.op not in EQUALITY]
    for order in proto.order_by:
        direction = "DESCENDING" if order.direction == 2 else "ASCENDING"
        ranged.append((order.field.field_path, direction))
    seen: dict[str, str] = {}
    for name, direction in ranged:
        seen.setdefault(name, direction)
    return proto.from_[0].collection_id, equal, tuple(seen.items())


def serves(index: dict[str, Any], needed: tuple[str, frozenset[str], tuple]) -> bool:
    collection, equal, ranged = needed
    fields = [(f["field_path"], f["order"]) for f in blocks(index["fields"])]
    return (
        index["collection"] == collection
        and {name for name, _ in fields[: len(equal)]} == equal
        and tuple(fields[len(equal) :]) == ranged
    )


@pytest.fixture(scope="module")
def client() -> firestore.Client:
    # Queries are only built, never sent: no emulator, no credentials.
    return firestore.Client(project="ltxv-ci", credentials=AnonymousCredentials())


def _queries(client: firestore.Client) -> dict[str, Any]:
    estimates = QueueEstimates(JobStore(client), WorkerRegistry(client), live_seconds=60)
    queries = {"live workers": estimates.workers.live_query("tiny-random", NOW)}
    for lane in LANES:
        job = new_job(
            job_id="a" * 26,
            request={"model": "tiny-random", "priority": lane},
            request_hash="x",
            api_key_id="k",
            now=NOW,
        )
        queries[f"ahead in lane {lane}"] = estimates.ahead_in_lane_query(job)
        higher = estimates.higher_lanes_query(job)
        if higher is not None:
            queries[f"higher than {lane}"] = higher
    return queries


def test_the_queue_estimates_queries_each_have_their_index(tf, client):
    queries = _queries(client)
    assert len(queries) == 1 + len(LANES) + len(LANES) - 1
    for name, query in queries.items():
        needed = needed_index(query)
        assert any(serves(index, needed) for index in tf["google_firestore_index"]), (
            f"no terraform index serves the query for {name}: {needed}"
        )


class _Captured(Exception):
    def __init__(self, query: Query) -> None:
        self.query = query


def _capture(query: Query, *args: Any, **kwargs: Any) -> Any:
    raise _Captured(query)


# The store's own queries: what each sweep, count and list runs.
STORE_QUERIES: dict[str, Callable[[JobStore], Any]] = {
    "queued past their deadline": lambda store: store.queued_past_deadline(NOW),
    "unpublished": lambda store: store.unpublished_before(NOW - timedelta(minutes=1)),
    "a key's jobs in flight": lambda store: store.count_in_flight("k", up_to=10),
    "a pool's load": lambda store: store.count_active("model", "tiny-random"),
    "a key's jobs": lambda store: store.list("k"),
    "a key's jobs in a state": lambda store: store.list("k", state="failed"),
}


@pytest.mark.parametrize("name", STORE_QUERIES)
def test_each_store_query_has_its_index(tf, client, monkeypatch, name):
    monkeypatch.setattr(Query, "stream", _capture)
    monkeypatch.setattr(Query, "count", _capture)
    with pytest.raises(_Captured) as captured:
        STORE_QUERIES[name](JobStore(client))
    needed = needed_index(captured.value.query)
    assert any(serves(index, needed) for index in tf["google_firestore_index"]), (
        f"no terraform index serves the query for {name}: {needed}"
    )


def test_the_check_itself_tells_a_missing_index(tf, client):
    # The same query ordered by a field no index has: the check must say so.
    query = _queries(client)["ahead in lane normal"].order_by("updated_at")
    needed = needed_index(query)
    assert needed[2][-1] == ("updated_at", "ASCENDING")
    assert not any(serves(index, needed) for index in tf["google_firestore_index"])
