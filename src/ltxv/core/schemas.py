"""The JSON Schemas in `schemas/`: found, loaded once, and turned into validators.

The same files ship in three places: the repository (`schemas/` beside the package), a
function's source archive (`schemas/` beside `ltxv/`) and the wheel (`ltxv/_schemas`).
"""

from __future__ import annotations

import json
import os
from functools import cache
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator
from referencing import Registry, Resource

SCHEMA_FILES = {
    "job-request": "job-request.schema.json",
    "job": "job.schema.json",
    "result": "result.schema.json",
    "webhook-event": "webhook-event.schema.json",
    "receipt": "receipt.schema.json",
    "prompt-file": "prompt-file.schema.json",
    "batch-manifest": "batch-manifest.schema.json",
    "error": "error.schema.json",
    "predict-response": "predict-response.schema.json",
    "model-profiles": "model-profiles.schema.json",
    "upload-request": "upload-request.schema.json",
    "upload": "upload.schema.json",
}


@cache
def schemas_dir() -> Path:
    override = os.environ.get("LTXV_SCHEMAS_DIR")
    package = Path(__file__).resolve().parents[1]  # ltxv/
    candidates = [Path(override)] if override else []
    # In the wheel (ltxv/_schemas), a function archive (schemas/ beside ltxv/), the repo.
    candidates += [package / "_schemas", package.parent / "schemas", package.parents[1] / "schemas"]
    for candidate in candidates:
        if (candidate / SCHEMA_FILES["job-request"]).is_file():
            return candidate
    raise FileNotFoundError(f"schemas/ not found; looked in {[str(c) for c in candidates]}")


@cache
def load(name: str) -> dict[str, Any]:
    """A schema by short name (`job-request`, `job`, ...), or any JSON file in schemas/."""
    filename = SCHEMA_FILES.get(name, name)
    return json.loads((schemas_dir() / filename).read_text(encoding="utf-8"))


@cache
def registry() -> Registry:
    resources = [(load(name)["$id"], Resource.from_contents(load(name))) for name in SCHEMA_FILES]
    return Registry().with_resources(resources)


@cache
def validator(name: str) -> Draft202012Validator:
    return Draft202012Validator(
        load(name),
        registry=registry(),
        format_checker=Draft202012Validator.FORMAT_CHECKER,
    )


def schema_id(name: str) -> str:
    return load(name)["$id"]


def old_predict_example() -> dict[str, Any]:
    """The old /predict API's documented example body (the job request schema's example)."""
    return dict(load("job-request")["examples"][0])
