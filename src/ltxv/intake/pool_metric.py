"""Each model's jobs queued or running, as a Cloud Monitoring gauge its pool scales on.

A pool's autoscaler follows each lane's `num_undelivered_messages`, which reacts within a
minute of a submit; but given several signals, Compute Engine's autoscaler takes the one
that asks for the most VMs, not their sum, and no single Pub/Sub metric filter can select
one pool's lane subscriptions together (only `=` joined by AND). So the sweep also writes
this gauge, the pool's whole load summed over its lanes, a tick behind: among the signals
it keeps the pool as large as all its lanes together want. See docs/architecture.md,
"Priority lanes".

Off locally (no Cloud Monitoring there): `LTXV_POOL_METRIC` turns it on, as terraform does.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from typing import Any

from ltxv.core.errors import BACKEND_ERRORS
from ltxv.core.jobs import utcnow
from ltxv.core.store import JobStore

log = logging.getLogger(__name__)

METRIC_TYPE = "custom.googleapis.com/ltxv/pool_jobs"
# Two deployments may share a project: each autoscaler selects its own prefix's series.
DEPLOYMENT_LABEL = "deployment"
MODEL_LABEL = "model"

# (project path, time series) -> None: Cloud Monitoring's create_time_series.
WriteSeries = Callable[[str, list[Any]], None]


def pool_loads(store: JobStore, models: Iterable[str]) -> dict[str, int]:
    """Each model's jobs queued or running: one count aggregation per model."""
    return {model: store.count_active("model", model) for model in models}


def time_series(project: str, deployment: str, loads: Mapping[str, int], at: datetime) -> list[Any]:
    """One gauge point per model, on the `global` resource: the per-group metric a pool's
    autoscaler selects by its deployment and model labels (terraform/workers.tf)."""
    from google.api import metric_pb2  # only where the metric is on
    from google.cloud import monitoring_v3

    series = []
    for model, load in sorted(loads.items()):
        point = monitoring_v3.Point(
            interval=monitoring_v3.TimeInterval(end_time=at),
            value=monitoring_v3.TypedValue(int64_value=load),
        )
        series.append(
            monitoring_v3.TimeSeries(
                metric={
                    "type": METRIC_TYPE,
                    "labels": {DEPLOYMENT_LABEL: deployment, MODEL_LABEL: model},
                },
                resource={"type": "global", "labels": {"project_id": project}},
                metric_kind=metric_pb2.MetricDescriptor.MetricKind.GAUGE,
                value_type=metric_pb2.MetricDescriptor.ValueType.INT64,
                points=[point],
            )
        )
    return series


def monitoring_writer(timeout: float) -> WriteSeries:
    """Cloud Monitoring's create_time_series, its client built at the first write."""
    clients: list[Any] = []

    def write(name: str, series: list[Any]) -> None:
        if not clients:
            from google.cloud import monitoring_v3

            clients.append(monitoring_v3.MetricServiceClient())
        clients[0].create_time_series(name=name, time_series=series, timeout=timeout)

    return write


class PoolMetric:
    """Counts each model's load and writes it; a failure is logged, never raised, so that
    the sweep it rides on still does its own work."""

    def __init__(
        self,
        store: JobStore,
        models: Iterable[str],
        project: str,
        deployment: str,
        write: WriteSeries,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.store = store
        self.models = tuple(models)
        self.project = project
        self.deployment = deployment
        self.write = write
        self.clock = clock

    def __call__(self) -> dict[str, int] | None:
        try:
            loads = pool_loads(self.store, self.models)
            series = time_series(self.project, self.deployment, loads, self.clock())
            self.write(f"projects/{self.project}", series)
        except BACKEND_ERRORS as exc:
            log.warning("pool metric not written", extra={"error": str(exc)})
            return None
        log.info("pool metric written", extra={"loads": loads})
        return loads
