"""Download the wheels the GPU bench needs beside the machine's own torch, for an offline pip.

    .venv/bin/python bench/wheels.py              # into .bench-wheels/ (git-ignored)
    .venv/bin/python bench/wheels.py --python 3.12 --with numpy

The GPU machine has no internet and must bring torch with CUDA itself (its wheel is far
over what can be carried). Everything else the bench imports (diffusers, transformers,
accelerate, torchao, the project's jsonschema, and what they need) is resolved here from
this environment's installed versions, for Linux x86-64 and each `--python` version, and
downloaded as wheels; `bench/gpu.sh` installs them with `pip install --no-index`. torch's
own requirements (filelock, sympy, jinja2, ...) are left out: torch brings them. numpy is
left out unless asked (`--with numpy`): every torch install has it, and it weighs 16 MB a
Python version.
"""

from __future__ import annotations

import argparse
import importlib.metadata as metadata
import subprocess
import sys
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOTS = ("diffusers", "transformers", "accelerate", "torchao", "jsonschema", "referencing")
PROVIDED = ("torch", "numpy")  # on the machine already (numpy: unless --with numpy)
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64")
DEFAULT_DIR = Path(__file__).resolve().parents[1] / ".bench-wheels"


def closure(roots: list[str], python: str, skip: set[str]) -> dict[str, str]:
    """{name: installed version} of `roots` and their requirements for Linux and `python`
    (extras off), without `skip` and anything only `skip` needs; "" for a package this
    environment lacks (a backport an older Python needs), taken at its newest."""
    env = {"python_version": python, "python_full_version": f"{python}.0", "extra": ""}
    env |= {"sys_platform": "linux", "platform_system": "Linux", "platform_machine": "x86_64"}
    found: dict[str, str] = {}
    todo = [canonicalize_name(name) for name in roots]
    while todo:
        name = todo.pop()
        if name in found or name in skip:
            continue
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:  # needed by another Python only: newest
            found[name] = ""
            continue
        found[name] = dist.version
        for line in dist.requires or []:
            requirement = Requirement(line)
            if requirement.marker is None or requirement.marker.evaluate(env):
                todo.append(canonicalize_name(requirement.name))
    return found


def torch_closure() -> set[str]:
    """torch and what it requires: what a machine with torch already has."""
    skip: set[str] = set()
    todo = ["torch"]
    while todo:
        name = canonicalize_name(todo.pop())
        if name in skip:
            continue
        skip.add(name)
        try:
            requires = metadata.distribution(name).requires or []
        except metadata.PackageNotFoundError:
            continue
        todo += [Requirement(line).name for line in requires if "extra ==" not in line]
    return skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dest", type=Path, default=DEFAULT_DIR)
    parser.add_argument(
        "--python",
        action="append",
        help="target version, repeatable (default: 3.11 and 3.12; the project needs 3.11+; "
        "each adds ~12 MiB)",
    )
    parser.add_argument(
        "--with", dest="extra", action="append", default=[], help="also carry this package (numpy)"
    )
    args = parser.parse_args(argv)
    pythons = args.python or ["3.11", "3.12"]
    skip = torch_closure() | {canonicalize_name(p) for p in PROVIDED}
    skip -= {canonicalize_name(p) for p in args.extra}
    args.dest.mkdir(parents=True, exist_ok=True)
    for python in pythons:
        pins = closure([*ROOTS, *args.extra], python, skip)
        pip = "pip download --quiet --no-deps --only-binary=:all: --implementation cp"
        command = [sys.executable, "-m", *pip.split(), "--python-version", python]
        command += ["--dest", str(args.dest)]
        for platform in PLATFORMS:
            command += ["--platform", platform]
        wanted = [f"{name}=={version}" if version else name for name, version in pins.items()]
        command += sorted(wanted)
        print(f"python {python}: {len(pins)} packages", flush=True)
        subprocess.run(command, check=True)
        (args.dest / f"requirements-{python}.txt").write_text(
            "".join(f"{line}\n" for line in sorted(wanted))
        )
    size = sum(f.stat().st_size for f in args.dest.iterdir())
    print(f"{args.dest}: {size / 2**20:.1f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
