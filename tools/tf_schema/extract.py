"""jsii assembly of a prebuilt CDK provider binding -> the compact schema `check` reads.

The bindings are generated from `terraform providers schema -json`, and keep what a
configuration check needs:

- a resource/data source class (base `cdktn.TerraformResource` / `TerraformDataSource`)
  says its type in its docs (`Represents a {@link .../docs/resources/compute_autoscaler
  google_compute_autoscaler}`), takes a `config` struct, and has a getter per exported
  attribute (arguments and computed ones; `fooInput` getters are the arguments again);
- a config struct has a property per argument and nested block (computed-only ones are left
  out); `optional` is false for a required argument and for a block whose `min_items` >= 1;
  the docs link's anchor is the snake_case name (`...#max_replicas ComputeAutoscaler#...`);
  a block's summary is `NAME block.`; a block with `max_items = 1` is one struct, others are
  a collection of structs.

Compact schema, per provider: {"provider": SOURCE, "version": V, "binding": WHEEL,
"provider_config": BLOCK, "resources": {TYPE: BLOCK + "x": [computed-only names]},
"data": {...}}, where BLOCK = {"a": {NAME: "r"|"o"|"O"}, "b": {NAME: BLOCK + "min", "max"}}:
"r" required, "o" optional, "O" optional and of an object type (HCL also accepts block
syntax for those); a block with "any": true was cut at a recursion and is not checked inside.
"""

from __future__ import annotations

import io
import json
import re
import tarfile
import zipfile
from pathlib import Path
from typing import Any

LINK = re.compile(
    r"\{@link https://registry\.terraform\.io/providers/([^/]+/[^/]+)/([^/]+)/docs"
    r"(?:/([a-z-]+)/[\w-]+)?(?:#(\w+))? ([\w#-]+)\}"
)
KINDS = {"cdktn.TerraformResource": "resources", "cdktn.TerraformDataSource": "data"}


def read_assembly(wheel: Path) -> dict[str, Any]:
    """The `.jsii` JSON inside a binding wheel (`*/_jsii/*.jsii.tgz` -> `package/.jsii`)."""
    with zipfile.ZipFile(wheel) as zf:
        (name,) = [n for n in zf.namelist() if n.endswith(".jsii.tgz")]
        with tarfile.open(fileobj=io.BytesIO(zf.read(name))) as tf:
            member = tf.extractfile("package/.jsii")
            assert member is not None
            return json.load(member)


def snake(camel: str) -> str:
    return re.sub(r"(?<=[a-z0-9])([A-Z])", r"_\1", camel).lower()


def _docs_text(prop: dict[str, Any]) -> str:
    docs = prop.get("docs", {})
    return f"{docs.get('summary', '')}\n{docs.get('remarks', '')}"


def _tf_name(prop: dict[str, Any]) -> str:
    for m in LINK.finditer(_docs_text(prop)):
        if m.group(4):
            return m.group(4)
    return snake(prop["name"])


def _struct_of(typ: dict[str, Any]) -> tuple[str | None, bool]:
    """(struct fqn, is a collection) of a property's type; (None, _) for primitives."""
    if "fqn" in typ:
        return (None if typ["fqn"].startswith("cdktn.") else typ["fqn"]), False
    if "collection" in typ:
        inner, _ = _struct_of(typ["collection"]["elementtype"])
        return inner, True
    if "union" in typ:
        for t in typ["union"]["types"]:
            inner, many = _struct_of(t)
            if inner:
                return inner, many
    return None, False


class Extractor:
    def __init__(self, assembly: dict[str, Any]):
        self.types: dict[str, Any] = assembly["types"]

    def block(self, fqn: str, seen: tuple[str, ...] = ()) -> dict[str, Any]:
        if fqn in seen:
            return {"any": True}
        attrs: dict[str, str] = {}
        blocks: dict[str, Any] = {}
        for prop in self.types[fqn].get("properties", []):
            name = _tf_name(prop)
            struct, many = _struct_of(prop["type"])
            summary = prop.get("docs", {}).get("summary", "")
            if struct and summary == f"{name} block.":
                nested = self.block(struct, (*seen, fqn))
                nested["min"] = 0 if prop.get("optional") else 1
                if not many:
                    nested["max"] = 1
                blocks[name] = nested
            else:
                attrs[name] = "o" if prop.get("optional") else "r"
                if struct and attrs[name] == "o":
                    attrs[name] = "O"
        return {"a": attrs, "b": blocks}

    def type_schema(self, cls: dict[str, Any]) -> dict[str, Any]:
        config = cls["initializer"]["parameters"][2]["type"]["fqn"]
        schema = self.block(config)
        args = {n for n in schema["a"]} | set(schema["b"])
        props = {p["name"] for p in cls.get("properties", []) if not p.get("static")}
        getters = {p for p in props if not (p.endswith("Input") and p[: -len("Input")] in props)}
        by_norm = {n.replace("_", ""): n for n in args}
        schema["x"] = sorted(
            {snake(g) for g in getters if g.lower() not in by_norm} - args - {"fqn", "functions"}
        )
        return schema

    def provider(self) -> dict[str, Any]:
        out: dict[str, Any] = {"resources": {}, "data": {}}
        for _, cls in sorted(self.types.items()):
            base = cls.get("base")
            if cls.get("kind") != "class" or not base:
                continue
            m = LINK.search(cls.get("docs", {}).get("summary", ""))
            if base == "cdktn.TerraformProvider" and m:
                out["provider"], out["version"] = m.group(1), m.group(2)
                schema = self.block(cls["initializer"]["parameters"][2]["type"]["fqn"])
                out["provider_config"] = schema
            elif base in KINDS and m:
                out[KINDS[base]][m.group(5)] = self.type_schema(cls)
        return out


def extract(wheel: Path) -> dict[str, Any]:
    assembly = read_assembly(wheel)
    schema = Extractor(assembly).provider()
    return {"binding": f"{assembly['name']}@{assembly['version']}", **schema}
