"""Settings: every field is read from the variables its metadata names, and only from those."""

from __future__ import annotations

import dataclasses

import pytest

from ltxv.core.settings import Settings, env_names

FIELDS = [spec.name for spec in dataclasses.fields(Settings)]
# A value of each field's kind, as a variable spells it, and what it reads as.
SAMPLES = {
    int: ("42", 42),
    float: ("2.5", 2.5),
    bool: ("yes", True),
    tuple[str, ...]: (" a, b,,c ", ("a", "b", "c")),
}


def _kind(name: str):
    default = getattr(Settings, name)
    return tuple[str, ...] if isinstance(default, tuple) else type(default)


def test_every_field_names_its_variables_and_no_two_fields_share_one():
    names = [name for field in FIELDS for name in env_names(field)]
    assert all(env_names(field) for field in FIELDS)
    assert len(names) == len(set(names))
    # The platform's own: the emulator, the project, functions-framework's THREADS.
    others = {"STORAGE_EMULATOR_HOST", "GOOGLE_CLOUD_PROJECT", "GCP_PROJECT", "THREADS"}
    assert {name for name in names if not name.startswith("LTXV_")} == others


@pytest.mark.parametrize("field", FIELDS)
def test_from_env_reads_each_field_from_its_variable(field):
    raw, expected = SAMPLES.get(_kind(field), ("some-value", "some-value"))
    (first, *fallbacks) = env_names(field)
    assert getattr(Settings.from_env({first: raw}), field) == expected
    # Unset or empty: the default; the other fields never read it.
    assert Settings.from_env({first: ""}) == Settings()
    others = Settings.from_env({first: raw})
    assert dataclasses.replace(others, **{field: getattr(Settings, field)}) == Settings()
    for fallback in fallbacks:
        assert getattr(Settings.from_env({fallback: raw}), field) == expected
        loser = {int: "99"}.get(_kind(field), "loses")
        assert getattr(Settings.from_env({first: raw, fallback: loser}), field) == expected


def test_the_project_falls_back_to_the_platforms_variables_in_order():
    env = {"GOOGLE_CLOUD_PROJECT": "from-gcf", "GCP_PROJECT": "from-old-gcf"}
    assert Settings.from_env(env).project == "from-gcf"
    assert Settings.from_env({**env, "GOOGLE_CLOUD_PROJECT": ""}).project == "from-old-gcf"
    assert Settings.from_env({}).project == Settings.project == "ltxv-local"


@pytest.mark.parametrize(
    ("variable", "raw", "message"),
    [
        ("LTXV_LEASE_SECONDS", "1.5", "LTXV_LEASE_SECONDS must be an integer, got '1.5'"),
        ("LTXV_RPC_TIMEOUT_SECONDS", "soon", "LTXV_RPC_TIMEOUT_SECONDS must be a number"),
        ("LTXV_ALLOW_HTTP_LOOPBACK_WEBHOOKS", "maybe", "must be true or false, got 'maybe'"),
    ],
)
def test_a_malformed_value_names_its_variable(variable, raw, message):
    with pytest.raises(ValueError, match=message):
        Settings.from_env({variable: raw})


def test_from_env_reads_the_process_environment_by_default(monkeypatch):
    monkeypatch.setenv("LTXV_PREFIX", "from-env")
    monkeypatch.setenv("LTXV_MODELS", "a,b")
    settings = Settings.from_env()
    assert settings.prefix == "from-env" and settings.models == ("a", "b")
