"""The generation benchmark's report: the machine, the results (JSON), the tables."""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

from measure import PLAIN, paired_speedup, summary, table

GIB = 1024**3
PHASES = ("text", "denoise", "decode", "copy", "total")


def environment(cuda: bool) -> dict[str, Any]:
    import torch

    env: dict[str, Any] = {"python": platform.python_version(), "machine": platform.machine()}
    for package in ("torch", "diffusers", "transformers", "accelerate", "torchao", "numpy"):
        try:
            env[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            env[package] = None
    env["torch_cuda"] = torch.version.cuda
    env["cpu_threads"] = torch.get_num_threads()
    env["load_average"] = round(os.getloadavg()[0], 2)  # other work on the machine, 1 min
    if cuda:
        props = torch.cuda.get_device_properties(0)
        env["gpu"] = props.name
        env["gpu_memory_gib"] = round(props.total_memory / GIB, 1)
        env["compute_capability"] = f"{props.major}.{props.minor}"
        env["cudnn"] = torch.backends.cudnn.version()
        try:
            query = ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"]
            env["driver"] = (
                subprocess.run(query, capture_output=True, text=True, timeout=30, check=True)
                .stdout.split("\n")[0]
                .strip()
            )
        except (OSError, subprocess.SubprocessError):
            env["driver"] = None
    return env


class Results:
    """Everything measured so far, rewritten to `path` after each render."""

    def __init__(self, path: Path | None, header: dict[str, Any]) -> None:
        self.path = path
        self.data: dict[str, Any] = {"header": header, "arms": {}, "rounds": 0, "dropped": {}}
        self.reference: Any = None  # plain's first frames: what the other arms are held to

    def arm(self, name: str) -> dict[str, Any]:
        return self.data["arms"].setdefault(name, {"runs": []})

    def save(self) -> None:
        if self.path is None:
            return
        self.data["summary"] = self.rows()
        scratch = self.path.with_name(self.path.name + ".tmp")
        scratch.write_text(json.dumps(self.data, indent=1, default=str) + "\n")
        os.replace(scratch, self.path)

    def rows(self) -> list[dict[str, Any]]:
        arms = self.data["arms"]
        plain = {run["round"]: run["total"] for run in arms.get(PLAIN, {}).get("runs", [])}
        rows = []
        for name, arm in arms.items():
            runs = arm["runs"]
            row: dict[str, Any] = {"arm": name, "error": arm.get("error")}
            if runs:
                for phase in PHASES:
                    values = [run[phase] for run in runs if run.get(phase) is not None]
                    row[phase] = summary(values) if values else None
                totals = {run["round"]: run["total"] for run in runs}
                row["speedup"] = paired_speedup(plain, totals) if plain else None
                row["peak_gib"] = max(run["peak_bytes"] for run in runs) / GIB
                diffs = [run["diff"] for run in runs if run.get("diff") is not None]
                row["diff"] = max(diffs) if diffs else None
            rows.append(row)
        return rows


def print_tables(results: Results, cuda: bool) -> None:
    def cell(value: Any, fmt: str) -> str:
        return "-" if value is None else fmt.format(value)

    medians, spreads, notes = [], [], []
    for row in results.rows():
        arm = results.data["arms"][row["arm"]]
        if row["error"]:
            notes.append(f"{row['arm']}: {row['error']}")
        fallbacks = arm.get("fallbacks")
        if fallbacks:
            asked = ", ".join(f"{k}={arm['fit'][k]}" for k in fallbacks)
            got = ", ".join(f"{k}={v}" for k, v in fallbacks.items())
            notes.append(f"{row['arm']}: asked for {asked}, this machine applied {got}")
        if "text" not in row:
            continue
        phases = [row[p] for p in PHASES]
        medians.append(
            [row["arm"]]
            + [cell(p and p["median"], "{:.3f}") for p in phases]
            + [cell(row["speedup"], "{:.2f}"), cell(row["peak_gib"], "{:.2f}")]
            + [cell(row["diff"], "{:.2f}")]
        )
        spreads.append(
            [row["arm"], str(phases[4]["n"])]
            + ["-" if p is None else f"{p['min']:.3f}..{p['max']:.3f}" for p in phases]
        )
    memory = "peak GiB (alone)" if cuda else "peak RSS GiB"
    header = ["arm", "text s", "denoise s", "decode s", "copy s", "total s", "x plain", memory]
    print("\nmedians:")
    print(table([*header, "Δpx"], medians))
    print(
        "decode s: the VAE and the frames made uint8 on the device; copy s: frames to the host;"
        " x plain: plain's total / the arm's, per round, median;"
        " Δpx: mean |frame - plain's frame|, 0..255"
    )
    print("\nspread (min..max):")
    print(table(["arm", "runs", *(f"{p} s" for p in PHASES)], spreads))
    for note in notes:
        print(note)
