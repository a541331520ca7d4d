"""The deployment's resource names and the worker subscriptions' delivery policy.

Both are stated once, in `schemas/resources.json`, which terraform reads as well
(`terraform/main.tf`): `Settings` derives every name from the deployment prefix through
`name()`, and the local stack creates its worker subscriptions with `worker_delivery()`, so
a deployed project and the local stack agree on what a topic is called and how often a
job is delivered before it is dead-lettered.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from functools import cache
from typing import Any

from ltxv.core import schemas

RESOURCES_FILE = "resources.json"


@cache
def table() -> dict[str, Any]:
    """`schemas/resources.json` as it is."""
    return schemas.load(RESOURCES_FILE)


def name(kind: str, prefix: str, **parts: str) -> str:
    """The name of a resource (`topic`, `worker_subscription`, ...) for this prefix."""
    return table()["names"][kind].format(prefix=prefix, **parts)


@dataclass(frozen=True)
class WorkerDelivery:
    """How Pub/Sub delivers jobs to each model's workers (its worker subscription)."""

    ack_deadline_seconds: int
    max_delivery_attempts: int
    minimum_backoff_seconds: int
    maximum_backoff_seconds: int
    enable_exactly_once_delivery: bool


@cache
def worker_delivery() -> WorkerDelivery:
    policy = table()["worker_subscription"]
    return WorkerDelivery(**{f.name: policy[f.name] for f in fields(WorkerDelivery)})


@dataclass(frozen=True)
class WorkerLanes:
    """The priority lanes of every pool: one subscription each, pulled highest first."""

    order: tuple[str, ...]  # highest first
    default: str  # the lane of a message without a lane attribute (and of older jobs)
    subscription_suffix: dict[str, str]

    def subscription(self, normal_subscription: str, lane: str) -> str:
        """A lane's subscription, named after the pool's (the default lane's) subscription."""
        return normal_subscription + self.subscription_suffix[lane]


@cache
def worker_lanes() -> WorkerLanes:
    lanes = table()["worker_lanes"]
    return WorkerLanes(
        order=tuple(lanes["order"]),
        default=lanes["default"],
        subscription_suffix=dict(lanes["subscription_suffix"]),
    )
