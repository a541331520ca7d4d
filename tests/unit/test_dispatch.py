"""Routing by model and lane: the subscription filter Pub/Sub applies and the worker's own
re-check (`passes_filter`, needed because the emulator ignores filters) must be the same
rule."""

from __future__ import annotations

import re

import pytest

from ltxv.core.dispatch import (
    LANE_ATTRIBUTE,
    MODEL_ATTRIBUTE,
    job_lane,
    passes_filter,
    subscription_filter,
)

DEFAULT = "ltx-video-2b-distilled"
POOLS = (DEFAULT, "ltx-video-2b", "tiny-random")
# What a message's model attribute may be: a pooled model, one without a pool, empty, or
# absent (None).
MESSAGE_MODELS = (*POOLS, "ltx-video-13b", "", None)

TOKEN = re.compile(r'\s*(\(|\)|"(?:[^"\\]|\\.)*"|[A-Za-z_.:]+|=)')


def evaluate(filter_: str, attributes: dict[str, str]) -> bool:
    """Pub/Sub's filter language, the part these filters use: `attributes.KEY = "VALUE"`,
    `attributes:KEY` (has the key), NOT, AND, OR (NOT binds tightest, then AND, then OR)
    and parentheses."""
    tokens = TOKEN.findall(filter_)
    assert "".join(tokens) == re.sub(r"\s+", "", filter_), f"cannot read {filter_!r}"
    position = 0

    def take(expected: str | None = None) -> str:
        nonlocal position
        token = tokens[position]
        assert expected is None or token == expected, (token, expected)
        position += 1
        return token

    def peek() -> str | None:
        return tokens[position] if position < len(tokens) else None

    def either() -> bool:
        value = both()
        while peek() == "OR":
            take()
            value = both() or value
        return value

    def both() -> bool:
        value = negation()
        while peek() == "AND":
            take()
            value = negation() and value
        return value

    def negation() -> bool:
        if peek() == "NOT":
            take()
            return not negation()
        if peek() == "(":
            take()
            value = either()
            take(")")
            return value
        term = take()
        if term.startswith("attributes:"):
            return term.removeprefix("attributes:") in attributes
        key = term.removeprefix("attributes.")
        take("=")
        return attributes.get(key) == take()[1:-1]

    value = either()
    assert position == len(tokens), f"trailing tokens in {filter_!r}"
    return value


LANES = ("high", "normal", "low")
# What a message's lane attribute may be: a lane, an unknown value, empty, or absent (None).
MESSAGE_LANES = (*LANES, "urgent", "", None)


def test_the_filters_read_as_intended():
    assert subscription_filter(DEFAULT, DEFAULT) == (
        f'(attributes.{MODEL_ATTRIBUTE} = "{DEFAULT}" OR NOT attributes:{MODEL_ATTRIBUTE})'
        f' AND (attributes.{LANE_ATTRIBUTE} = "normal" OR NOT attributes:{LANE_ATTRIBUTE})'
    )
    assert subscription_filter("tiny-random", DEFAULT, "high") == (
        'attributes.model = "tiny-random" AND attributes.lane = "high"'
    )
    assert subscription_filter(DEFAULT, DEFAULT, "low").endswith(' AND attributes.lane = "low"')
    for lane in LANES:
        assert len(subscription_filter(DEFAULT, DEFAULT, lane).encode()) <= 256  # Pub/Sub's


@pytest.mark.parametrize("lane", LANES)
@pytest.mark.parametrize("message_lane", MESSAGE_LANES)
@pytest.mark.parametrize("pool", POOLS)
@pytest.mark.parametrize("message_model", MESSAGE_MODELS)
def test_passes_filter_is_the_subscription_filter(pool, message_model, lane, message_lane):
    attributes = {"job_id": "j1"}
    if message_model is not None:
        attributes[MODEL_ATTRIBUTE] = message_model
    if message_lane is not None:
        attributes[LANE_ATTRIBUTE] = message_lane
    expected = evaluate(subscription_filter(pool, DEFAULT, lane), attributes)
    assert passes_filter(message_model, pool, DEFAULT, message_lane, lane) is expected


@pytest.mark.parametrize("message_model", MESSAGE_MODELS)
def test_each_message_reaches_its_own_pool_only(message_model):
    takers = [pool for pool in POOLS if passes_filter(message_model, pool, DEFAULT)]
    if message_model is None:
        assert takers == [DEFAULT]  # published before messages named a model
    elif message_model in POOLS:
        assert takers == [message_model]
    else:
        assert takers == []  # no pool: never rendered with another model


@pytest.mark.parametrize("message_lane", MESSAGE_LANES)
def test_each_message_reaches_one_lane_of_its_pool(message_lane):
    takers = [
        lane for lane in LANES if passes_filter(DEFAULT, DEFAULT, DEFAULT, message_lane, lane)
    ]
    if message_lane is None:
        assert takers == ["normal"]  # published before messages named a lane
    elif message_lane in LANES:
        assert takers == [message_lane]
    else:
        assert takers == []  # the API publishes only its lanes


@pytest.mark.parametrize(
    ("job", "lane"),
    [
        ({"priority": "high"}, "high"),
        ({"priority": "low"}, "low"),
        ({"priority": "normal"}, "normal"),
        ({}, "normal"),  # stored before lanes existed
        ({"priority": None}, "normal"),
    ],
)
def test_a_jobs_message_goes_to_its_priority_lane(job, lane):
    assert job_lane(job) == lane


def test_the_lanes_are_the_requests_priorities_highest_first():
    from ltxv.core import schemas
    from ltxv.core.resources import worker_lanes

    priority = schemas.load("job-request.schema.json")["properties"]["priority"]
    assert set(worker_lanes().order) == set(priority["enum"]) - {None}
    assert worker_lanes().order == LANES and worker_lanes().default == "normal"
    assert worker_lanes().subscription_suffix["normal"] == ""  # the pool's old name
