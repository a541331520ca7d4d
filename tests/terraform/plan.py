"""A `terraform show -json` plan rendered offline from tfparse's evaluation.

terraform-compliance reads plans; no plan can be made here (no provider downloads), so this
writes the same shape from the evaluated configuration: every resource as planned for
creation, with its evaluated values (nested blocks as lists, as terraform writes them).
Values only the provider knows stay out, as they are "known after apply" in a real plan.
`make tf-compliance-plan` runs the same features against a real plan.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

PROVIDERS = {"google": "registry.terraform.io/hashicorp/google"}
SKIP_KINDS = {"locals", "output", "provider", "terraform", "variable"}


def _values(block: dict[str, Any]) -> dict[str, Any]:
    values = {}
    for key, value in block.items():
        if key in ("__tfmeta", "id", "for_each", "count", "depends_on", "lifecycle"):
            continue
        if isinstance(value, dict) and "__tfmeta" in value:
            values[key] = [_values(value)]
        elif (
            isinstance(value, list)
            and value
            and all(isinstance(v, dict) and "__tfmeta" in v for v in value)
        ):
            values[key] = [_values(v) for v in value]
        elif isinstance(value, dict) and "__attribute__" in value:
            continue  # a reference tfparse could not resolve: known after apply
        else:
            values[key] = value
    return values


def render(tf: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    planned, changes, configured = [], [], []
    for kind, resources in sorted(tf.items()):
        if kind in SKIP_KINDS:
            continue
        for resource in resources:
            meta = resource["__tfmeta"]
            if meta.get("type") != "resource":
                continue
            address = meta["path"]
            name = address.split(".", 1)[1].split("[", 1)[0]
            index = address[len(f"{kind}.{name}") :].strip("[]").strip('"') or None
            provider = PROVIDERS.get(
                kind.split("_", 1)[0], f"registry.terraform.io/hashicorp/{kind.split('_', 1)[0]}"
            )
            values = _values(resource)
            entry = {
                "address": address,
                "mode": "managed",
                "type": kind,
                "name": name,
                "provider_name": provider,
                "schema_version": 0,
                "values": values,
            }
            if index is not None:
                entry["index"] = index
            planned.append(entry)
            changes.append(
                {
                    **{k: entry[k] for k in ("address", "mode", "type", "name", "provider_name")},
                    "change": {"actions": ["create"], "before": None, "after": values},
                }
            )
            configured.append(
                {
                    "address": f"{kind}.{name}",
                    "mode": "managed",
                    "type": kind,
                    "name": name,
                    "provider_config_key": kind.split("_", 1)[0],
                    "expressions": {},
                    "schema_version": 0,
                }
            )
    unique_config = list({c["address"]: c for c in configured}.values())
    return {
        "format_version": "1.2",
        "terraform_version": "1.15.5",
        "planned_values": {"root_module": {"resources": planned}},
        "resource_changes": changes,
        "configuration": {
            "provider_config": {
                name: {"name": name, "full_name": full} for name, full in PROVIDERS.items()
            },
            "root_module": {"resources": unique_config},
        },
    }


def write(tf: dict[str, list[dict[str, Any]]], path: Path) -> Path:
    # One line, as `terraform show -json` writes it (terraform-compliance insists).
    path.write_text(json.dumps(render(tf), separators=(",", ":"), default=str))
    return path
