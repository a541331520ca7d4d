"""The request validator: old /predict bodies pass, every mistake is named by its path."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ltxv.core import schemas
from ltxv.core.profiles import all_profiles
from ltxv.intake.field_errors import RESERVED_KEY, RequestInvalid
from ltxv.intake.strict_json import JsonSyntaxError, parse_json
from ltxv.intake.validation import REQUEST_FIELDS, IntakePolicy, validate_request

PUBLIC = {"hooks.example.com": ["93.184.216.34"], "internal.example.com": ["10.1.2.3"]}


def fake_resolver(host: str, port: int) -> list[str]:
    return PUBLIC.get(host, [])


POLICY = IntakePolicy(
    profiles={name: all_profiles()[name] for name in ("tiny-random", "ltx-video-2b-distilled")},
    default_model="tiny-random",
    outputs_bucket="ltxv-outputs",
    destination_buckets={"team-videos": frozenset({"default"}), "other-team": frozenset({"b"})},
    resolver=fake_resolver,
)
OLD_EXAMPLE = schemas.old_predict_example()


def errors_of(body) -> dict[str, str]:
    with pytest.raises(RequestInvalid) as caught:
        validate_request(body, POLICY, api_key_id="default")
    return {e.path: e.message for e in caught.value.errors}


def test_old_predict_example_is_accepted_with_its_values():
    request = validate_request(OLD_EXAMPLE, POLICY, api_key_id="default")
    assert request["height"] == 704 and request["width"] == 1216 and request["num_frames"] == 121
    assert request["seed"] == 171198  # the old API's default seed
    assert request["negative_prompt"] == ""
    assert request["gcs_destination"] is None
    assert set(request) == set(REQUEST_FIELDS) - {"conditions", "extend"}  # absent: left out


def test_every_old_predict_field_keeps_its_name_and_meaning():
    body = {
        **OLD_EXAMPLE,
        "negative_prompt": "blurry",
        "seed": 42,
        "num_inference_steps": 7,
        "fps": 24,
        "gcs_destination": "gs://team-videos/launch/clip.mp4",
        "model": "ltx-video-2b-distilled",
    }
    request = validate_request(body, POLICY, api_key_id="default")
    assert {k: request[k] for k in body} == body


def test_omitted_fields_take_the_profile_defaults():
    request = validate_request(
        {"prompt": "a cat", "model": "ltx-video-2b-distilled"}, POLICY, api_key_id="default"
    )
    defaults = all_profiles()["ltx-video-2b-distilled"].defaults
    assert request["num_inference_steps"] == defaults["num_inference_steps"] == 8
    assert (request["height"], request["width"], request["num_frames"]) == (704, 1216, 121)


def test_integral_floats_are_integers():
    assert (
        validate_request({"prompt": "x", "height": 64.0}, POLICY, api_key_id="default")["height"]
        == 64
    )


@pytest.mark.parametrize(
    ("body", "path", "fragment"),
    [
        ({}, "$.prompt", "required"),
        ({"prompt": ""}, "$.prompt", "empty"),
        ({"prompt": "   "}, "$.prompt", "non-space"),
        ({"prompt": "x" * 4001}, "$.prompt", "at most 4000"),
        ({"prompt": 5}, "$.prompt", "string"),
        ({"prompt": "x", "colour": "red"}, "$.colour", "unknown field"),
        ({"prompt": "x", "height": 100}, "$.height", "divisible by 32"),
        ({"prompt": "x", "width": 2048}, "$.width", "between 32 and 1280"),
        ({"prompt": "x", "height": "704"}, "$.height", "integer"),
        ({"prompt": "x", "height": True}, "$.height", "integer"),
        ({"prompt": "x", "num_frames": 120}, "$.num_frames", "8k + 1"),
        ({"prompt": "x", "num_frames": 265}, "$.num_frames", "between 9 and 257"),
        ({"prompt": "x", "seed": -1}, "$.seed", "at least 0"),
        ({"prompt": "x", "seed": 2**32}, "$.seed", "at most"),
        ({"prompt": "x", "num_inference_steps": 0}, "$.num_inference_steps", "at least 2"),
        # One step passed once and the pipeline raised IndexError on every attempt.
        ({"prompt": "x", "num_inference_steps": 1}, "$.num_inference_steps", "at least 2"),
        ({"prompt": "x", "num_inference_steps": 51}, "$.num_inference_steps", "between 2 and 50"),
        (
            {
                "prompt": "x",
                "height": 1280,
                "width": 1280,
                "num_frames": 57,
                "num_inference_steps": 50,
            },
            "$",
            "x num_inference_steps = 4669440000 exceeds model tiny-random's limit",
        ),
        ({"prompt": "x", "fps": 0}, "$.fps", "at least 1"),
        ({"prompt": "x", "fps": 61}, "$.fps", "between 1 and 60"),
        ({"prompt": "x", "model": "sdxl"}, "$.model", "unknown model"),
        ({"prompt": "x", "model": "ltx-video-2b"}, "$.model", "unknown model"),  # not deployed
        ({"prompt": "x", "gcs_destination": "s3://b/x.mp4"}, "$.gcs_destination", "gs://"),
        ({"prompt": "x", "gcs_destination": "gs://other/x.mp4"}, "$.gcs_destination", "only under"),
        (
            {"prompt": "x", "gcs_destination": "gs://ltxv-outputs/destinations/default/../x.mp4"},
            "$.gcs_destination",
            "'..'",
        ),
        ({"prompt": "x", "webhook_url": "http://hooks.example.com/x"}, "$.webhook_url", "https"),
        ({"prompt": "x", "webhook_url": "https://10.0.0.1/x"}, "$.webhook_url", "private"),
        (
            {"prompt": "x", "webhook_url": "https://internal.example.com/x"},
            "$.webhook_url",
            "private",
        ),
        ({"prompt": "x", "webhook_url": "https://169.254.169.254/x"}, "$.webhook_url", "metadata"),
        (
            {"prompt": "x", "metadata": {f"k{i}": "v" * 200 for i in range(30)}},
            "$.metadata",
            "4096 bytes",
        ),
        ({"prompt": "x", "metadata": {"k": "v" * 1025}}, "$.metadata.k", "at most 1024"),
        ({"prompt": "x", "metadata": {"k": [["nested"]]}}, "$.metadata.k", "must be a string"),
        ({"prompt": "x\ud800"}, "$.prompt", "surrogate"),
        ({"prompt": "x", "metadata": []}, "$.metadata", "object"),
        ({"prompt": "x", "height": 1280, "width": 1280, "num_frames": 257}, "$", "exceeds"),
    ],
)
def test_each_mistake_is_named_by_its_path(body, path, fragment):
    errors = errors_of(body)
    assert path in errors, errors
    assert fragment in errors[path]


def test_all_mistakes_are_reported_at_once():
    errors = errors_of({"prompt": "", "height": 100, "num_frames": 10, "fps": "x", "extra": 1})
    assert {"$.prompt", "$.height", "$.num_frames", "$.fps", "$.extra"} <= set(errors)


def test_non_object_bodies_are_rejected_at_the_root():
    for body in ([], "x", 1, None, [OLD_EXAMPLE]):
        assert errors_of(body) == {"$": "request body must be a JSON object"}


def test_messages_never_echo_huge_values():
    errors = errors_of({"prompt": "x" * 100_000, "negative_prompt": 7})
    assert all(len(message) < 300 for message in errors.values())


def test_public_https_webhook_is_accepted():
    body = {"prompt": "x", "webhook_url": "https://hooks.example.com/ltxv"}
    assert (
        validate_request(body, POLICY, api_key_id="default")["webhook_url"] == body["webhook_url"]
    )


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=12,
)
field_values = st.dictionaries(
    st.sampled_from([*REQUEST_FIELDS, "extra"]), json_values, max_size=len(REQUEST_FIELDS)
)


@settings(max_examples=300, deadline=None)
@given(st.one_of(json_values, field_values))
def test_fuzz_any_json_is_accepted_or_rejected_with_paths(body):
    try:
        request = validate_request(body, POLICY, api_key_id="default")
    except RequestInvalid as exc:
        assert exc.errors
        for error in exc.errors:
            assert error.path.startswith("$")
            assert error.message
    else:
        schemas.validator("job-request").validate(request)


def valid_requests(profile_name: str = "tiny-random"):
    limits = all_profiles()[profile_name].limits
    return st.fixed_dictionaries(
        {"prompt": st.text(min_size=1, max_size=200).filter(str.strip)},
        optional={
            "negative_prompt": st.text(max_size=50),
            "seed": st.integers(0, 2**32 - 1),
            "height": st.integers(1, 8).map(lambda k: 32 * k),
            "width": st.integers(1, 8).map(lambda k: 32 * k),
            "num_frames": st.integers(1, 8).map(lambda k: 8 * k + 1),
            "num_inference_steps": st.integers(*vars(limits["num_inference_steps"]).values()),
            "fps": st.integers(*vars(limits["fps"]).values()),
            "metadata": st.dictionaries(
                st.text(min_size=1, max_size=8).filter(lambda k: not RESERVED_KEY.match(k)),
                st.integers(-(2**63), 2**63 - 1),
                max_size=3,
            ),
            "gcs_destination": st.just("gs://ltxv-outputs/destinations/default/clip.mp4"),
        },
    )


@settings(max_examples=200, deadline=None)
@given(valid_requests())
def test_fuzz_valid_requests_pass_and_resolve_every_field(body):
    request = validate_request(body, POLICY, api_key_id="default")
    assert set(request) == set(REQUEST_FIELDS) - {"conditions", "extend"}  # absent: left out
    assert {k: request[k] for k in body} == body
    assert (
        validate_request(request, POLICY, api_key_id="default") == request
    )  # resolving again changes nothing


@settings(max_examples=200, deadline=None)
@given(
    valid_requests(),
    st.sampled_from(
        [
            ("height", 33),
            ("width", -32),
            ("num_frames", 8),
            ("seed", "1"),
            ("fps", 0),
            ("prompt", ""),
            ("model", "unknown"),
            ("metadata", "x"),
        ]
    ),
)
def test_fuzz_one_bad_field_is_named(body, mutation):
    field, value = mutation
    errors = errors_of({**body, field: value})
    assert f"$.{field}" in errors


@pytest.mark.parametrize(
    ("metadata", "path", "message"),
    [
        ({"big": 2**64}, "$.metadata.big", "64-bit integer"),
        ({"low": -(2**63) - 1}, "$.metadata.low", "64-bit integer"),
        ({"far": float("inf")}, "$.metadata.far", "finite number"),
        ({"nan": float("nan")}, "$.metadata.nan", "finite number"),
        ({"__x__": 1}, "$.metadata", "reserved"),
        ({"__\n__": 1}, "$.metadata", "reserved"),
    ],
)
def test_metadata_firestore_or_json_cannot_hold_is_refused_by_path(metadata, path, message):
    errors = errors_of({"prompt": "a cat", "metadata": metadata})
    assert message in errors[path]


def test_metadata_at_the_edges_of_what_can_be_stored_is_accepted():
    metadata = {"max": 2**63 - 1, "min": -(2**63), "_x_": 1, "__x": 2, "x__": 3, "f": 1e308}
    assert validate_request(
        {"prompt": "a cat", "metadata": metadata}, POLICY, api_key_id="default"
    )["metadata"] == (metadata)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"prompt": "x", "seed": NaN}', "NaN is not valid JSON"),
        ('{"prompt": "x", "metadata": {"n": -Infinity}}', "-Infinity is not valid JSON"),
        ('{"prompt": "x", "seed": ' + "9" * 5000 + "}", "more than 20 digits"),
        ('{"prompt": "x", "seed": -' + "9" * 21 + "}", "more than 20 digits"),
        ('{"prompt": ', "Expecting value at line 1 column 12"),
        ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
    ],
)
def test_parse_json_refuses_what_no_job_can_hold_with_a_clear_message(text, message):
    with pytest.raises(JsonSyntaxError) as caught:
        parse_json(text)
    assert message in str(caught.value)


def test_parse_json_keeps_ordinary_numbers_and_1e999_for_validation_to_name():
    assert parse_json('{"a": 12345678901234567890, "b": 1.5, "c": -3}') == {
        "a": 12345678901234567890,
        "b": 1.5,
        "c": -3,
    }
    body = parse_json('{"prompt": "x", "metadata": {"far": 1e999}}')
    assert "finite" in errors_of(body)["$.metadata.far"]


@pytest.mark.parametrize(
    "destination",
    [
        "gs://ltxv-outputs/jobs/abcdefghijklmnopqrstuvwxyz/video.mp4",  # another job's video
        "gs://ltxv-outputs/campaign/clip.mp4",  # outside every retention rule
        "gs://ltxv-outputs/destinations/b/clip.mp4",  # another key's prefix
        "gs://ltxv-outputs/destinations/defaultx/clip.mp4",
        "gs://ltxv-outputs/destinations/clip.mp4",
        "gs://other-team/clip.mp4",  # a bucket allowed for another key
    ],
)
def test_a_destination_outside_what_the_key_owns_is_refused(destination):
    message = errors_of({"prompt": "x", "gcs_destination": destination})["$.gcs_destination"]
    # It says where this key may write, and names no other tenant's bucket.
    assert "gs://ltxv-outputs/destinations/default/ or gs://team-videos/" in message
    assert "other-team" not in message


@pytest.mark.parametrize(
    ("key", "destination"),
    [
        ("default", "gs://ltxv-outputs/destinations/default/launch/clip.mp4"),
        ("default", "gs://team-videos/anywhere/clip.mp4"),
        ("b", "gs://ltxv-outputs/destinations/b/clip.mp4"),
        ("b", "gs://other-team/clip.mp4"),
    ],
)
def test_a_destination_the_key_owns_is_kept(key, destination):
    body = {"prompt": "x", "gcs_destination": destination}
    assert validate_request(body, POLICY, api_key_id=key)["gcs_destination"] == destination
