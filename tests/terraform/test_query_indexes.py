"""The emulator runs any query without an index; deployed Firestore refuses a query that
needs a composite index terraform does not create. So the store's queries are built here
(captured, not sent) and each must be served by an index in firestore.tf: its equality
fields first, in any order, then its range and order-by fields, in order."""

from __future__ import annotations

from datetime import timedelta

import pytest
from google.auth.credentials import AnonymousCredentials
from google.cloud import firestore
from google.cloud.firestore_v1.query import Query

from ltxv.core.jobs import utcnow
from ltxv.core.store import JobStore

from .conftest import blocks

EQUALITY = {"EQUAL", "IN"}


def _captured(monkeypatch, run) -> Query:
    seen: list[Query] = []
    monkeypatch.setattr(Query, "stream", lambda self, *a, **k: seen.append(self) or iter(()))
    client = firestore.Client(project="ltxv-ci", credentials=AnonymousCredentials())
    run(JobStore(client))
    (query,) = seen
    return query


def _needs(query: Query) -> tuple[set[str], list[tuple[str, str]]]:
    """The fields an index must list first (equalities) and then in order (the rest)."""
    proto = query._to_protobuf()
    filters = [f.field_filter for f in proto.where.composite_filter.filters] or [
        proto.where.field_filter
    ]
    equal = {f.field.field_path for f in filters if f.op.name in EQUALITY}
    ordered = [(o.field.field_path, o.direction.name) for o in proto.order_by]
    for f in filters:
        if f.op.name not in EQUALITY and f.field.field_path not in dict(ordered):
            ordered.insert(0, (f.field.field_path, "ASCENDING"))
    return equal, ordered


@pytest.mark.parametrize(
    "run",
    [
        pytest.param(lambda store: store.queued_past_deadline(utcnow()), id="queued_past_deadline"),
        pytest.param(
            lambda store: store.unpublished_before(utcnow() - timedelta(minutes=1)),
            id="unpublished_before",
        ),
    ],
)
def test_each_sweep_query_has_a_composite_index(tf, monkeypatch, run):
    equal, ordered = _needs(_captured(monkeypatch, run))
    indexes = [
        [(f["field_path"], f["order"]) for f in blocks(index["fields"])]
        for index in tf["google_firestore_index"]
    ]
    served = [
        index
        for index in indexes
        if {name for name, _ in index[: len(equal)]} == equal and index[len(equal) :] == ordered
    ]
    assert served, f"no index serves equality {sorted(equal)} then {ordered}: {indexes}"
