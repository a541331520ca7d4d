"""Pure helpers of the generation benchmark: the arms, the statistics, the plan, the table.

No torch here: `tests/unit/test_bench_measure.py` imports this module on its own.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

PLAIN = "plain"
PROJECT = "project"
ALL_OFF = "all-off"

# Each switch of a profile's "fit" in its off position: what a pipeline is without it.
OFF: dict[str, Any] = {
    "vae_tiling": False,
    "vae_encoder": True,  # kept: dropping it is the switch
    "trim_prompt_padding": False,
    "compile": False,
    "attention_backend": "native",
    "fp8": "off",
}
# The switches' "on" positions where a profile has them off (attention and fp8 depend on
# the device: generate.py fills them in).
ON: dict[str, Any] = {
    "vae_tiling": True,
    "vae_encoder": False,
    "trim_prompt_padding": True,
    "compile": True,
}
# Which pipeline component a switch changes (the arm gets its own copy of it).
CHANGES = {
    "vae_tiling": "vae",
    "vae_encoder": "vae",
    "compile": "transformer",
    "attention_backend": "transformer",
    "fp8": "transformer",
}
# Arms dropped first when the time budget cannot hold them all (plain and project stay).
DROP_ORDER = (
    "vae_encoder",  # memory only: its time equals all-off's
    ALL_OFF,
    "trim_prompt_padding",
    "vae_tiling",
    "attention_backend",
    "fp8",
    "compile",
)


@dataclass(frozen=True)
class Arm:
    name: str
    fit: dict[str, Any] | None  # None: plain diffusers, no Renderer
    switch: str | None = None  # the one switch this arm turns on over all-off

    @property
    def owns(self) -> frozenset[str]:
        """The components this arm changes, and so must not share with the others."""
        if self.fit is None:
            return frozenset()
        return frozenset(
            part for key, part in CHANGES.items() if key in self.fit and self.fit[key] != OFF[key]
        )


def arms_for(fit: dict[str, Any], on: dict[str, Any]) -> list[Arm]:
    """plain, the project path (the fit as is), everything off, then each switch alone
    (every switch the fit has, turned on over the all-off fit); keys that are not switches
    (gpu_memory_gib) pass through."""
    on = {**ON, **on}
    base = {**fit, **{key: OFF[key] for key in OFF if key in fit}}
    arms = [Arm(PLAIN, None), Arm(PROJECT, dict(fit)), Arm(ALL_OFF, base)]
    for key in OFF:
        if key not in fit:
            continue
        value = fit[key] if fit[key] != OFF[key] else on.get(key, OFF[key])
        if value != OFF[key]:
            arms.append(Arm(f"{key}={value}", {**base, key: value}, switch=key))
    return arms


def summary(values: Sequence[float]) -> dict[str, float]:
    """Median, min, max and quartiles (inclusive method) of one arm's repeats."""
    ordered = sorted(values)
    if not ordered:
        raise ValueError("no values")
    q1, _, q3 = (
        statistics.quantiles(ordered, n=4, method="inclusive")
        if len(ordered) > 1
        else (
            ordered[0],
            None,
            ordered[0],
        )
    )
    return {
        "median": statistics.median(ordered),
        "min": ordered[0],
        "max": ordered[-1],
        "q1": q1,
        "q3": q3,
        "n": len(ordered),
    }


def mean_abs_diff(frames: np.ndarray, reference: np.ndarray) -> float:
    """Mean absolute difference of two uint8 videos in 0..255 levels: max - min stays in
    uint8 without wrapping, frame by frame (a full-size video is 311 MB)."""
    if frames.shape != reference.shape:
        raise ValueError(f"shapes differ: {frames.shape} vs {reference.shape}")
    if frames.dtype != np.uint8 or reference.dtype != np.uint8:
        raise TypeError("uint8 frames expected")
    total = 0
    for a, b in zip(frames, reference, strict=True):
        total += int((np.maximum(a, b) - np.minimum(a, b)).sum(dtype=np.uint64))
    return total / frames.size if frames.size else 0.0


def paired_speedup(plain: dict[int, float], arm: dict[int, float]) -> float | None:
    """Median over the rounds both ran of plain's seconds / the arm's (above 1: faster).
    Pairing by round cancels whatever drifted between rounds (clocks, heat)."""
    ratios = [plain[r] / arm[r] for r in sorted(plain.keys() & arm.keys()) if arm[r] > 0]
    return statistics.median(ratios) if ratios else None


def plan(
    remaining_s: float,
    round_s: dict[str, float],
    arms: Sequence[str],
    rounds: int,
    min_rounds: int = 3,
) -> tuple[list[str], list[str]]:
    """(arms kept, arms dropped) so that `min(rounds, min_rounds)` rounds fit in the time
    left, given each arm's seconds per round; drops in DROP_ORDER, never plain or project."""
    kept = list(arms)
    dropped: list[str] = []
    need = min(rounds, min_rounds)

    def fits() -> bool:
        return need * sum(round_s.get(arm, 0.0) for arm in kept) <= remaining_s

    for key in DROP_ORDER:
        if fits():
            break
        for arm in [a for a in kept if a == key or a.startswith(f"{key}=")]:
            kept.remove(arm)
            dropped.append(arm)
    return kept, dropped


def rotated(items: Sequence[str], round_index: int) -> list[str]:
    """The arms in round `round_index`'s order: each round starts one arm later, so no arm
    always runs first (after an idle GPU) or right after the same neighbour."""
    if not items:
        return []
    shift = round_index % len(items)
    return [*items[shift:], *items[:shift]]


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A plain-text table: first column left-aligned, the others right-aligned."""
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    lines = []
    for row in [header, *rows]:
        cells = [
            str(cell).ljust(width) if i == 0 else str(cell).rjust(width)
            for i, (cell, width) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)
