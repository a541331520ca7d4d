#!/usr/bin/env python3
"""Build the deployable archives, byte for byte the same from the same tree.

    python3 tools/package.py build/package            # every archive
    python3 tools/package.py build/package submit     # one of: submit, notify, worker
    python3 tools/package.py --terraform              # terraform's `external` data source

- `submit.zip`, `notify.zip`: a Cloud Function's source: `functions/<name>/main.py` and
  `requirements.txt` at the top, the shared `ltxv` package (without the local stack) and
  `schemas/` beside it, where `ltxv.core.schemas` looks for them.
- `worker.zip`: the worker's source distribution (pyproject.toml, src/, gpu_worker/,
  schemas/) that the VM boot script installs with pip.

Reproducible: entries sorted, timestamps fixed at 1980-01-01, modes normalised, no caches,
so an unchanged tree gives the same bytes, the same MD5, and no redeploy. Standard library
only: terraform runs it with whatever `python3` is on the PATH.
"""

from __future__ import annotations

import hashlib
import json
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FIXED_TIME = (1980, 1, 1, 0, 0, 0)
SKIP_DIRS = {"__pycache__", ".pytest_cache", ".ruff_cache"}
SKIP_SUFFIXES = {".pyc", ".pyo"}
# The subpackages of src/ltxv each function ships (tests/unit/test_package.py checks that
# what they import is all there).
FUNCTION_PARTS = {"submit": ("core", "intake"), "notify": ("core", "notify")}


def _files(directory: Path, exclude: tuple[str, ...] = ()) -> Iterator[Path]:
    for path in sorted(directory.rglob("*")):
        relative = path.relative_to(directory)
        if not path.is_file() or path.suffix in SKIP_SUFFIXES:
            continue
        if SKIP_DIRS & set(relative.parts) or relative.parts[0] in exclude:
            continue
        yield path


def _entries(target: str) -> list[tuple[str, Path]]:
    """(name in the archive, file) for every member, sorted by name."""
    if target in ("submit", "notify"):
        function = ROOT / "functions" / target
        entries = [(p.name, p) for p in _files(function)]
        package = ROOT / "src" / "ltxv"
        entries.append(("ltxv/__init__.py", package / "__init__.py"))
        for part in FUNCTION_PARTS[target]:
            entries += [(f"ltxv/{p.relative_to(package)}", p) for p in _files(package / part)]
        entries += [(f"schemas/{p.name}", p) for p in _files(ROOT / "schemas")]
    elif target == "worker":
        entries = [(name, ROOT / name) for name in ("pyproject.toml", "README.md")]
        for folder in ("src", "gpu_worker", "schemas"):
            entries += [(str(p.relative_to(ROOT)), p) for p in _files(ROOT / folder)]
    else:
        raise SystemExit(f"unknown target {target!r}: use submit, notify or worker")
    return sorted(entries)


def build(target: str, out_dir: Path) -> dict[str, str]:
    out_dir.mkdir(parents=True, exist_ok=True)
    archive = out_dir / f"{target}.zip"
    partial = archive.with_suffix(".zip.partial")
    with zipfile.ZipFile(partial, "w") as zf:
        for name, path in _entries(target):
            info = zipfile.ZipInfo(name, date_time=FIXED_TIME)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o100644 << 16
            zf.writestr(info, path.read_bytes(), compresslevel=9)
    data = partial.read_bytes()
    partial.replace(archive)
    return {
        "path": str(archive.resolve()),
        "md5": hashlib.md5(data, usedforsecurity=False).hexdigest(),
        "sha256": hashlib.sha256(data).hexdigest(),
    }


def main(argv: list[str]) -> int:
    if argv[:1] == ["--terraform"]:
        # terraform's external data source: a JSON object of strings in, one out.
        query = json.load(sys.stdin)
        out_dir = Path(query.get("out_dir") or ROOT / "build" / "package")
        json.dump(build(query["target"], out_dir), sys.stdout)
        return 0
    if not argv or argv[0].startswith("-"):
        print(__doc__, file=sys.stderr)
        return 2
    out_dir, targets = Path(argv[0]), argv[1:] or ["submit", "notify", "worker"]
    for target in targets:
        built = build(target, out_dir)
        print(f"{built['path']}  md5 {built['md5']}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
