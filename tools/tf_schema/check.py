"""Check a terraform module against the compact provider schemas (what `validate` would say).

Per module directory (its `*.tf` files, parsed with python-hcl2, which keeps line numbers
and tells blocks from attributes):

- resource and data source types the provider does not have;
- arguments and blocks a block does not take, at every depth, `dynamic "x" { content }`
  included; an argument written as a block and a block written as an argument;
- required arguments, and required blocks (`min_items` >= 1), that are missing; more blocks
  than `max_items`;
- `TYPE.NAME.ATTR` and `data.TYPE.NAME.ATTR` references (through `[key]`, `.0`, splats) to
  an attribute the type does not export, to a resource or data source the module does not
  declare, and to a counted/for_each resource without an instance key;
- `provider "NAME"` blocks' arguments.

Types of providers without a schema here (no prefix match) are left alone, and so is
every block with a `provider = google-beta...` meta-argument: its schema is not this one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hcl2
from hcl2.rules.abstract import LarkRule
from hcl2.rules.base import AttributeRule, BlockRule, BodyRule

RESOURCE_META = (
    {"count", "for_each", "depends_on", "provider"},
    {"lifecycle", "provisioner", "connection"},
)
DATA_META = ({"count", "for_each", "depends_on", "provider"}, {"lifecycle"})
PROVIDER_META: tuple[set[str], set[str]] = ({"alias", "version"}, set())
NOT_RESOURCES = {"var", "local", "module", "data", "path", "terraform", "each", "count", "self"}
# Blocks whose expressions name addresses that need not (or must not) exist any more.
SKIP_REFS = {"terraform", "moved", "removed", "import", "check"}
CHAINS = {"get_attr_expr_term", "index_expr_term", "attr_splat_expr_term", "full_splat_expr_term"}
HEREDOCS = {"heredoc_template", "heredoc_template_trim"}
IDENT = re.compile(r"[A-Za-z_][\w-]*")
STEP = re.compile(r"\.(\d+|[A-Za-z_][\w-]*)")
INTERPOLATION = re.compile(r"\$\{([^{}]*)\}")
HEREDOC_REF = re.compile(r"(?<![\w.])(?:data\.)?[A-Za-z_][\w-]*\.[\w.\[\]\"*-]+")


@dataclass(frozen=True, order=True)
class Finding:
    file: str
    line: int
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.message}"


def _label(rule: Any) -> str:
    value = rule.serialize()
    return value[1:-1] if isinstance(value, str) and value.startswith('"') else str(value)


def _line(rule: Any, default: int = 0) -> int:
    return getattr(getattr(rule, "_meta", None), "line", None) or default


def _items(body: BodyRule) -> list[AttributeRule | BlockRule]:
    return [c for c in body.children if isinstance(c, AttributeRule | BlockRule)]


def _attr(body: BodyRule, name: str) -> AttributeRule | None:
    return next(
        (c for c in _items(body) if isinstance(c, AttributeRule) and _label(c.identifier) == name),
        None,
    )


def parse_steps(text: str) -> list[str] | None:
    """`a.b[x].c.*.d` -> ["a", "b", "[]", "c", "*", "d"]; None if it is not a traversal."""
    m = IDENT.match(text)
    if not m:
        return None
    steps, i = [m.group()], m.end()
    while i < len(text):
        if text.startswith(".*", i) or text.startswith("[*]", i):
            steps.append("*")
            i += 2 if text[i] == "." else 3
        elif text[i] == "[":
            depth, j = 0, i
            while j < len(text):
                depth += {"[": 1, "]": -1}.get(text[j], 0)
                if depth == 0:
                    break
                j += 1
            steps.append("[]")
            i = j + 1
        elif text[i] == "." and (m := STEP.match(text, i)):
            steps.append("[]" if m.group(1).isdigit() else m.group(1))
            i = m.end()
        else:
            break
    return steps


class Module:
    def __init__(self, directory: Path, schemas: dict[str, dict[str, Any]]):
        self.dir = directory
        self.schemas = schemas
        self.findings: set[Finding] = set()
        self.files: list[tuple[str, BodyRule]] = []
        for path in sorted(directory.glob("*.tf")):
            tree = hcl2.parses(path.read_text(), discard_comments=True)
            self.files.append((str(path), tree.body))
        # for-expression variables: roots of traversals that are not resources
        self.local_names: set[str] = set()
        for _, body in self.files:
            self._for_vars(body)
        self.foreign: set[tuple[str, str, str]] = set()  # provider = google-beta and such
        self.checked: list[str] = []  # the resources and data sources check() looked at
        # (kind, type, name) -> True when it has count or for_each
        self.declared: dict[tuple[str, str, str], bool] = {}
        for _, body in self.files:
            for block in _items(body):
                if not isinstance(block, BlockRule):
                    continue
                labels = [_label(x) for x in block.labels]
                if len(labels) == 3 and labels[0] in ("resource", "data"):
                    multi = any(_attr(block.body, m) for m in ("count", "for_each"))
                    self.declared[(labels[0], labels[1], labels[2])] = multi
                    if not self.own_provider(block):
                        self.foreign.add((labels[0], labels[1], labels[2]))

    def _for_vars(self, node: Any) -> None:
        if isinstance(node, LarkRule):
            if node.lark_name() == "for_intro":
                self.local_names |= {
                    _label(c)
                    for c in node.children
                    if isinstance(c, LarkRule) and c.lark_name() == "identifier"
                }
            for child in node.children:
                self._for_vars(child)

    def own_provider(self, block: BlockRule) -> bool:
        """False for `provider = google-beta` (or any provider without a schema here)."""
        provider = _attr(block.body, "provider")
        if provider is None:
            return True
        return str(provider.expression.serialize()).strip('${}"').split(".")[0] in self.schemas

    # -- schema lookup ---------------------------------------------------------------
    def provider_of(self, type_: str) -> dict[str, Any] | None:
        return self.schemas.get(type_.split("_", 1)[0])

    def type_schema(self, kind: str, type_: str) -> dict[str, Any] | None:
        provider = self.provider_of(type_)
        return (
            None
            if provider is None
            else provider["resources" if kind == "resource" else "data"].get(type_)
        )

    def add(self, file: str, line: int, message: str) -> None:
        self.findings.add(Finding(file, line, message))

    # -- blocks ----------------------------------------------------------------------
    def check(self) -> list[Finding]:
        for file, body in self.files:
            for block in _items(body):
                if not isinstance(block, BlockRule):
                    continue
                labels = [_label(x) for x in block.labels]
                if labels[0] in ("resource", "data") and len(labels) == 3:
                    self.check_resource(file, block, *labels)
                elif labels[0] == "provider" and len(labels) == 2:
                    provider = self.schemas.get(labels[1])
                    if provider and "provider_config" in provider:
                        self.check_body(
                            file,
                            block,
                            provider["provider_config"],
                            f"provider {labels[1]}",
                            PROVIDER_META,
                        )
                if labels[0] not in SKIP_REFS:
                    self.check_refs(file, block)
        return sorted(self.findings)

    def check_resource(self, file: str, block: BlockRule, kind: str, type_: str, name: str) -> None:
        if (kind, type_, name) in self.foreign or self.provider_of(type_) is None:
            return
        schema = self.type_schema(kind, type_)
        what = "data source" if kind == "data" else "resource"
        if schema is None:
            self.add(file, _line(block), f"unknown {what} type {type_!r}")
            return
        prefix = "data." if kind == "data" else ""
        self.checked.append(f"{prefix}{type_}")
        self.check_body(
            file,
            block,
            schema,
            f"{prefix}{type_}.{name}",
            DATA_META if kind == "data" else RESOURCE_META,
        )

    def check_body(
        self,
        file: str,
        block: BlockRule,
        schema: dict[str, Any],
        where: str,
        meta: tuple[set[str], set[str]] = (set(), set()),
    ) -> None:
        body = block.body
        if schema.get("any"):
            return
        attrs, blocks = schema["a"], schema["b"]
        seen_attrs: set[str] = set()
        static: dict[str, int] = {}
        dynamic: set[str] = set()
        for item in _items(body):
            line = _line(item)
            if isinstance(item, AttributeRule):
                name = _label(item.identifier)
                seen_attrs.add(name)
                if name in attrs or name in meta[0]:
                    continue
                if name in blocks:
                    self.add(
                        file,
                        line,
                        f"{where}: {name!r} is a block, not an argument: "
                        f"write `{name} {{ ... }}` (or a dynamic block)",
                    )
                else:
                    self.add(file, line, f"{where}: unsupported argument {name!r}")
                continue
            name = _label(item.labels[0])
            if name == "dynamic" and len(item.labels) == 2:
                self.check_dynamic(file, item, schema, where)
                dynamic.add(_label(item.labels[1]))
            elif name in blocks:
                static[name] = static.get(name, 0) + 1
                self.check_body(file, item, blocks[name], f"{where}.{name}")
            elif attrs.get(name) == "O":
                seen_attrs.add(name)  # an object-typed argument may be written as blocks
            elif name in attrs:
                self.add(
                    file,
                    line,
                    f"{where}: {name!r} is an argument, not a block: write `{name} = ...`",
                )
            elif name not in meta[1]:
                self.add(file, line, f"{where}: unsupported block type {name!r}")
        line = _line(block)
        for name, kind in attrs.items():
            if kind == "r" and name not in seen_attrs:
                self.add(file, line, f"{where}: missing required argument {name!r}")
        for name, sub in blocks.items():
            if sub.get("min", 0) >= 1 and not static.get(name) and name not in dynamic:
                self.add(file, line, f"{where}: missing required block {name!r}")
            if sub.get("max") and static.get(name, 0) > sub["max"]:
                self.add(file, line, f"{where}: at most {sub['max']} {name!r} block(s)")

    def check_dynamic(self, file: str, item: BlockRule, schema: dict[str, Any], where: str) -> None:
        name = _label(item.labels[1])
        if name not in schema["b"]:
            if name not in schema["a"]:
                self.add(file, _line(item), f"{where}: unsupported block type {name!r} (dynamic)")
            elif schema["a"][name] != "O":
                self.add(
                    file,
                    _line(item),
                    f"{where}: {name!r} is an argument, not a block: "
                    f"write `{name} = ...` (dynamic)",
                )
            return
        for sub in _items(item.body):
            if isinstance(sub, BlockRule) and _label(sub.labels[0]) == "content":
                self.check_body(file, sub, schema["b"][name], f"{where}.{name}")
            elif isinstance(sub, AttributeRule) and _label(sub.identifier) not in (
                "for_each",
                "iterator",
                "labels",
            ):
                self.add(
                    file,
                    _line(sub),
                    f"{where}: dynamic {name!r}: unsupported argument {_label(sub.identifier)!r}",
                )

    # -- references --------------------------------------------------------------------
    def check_refs(self, file: str, node: Any, line: int = 0, skip: bool = False) -> None:
        if not isinstance(node, LarkRule):
            return
        line = _line(node, line)
        if isinstance(node, AttributeRule) and skip:
            return  # lifecycle.ignore_changes: paths inside the resource itself
        if isinstance(node, BlockRule):
            lifecycle = _label(node.labels[0]) == "lifecycle"
            for child in _items(node.body):
                ignore = (
                    lifecycle
                    and isinstance(child, AttributeRule)
                    and _label(child.identifier) == "ignore_changes"
                )
                self.check_refs(file, child, line, ignore)
            return
        name = node.lark_name()
        if name in CHAINS:
            text = str(node.serialize())
            self.check_ref(file, line, text[2:-1] if text.startswith("${") else text)
        elif name in HEREDOCS:
            text = str(node.serialize())
            for inter in INTERPOLATION.finditer(text):
                at = line + text.count("\n", 0, inter.start())
                for m in HEREDOC_REF.finditer(inter.group(1)):
                    self.check_ref(file, at, m.group())
        for child in node.children:
            self.check_refs(file, child, line)

    def check_ref(self, file: str, line: int, text: str) -> None:
        steps = parse_steps(text)
        if not steps or len(steps) < 2:
            return
        kind = "resource"
        if steps[0] == "data":
            kind, steps = "data", steps[1:]
            if len(steps) < 2:
                return
        type_, name, rest = steps[0], steps[1], steps[2:]
        if kind == "resource" and (type_ in NOT_RESOURCES or type_ in self.local_names):
            return
        if name in ("[]", "*"):
            return
        schema = self.type_schema(kind, type_)
        declared = (kind, type_, name) in self.declared
        if (
            schema is None
            and not declared
            and not any((kind, type_) == k[:2] for k in self.declared)
        ):
            if self.provider_of(type_) is not None:
                self.add(
                    file,
                    line,
                    f"reference to unknown {kind} type "
                    f"{'data.' if kind == 'data' else ''}{type_!r}",
                )
            return
        address = f"{'data.' if kind == 'data' else ''}{type_}.{name}"
        if not declared:
            self.add(file, line, f"reference to undeclared {kind} {address}")
            return
        if rest and rest[0] not in ("[]", "*") and self.declared[(kind, type_, name)]:
            self.add(
                file,
                line,
                f"{address} has count or for_each: {address}.{rest[0]} needs "
                "an instance key (`[...]`) or a splat",
            )
        attr = next((s for s in rest if s not in ("[]", "*")), None)
        if schema is None or attr is None or (kind, type_, name) in self.foreign:
            return
        exported = set(schema["a"]) | set(schema["b"]) | set(schema.get("x", []))
        if attr not in exported:
            self.add(file, line, f"{address} does not export {attr!r}")


def check_module(directory: Path, schemas: dict[str, dict[str, Any]]) -> list[Finding]:
    return Module(directory, schemas).check()
