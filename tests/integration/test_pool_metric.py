"""Each pool's load for its autoscaler (ltxv.intake.pool_metric), counted against the
Firestore emulator; Cloud Monitoring cannot run here, so its write is the one seam."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from google.api import metric_pb2
from google.api_core import exceptions as gexc
from google.cloud import monitoring_v3

from ltxv.core import schemas
from ltxv.core.jobs import new_job, new_job_id
from ltxv.intake.pool_metric import METRIC_TYPE, PoolMetric, pool_loads

pytestmark = pytest.mark.emulators

AT = datetime(2026, 12, 6, 5, 0, tzinfo=UTC)


def store_jobs(service, model, states):
    request = {**schemas.old_predict_example(), "model": model}
    for state in states:
        job = new_job(job_id=new_job_id(), request=request, request_hash="x", api_key_id="k")
        service.store.create({**job, "state": state})


def test_a_pools_load_is_its_queued_and_running_jobs_over_every_lane(service):
    store_jobs(service, "tiny-random", ["queued", "queued", "running", "succeeded", "failed"])
    store_jobs(service, "other-model", ["running", "canceled"])
    assert pool_loads(service.store, ["tiny-random", "other-model", "idle-model"]) == {
        "tiny-random": 3,
        "other-model": 1,
        "idle-model": 0,
    }


def test_the_sweep_writes_one_gauge_point_per_pool(service):
    store_jobs(service, "tiny-random", ["queued", "running"])
    written = []
    metric = PoolMetric(
        service.store,
        ["tiny-random", "idle-model"],
        "proj",
        "ltxv",
        lambda name, series: written.append((name, series)),
        clock=lambda: AT,
    )
    assert metric() == {"tiny-random": 2, "idle-model": 0}
    ((name, series),) = written
    assert name == "projects/proj"
    request = monitoring_v3.CreateTimeSeriesRequest(name=name, time_series=series)  # valid
    points = {
        (s.metric.labels["deployment"], s.metric.labels["model"]): s.points[0].value.int64_value
        for s in request.time_series
    }
    assert points == {("ltxv", "tiny-random"): 2, ("ltxv", "idle-model"): 0}
    for s in request.time_series:
        assert s.metric.type == METRIC_TYPE
        assert s.resource.type == "global" and s.resource.labels["project_id"] == "proj"
        assert s.metric_kind == metric_pb2.MetricDescriptor.MetricKind.GAUGE
        assert s.points[0].interval.end_time.timestamp() == AT.timestamp()


def test_a_failed_write_is_logged_and_the_sweep_goes_on(service, caplog):
    def refuse(name, series):
        raise gexc.PermissionDenied("monitoring.timeSeries.create denied")

    metric = PoolMetric(service.store, ["tiny-random"], "proj", "ltxv", refuse)
    assert metric() is None
    assert "pool metric not written" in caplog.text


def test_the_sweep_writes_the_metric_only_where_it_is_on(env, monkeypatch):
    from ltxv.core.settings import Settings
    from ltxv.intake import compose as compose_submit

    calls = []
    monkeypatch.setattr(
        compose_submit, "monitoring_writer", lambda timeout: lambda *call: calls.append(call)
    )
    compose_submit.redispatch(Settings.from_env())()
    assert calls == []  # off by default: the local stack has no Cloud Monitoring
    monkeypatch.setenv("LTXV_POOL_METRIC", "true")
    compose_submit.redispatch(Settings.from_env())()
    assert len(calls) == 1
