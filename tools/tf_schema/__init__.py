"""Offline provider-schema check: `terraform validate` without the provider binaries.

No provider can be downloaded where the tests run, so `terraform init/validate` cannot.
The prebuilt CDK bindings on PyPI carry each provider's whole schema (as a jsii assembly);
`extract` turns it into a compact schema and `check` reads the module's HCL against it
(unknown types, arguments and blocks at any depth, missing required ones, blocks written
as arguments and back, references to attributes a type does not export).

Where the schema comes from in CI: the compact schemas are committed (`schemas/*.json`,
one type per line, about 1 MB for google, reviewable as a diff when a provider moves);
`python -m tools.tf_schema extract` regenerates them from the pinned wheels below. The
alternative, downloading the bindings on every fresh clone, costs a 67 MB wheel (131 MB of
JSON to parse, ~3 s) on each CI run and makes `make test` depend on PyPI serving it;
reading the committed schema takes well under a second. `make test` still fetches the
wheels once into build/tf-schema-wheels (`fetch`, ~6 s, pip's cache after that) so that
tests/terraform can check that the committed files are exactly what the wheels give (a
hand edit fails), and that terraform/versions.tf pins exactly the versions the schemas
were read from.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

# Local provider name -> the binding whose assembly holds its schema (version in the docs).
BINDINGS = {
    "google": "cdktn-provider-google==21.1.0",  # hashicorp/google 8.7.0
    "time": "cdktn-provider-time==14.0.2",  # hashicorp/time 0.14.2
    "random": "cdktn-provider-random==15.0.1",  # hashicorp/random 3.9.1
    "external": "cdktn-provider-external==14.0.2",  # hashicorp/external 2.4.2
}
SCHEMAS = Path(__file__).with_name("schemas")


def load_schemas(directory: Path = SCHEMAS) -> dict[str, dict[str, Any]]:
    return {p.stem: json.loads(p.read_text()) for p in sorted(directory.glob("*.json"))}


def dumps(schema: dict[str, Any]) -> str:
    """JSON with one resource/data source per line (diffs show which types changed)."""

    def one(value: Any) -> str:
        return json.dumps(value, sort_keys=True, separators=(",", ":"))

    lines = ["{"]
    scalars = {k: v for k, v in schema.items() if k not in ("resources", "data")}
    for key, value in sorted(scalars.items()):
        lines.append(f"{one(key)}:{one(value)},")
    for section in ("data", "resources"):
        types = sorted(schema.get(section, {}).items())
        lines.append(f"{one(section)}:{{")
        lines += [
            f"{one(t)}:{one(s)}{',' if i < len(types) - 1 else ''}"
            for i, (t, s) in enumerate(types)
        ]
        lines.append("}," if section == "data" else "}")
    lines.append("}")
    return "\n".join(lines) + "\n"
