import json

from jsonschema import Draft202012Validator

from ltxv.core import schemas
from ltxv.core.profiles import all_profiles
from ltxv.intake import openapi


def test_every_schema_is_valid_draft_2020_12():
    for name in schemas.SCHEMA_FILES:
        schema = schemas.load(name)
        assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
        Draft202012Validator.check_schema(schema)


def test_profiles_file_is_valid_and_has_the_required_profiles():
    profiles = all_profiles()
    assert {"tiny-random", "ltx-video-2b-distilled"} <= set(profiles)
    distilled = profiles["ltx-video-2b-distilled"]
    assert distilled.dtype == "bfloat16" and distilled.accelerator == "cuda"
    for profile in profiles.values():
        d = profile.defaults
        assert d["height"] % 32 == 0 and d["width"] % 32 == 0 and (d["num_frames"] - 1) % 8 == 0
        assert d["height"] * d["width"] * d["num_frames"] <= profile.max_video_pixels
        pixel_steps = d["height"] * d["width"] * d["num_frames"] * d["num_inference_steps"]
        assert pixel_steps <= profile.max_pixel_steps  # the default request is allowed
        # LTX's schedulers stretch the last sigma: one step leaves no schedule at all.
        assert profile.limits["num_inference_steps"].min >= 2


def test_openapi_document_embeds_the_schemas_and_resolves_every_ref():
    document = openapi.document(all_profiles())
    text = json.dumps(document)
    assert "urn:ltxv" not in text
    components = document["components"]["schemas"]
    assert (
        components["JobRequest"]["properties"]["prompt"]
        == schemas.load("job-request")["properties"]["prompt"]
    )
    for ref in {part.split('"')[0] for part in text.split('"$ref": "')[1:]}:
        node = document
        for step in ref.removeprefix("#/").split("/"):
            node = node[step]
        assert isinstance(node, dict)


def test_the_request_schemas_example_is_the_old_predict_apis_example():
    # Verbatim from the old API's documentation: the contract this project must keep.
    assert schemas.old_predict_example() == {
        "prompt": "A cinematic shot of a cyberpunk city in rain",
        "num_frames": 121,
        "width": 1216,
        "height": 704,
    }
