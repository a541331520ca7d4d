"""python -m tools.tf_schema check DIR... | extract | verify (see the package docstring)."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from . import BINDINGS, SCHEMAS, dumps, load_schemas

ROOT = Path(__file__).resolve().parents[2]
WHEELS = ROOT / "build" / "tf-schema-wheels"


def wheel_for(provider: str, wheels: Path, download: bool) -> Path | None:
    name, version = BINDINGS[provider].split("==")
    pattern = f"{name.replace('-', '_')}-{version}-*.whl"
    found = sorted(wheels.glob(pattern))
    if not found and download:
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--quiet",
                "--no-deps",
                "--dest",
                str(wheels),
                BINDINGS[provider],
            ],
            check=True,
        )
        found = sorted(wheels.glob(pattern))
    return found[0] if found else None


def generated(wheels: Path, download: bool) -> dict[str, str]:
    from .extract import extract

    out = {}
    for provider in BINDINGS:
        wheel = wheel_for(provider, wheels, download)
        if wheel is None:
            raise SystemExit(f"no wheel for {BINDINGS[provider]} in {wheels}")
        out[provider] = dumps(extract(wheel))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.tf_schema")
    sub = parser.add_subparsers(dest="command", required=True)
    check = sub.add_parser("check", help="check module directories (each dir one module)")
    check.add_argument("dirs", nargs="+", type=Path)
    check.add_argument("-r", "--recursive", action="store_true", help="every dir with .tf")
    for name in ("extract", "verify"):
        cmd = sub.add_parser(name, help=f"{name} schemas/*.json from the pinned wheels")
        cmd.add_argument("--wheels", type=Path, default=WHEELS)
    fetch = sub.add_parser("fetch", help="download the pinned wheels (make test does)")
    fetch.add_argument("--wheels", type=Path, default=WHEELS)
    args = parser.parse_args(argv)

    if args.command == "fetch":
        for provider in BINDINGS:
            wheel_for(provider, args.wheels, download=True)
        return 0

    if args.command == "check":
        from .check import check_module

        schemas = load_schemas()
        dirs = args.dirs
        if args.recursive:
            dirs = sorted({p.parent for d in args.dirs for p in d.rglob("*.tf")})
        findings = [f for d in dirs for f in check_module(d, schemas)]
        for finding in findings:
            print(finding)
        return 1 if findings else 0
    texts = generated(args.wheels, download=True)
    if args.command == "extract":
        SCHEMAS.mkdir(exist_ok=True)
        for provider, text in texts.items():
            (SCHEMAS / f"{provider}.json").write_text(text)
        return 0
    stale = [p for p, t in texts.items() if (SCHEMAS / f"{p}.json").read_text() != t]
    print("stale: " + ", ".join(stale) if stale else "schemas match the wheels")
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
