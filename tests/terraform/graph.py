"""The configuration's dependency graph, read from the HCL itself (python-hcl2).

tfparse evaluates values but flattens what depends on what; ordering questions (does this
resource wait for the APIs, for the IAM grants?) need the edges: every `TYPE.NAME` a block
mentions, in any expression or in `depends_on`, locals followed through.
"""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path
from typing import Any

from .conftest import TERRAFORM

# TYPE.NAME, data.TYPE.NAME, local.NAME inside an expression.
_REFERENCE = re.compile(
    r"\b(data\.[a-z0-9_]+\.[A-Za-z0-9_-]+|local\.[A-Za-z0-9_]+|[a-z0-9]+_[a-z0-9_]+\.[A-Za-z0-9_-]+)"
)
_NOT_RESOURCES = ("var.", "each.", "count.", "path.", "self.", "terraform.")


def _strings(value: Any):
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield str(key)
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)


def _mentions(body: Any) -> set[str]:
    found = set()
    for text in _strings(body):
        for match in _REFERENCE.findall(text):
            if not match.startswith(_NOT_RESOURCES):
                found.add(match)
    return found


def _unquote(name: str) -> str:
    return name.strip('"')


@cache
def modules(directory: Path = TERRAFORM) -> tuple[dict[str, Any], ...]:
    """Each .tf file of the directory as python-hcl2 reads it (expressions as written)."""
    import hcl2

    parsed = []
    for path in sorted(directory.glob("*.tf")):
        with path.open() as handle:
            parsed.append(hcl2.load(handle))
    return tuple(parsed)


def local_expression(name: str, directory: Path = TERRAFORM) -> str:
    """A local's expression as written (tfparse cannot evaluate what needs the provider)."""
    for module in modules(directory):
        for block in module.get("locals", []):
            if name in block:
                return block[name].strip('"')
    raise KeyError(name)


@cache
def graph(directory: Path = TERRAFORM) -> dict[str, set[str]]:
    """address -> the addresses (resources, data sources, locals) it mentions."""
    edges: dict[str, set[str]] = {}
    for module in modules(directory):
        for kind, prefix in (("resource", ""), ("data", "data.")):
            for entry in module.get(kind, []):
                for rtype, named in entry.items():
                    for name, body in named.items():
                        edges[f"{prefix}{_unquote(rtype)}.{_unquote(name)}"] = _mentions(body)
        for entry in module.get("locals", []):
            for name, body in entry.items():
                if not name.startswith("__"):
                    edges[f"local.{name}"] = _mentions(body)
    # A mention may carry an attribute (TYPE.NAME.ATTR is matched as TYPE.NAME): keep
    # only what names a declared block.
    return {node: {m for m in mentions if m in edges} - {node} for node, mentions in edges.items()}


def reaches(start: str, target: str, edges: dict[str, set[str]] | None = None) -> bool:
    edges = graph() if edges is None else edges
    seen, todo = set(), [start]
    while todo:
        node = todo.pop()
        if node == target:
            return True
        if node not in seen:
            seen.add(node)
            todo.extend(edges.get(node, ()))
    return False
