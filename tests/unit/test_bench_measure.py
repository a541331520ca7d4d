"""The generation benchmark's pure helpers (bench/measure.py): arms, statistics, the plan."""

from __future__ import annotations

import numpy as np
import pytest
from bench.measure import (
    ALL_OFF,
    OFF,
    PLAIN,
    PROJECT,
    Arm,
    arms_for,
    mean_abs_diff,
    paired_speedup,
    plan,
    rotated,
    summary,
    table,
)

from ltxv.core.profiles import all_profiles

FIT = {
    "gpu_memory_gib": 22,
    "vae_tiling": True,
    "vae_encoder": False,
    "trim_prompt_padding": True,
    "attention_backend": "native",
    "fp8": "off",
    "compile": True,
}
ON = {"attention_backend": "_native_cudnn", "fp8": "dynamic"}


def test_the_arms_are_plain_the_project_all_off_and_each_switch_alone():
    arms = {arm.name: arm for arm in arms_for(FIT, ON)}
    assert list(arms) == [
        PLAIN,
        PROJECT,
        ALL_OFF,
        "vae_tiling=True",
        "vae_encoder=False",
        "trim_prompt_padding=True",
        "compile=True",
        "attention_backend=_native_cudnn",
        "fp8=dynamic",
    ]
    assert arms[PLAIN].fit is None
    assert arms[PROJECT].fit == FIT
    base = arms[ALL_OFF].fit
    assert base == {**OFF, "gpu_memory_gib": 22}  # what is not a switch passes through
    for arm in arms.values():
        if arm.switch is not None:
            changed = {k for k in base if arm.fit[k] != base[k]}
            assert changed == {arm.switch}, arm.name


def test_a_switch_the_profile_turns_on_is_measured_at_the_profiles_value():
    fit = {**FIT, "attention_backend": "sage", "fp8": "weights"}
    names = [arm.name for arm in arms_for(fit, ON)]
    assert "attention_backend=sage" in names
    assert "fp8=weights" in names
    assert "attention_backend=_native_cudnn" not in names


def test_a_switch_with_no_on_value_here_and_keys_a_profile_lacks_get_no_arm():
    fit = {"vae_tiling": True, "vae_encoder": False, "trim_prompt_padding": True}
    names = [arm.name for arm in arms_for({**fit, "attention_backend": "native"}, {})]
    assert not any(name.startswith(("attention_backend", "fp8", "compile")) for name in names)


def test_every_real_profile_fit_yields_one_arm_per_switch():
    for profile in all_profiles().values():
        arms = arms_for(profile.fit, ON)
        switches = [arm.switch for arm in arms if arm.switch]
        assert switches == [key for key in OFF if key in profile.fit], profile.name


def test_an_arm_owns_the_components_its_switches_change():
    assert Arm(PLAIN, None).owns == frozenset()
    assert Arm(ALL_OFF, dict(OFF)).owns == frozenset()
    assert Arm("t", {**OFF, "vae_tiling": True}).owns == {"vae"}
    assert Arm("e", {**OFF, "vae_encoder": False}).owns == {"vae"}
    assert Arm("p", {**OFF, "trim_prompt_padding": True}).owns == frozenset()
    assert Arm(PROJECT, FIT).owns == {"vae", "transformer"}
    assert Arm("f", {**OFF, "fp8": "weights"}).owns == {"transformer"}


def test_summary_gives_median_range_and_quartiles():
    assert summary([3.0, 1.0, 2.0]) == {
        "median": 2.0,
        "min": 1.0,
        "max": 3.0,
        "q1": 1.5,
        "q3": 2.5,
        "n": 3,
    }
    assert summary([1.0, 2.0, 3.0, 10.0])["median"] == 2.5
    one = summary([4.0])
    assert (one["median"], one["q1"], one["q3"], one["n"]) == (4.0, 4.0, 4.0, 1)
    with pytest.raises(ValueError):
        summary([])


def test_mean_abs_diff_is_in_levels_and_never_wraps_around():
    a = np.zeros((2, 2, 3, 3), dtype=np.uint8)
    b = a.copy()
    assert mean_abs_diff(a, b) == 0.0
    b[0, 0, 0, 0] = 255  # one value of 36 differs by the full range
    assert mean_abs_diff(a, b) == pytest.approx(255 / 36)
    assert mean_abs_diff(b, a) == mean_abs_diff(a, b)
    b[:] = 1
    assert mean_abs_diff(a, b) == 1.0  # uint8 arithmetic would give 255 one way
    with pytest.raises(ValueError):
        mean_abs_diff(a, a[:1])
    with pytest.raises(TypeError):
        mean_abs_diff(a.astype(np.float32), a.astype(np.float32))


def test_speedup_pairs_rounds_and_is_above_one_when_faster():
    plain = {1: 10.0, 2: 12.0, 3: 11.0}
    assert paired_speedup(plain, {1: 5.0, 2: 6.0, 3: 5.5}) == pytest.approx(2.0)
    assert paired_speedup(plain, {2: 24.0}) == pytest.approx(0.5)  # only the shared round
    assert paired_speedup(plain, {}) is None


def test_the_plan_drops_the_least_telling_arms_first_never_plain_or_project():
    arms = [PLAIN, PROJECT, ALL_OFF, "vae_encoder=False", "fp8=dynamic", "compile=True"]
    per_arm = dict.fromkeys(arms, 10.0)
    assert plan(1000, per_arm, arms, rounds=3) == (arms, [])
    kept, dropped = plan(120, per_arm, arms, rounds=3)  # 3 rounds of 4 arms
    assert dropped == ["vae_encoder=False", ALL_OFF]
    assert kept == [PLAIN, PROJECT, "fp8=dynamic", "compile=True"]
    kept, dropped = plan(1, per_arm, arms, rounds=3)
    assert kept == [PLAIN, PROJECT]
    assert plan(20, per_arm, [PLAIN, PROJECT], rounds=1) == ([PLAIN, PROJECT], [])


def test_rounds_rotate_the_order():
    arms = ["a", "b", "c"]
    assert rotated(arms, 0) == ["a", "b", "c"]
    assert rotated(arms, 1) == ["b", "c", "a"]
    assert rotated(arms, 4) == ["b", "c", "a"]
    assert rotated([], 2) == []


def test_table_aligns_columns():
    text = table(["arm", "total s"], [["plain", "1.000"], ["project", "0.5"]])
    assert text.splitlines() == [
        "arm      total s",
        "plain      1.000",
        "project      0.5",
    ]
