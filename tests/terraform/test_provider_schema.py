"""The terraform against the providers' own schemas (tools/tf_schema): what `terraform
validate` would reject, checked offline. Each mutation below is one class of mistake the
check must catch, in a copy of the deployment's terraform."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from tools.tf_schema import BINDINGS, SCHEMAS, load_schemas
from tools.tf_schema.check import Module, check_module

from .conftest import ROOT, TERRAFORM

WHEELS = ROOT / "build" / "tf-schema-wheels"


@pytest.fixture(scope="module")
def schemas():
    return load_schemas()


def test_the_deployment_terraform_passes(schemas):
    module = Module(TERRAFORM, schemas)
    assert [str(f) for f in module.check()] == []
    # Not vacuous: every resource and data source was checked against a schema.
    assert len(module.checked) == len(module.declared) > 40
    assert not module.foreign


def test_providers_are_pinned_to_the_versions_whose_schemas_are_checked(schemas):
    import hcl2

    versions = hcl2.loads((TERRAFORM / "versions.tf").read_text())
    (required,) = versions["terraform"][0]["required_providers"]
    required = {name: spec for name, spec in required.items() if not name.startswith("__")}
    assert set(required) == set(schemas) == set(BINDINGS)
    for name, spec in required.items():
        assert spec["source"].strip('"') == schemas[name]["provider"]
        assert spec["version"].strip('"') == schemas[name]["version"], name


def test_the_committed_schemas_are_what_the_pinned_wheels_give():
    """Against the pinned wheels, which `make test` fetches (`make tf-schema-wheels`)."""
    from tools.tf_schema.__main__ import generated

    missing = [
        b
        for b in BINDINGS.values()
        if not list(WHEELS.glob(b.replace("-", "_").replace("==", "-") + "-*.whl"))
    ]
    if missing:
        pytest.fail(
            f"not in {WHEELS}: {', '.join(missing)}: run `make tf-schema-wheels` (make test does)"
        )
    for provider, text in generated(WHEELS, download=False).items():
        assert (SCHEMAS / f"{provider}.json").read_text() == text, provider


def _append(text: str) -> tuple[str, str, str]:
    return ("outputs.tf", r"\Z", "\n" + text)


# (id, file, regex to replace (first match), replacement, file of the finding, its message)
MUTATIONS = [
    (
        "unknown nested argument",
        "workers.tf",
        r"(\n    boot +=)",
        r"\n    bogus = 1\1",
        "workers.tf",
        "google_compute_instance_template.worker.disk: unsupported argument 'bogus'",
    ),
    (
        "unknown argument three blocks deep",
        "functions.tf",
        r"(\n +object = google_storage)",
        r"\n        generation = 1\n        bogus = 1\1",
        "functions.tf",
        "google_cloudfunctions2_function.api.build_config.source.storage_source: unsupported "
        "argument 'bogus'",
    ),
    (
        "unknown argument in a dynamic block's content",
        "storage.tf",
        r"matches_prefix",
        "matches_prefixes",
        "storage.tf",
        "google_storage_bucket.this.lifecycle_rule.condition: "
        "unsupported argument 'matches_prefixes'",
    ),
    (
        "unknown dynamic block",
        "storage.tf",
        r'dynamic "lifecycle_rule"',
        'dynamic "lifecycle"',
        "storage.tf",
        "google_storage_bucket.this: unsupported block type 'lifecycle' (dynamic)",
    ),
    (
        "unknown block",
        "workers.tf",
        r"(\n  scheduling \{)",
        r"\1\n    nope {}",
        "workers.tf",
        "google_compute_instance_template.worker.scheduling: unsupported block type 'nope'",
    ),
    (
        "missing required argument",
        "workers.tf",
        r"\n  machine_type = var.worker_machine_type",
        "",
        "workers.tf",
        "google_compute_instance_template.worker: missing required argument 'machine_type'",
    ),
    (
        "missing required nested argument",
        "workers.tf",
        r"\n    max_replicas += [^\n]+",
        "",
        "workers.tf",
        "google_compute_region_autoscaler.workers.autoscaling_policy: missing "
        "required argument 'max_replicas'",
    ),
    (
        "missing required block",
        "secrets.tf",
        r"\n  replication \{\n    auto \{\}\n  \}",
        "",
        "secrets.tf",
        "google_secret_manager_secret.api_keys: missing required block 'replication'",
    ),
    (
        "block written as an argument",
        "workers.tf",
        r"shielded_instance_config \{",
        "shielded_instance_config = {",
        "workers.tf",
        "google_compute_instance_template.worker: "
        "'shielded_instance_config' is a block, not an argument",
    ),
    (
        "argument written as a block",
        "workers.tf",
        r"metadata = \{",
        "metadata {",
        "workers.tf",
        "google_compute_instance_template.worker: 'metadata' is an argument, not a block",
    ),
    (
        "argument written as a dynamic block",
        "storage.tf",
        r'dynamic "lifecycle_rule"',
        'dynamic "labels"',
        "storage.tf",
        "google_storage_bucket.this: 'labels' is an argument, not a block",
    ),
    (
        "unexported attribute",
        "workers.tf",
        r"google_service_account\.worker\.email",
        "google_service_account.worker.emial",
        "workers.tf",
        "google_service_account.worker does not export 'emial'",
    ),
    (
        "unexported attribute behind an instance key",
        "functions.tf",
        r"(google_storage_bucket\.this\[local\.bucket_source\])\.name",
        r"\1.nme",
        "functions.tf",
        "google_storage_bucket.this does not export 'nme'",
    ),
    (
        "unexported attribute of a data source",
        "pubsub.tf",
        r"data\.google_project\.this\.number",
        "data.google_project.this.numbr",
        "pubsub.tf",
        "data.google_project.this does not export 'numbr'",
    ),
    (
        "unexported attribute in a heredoc",
        "outputs.tf",
        r"google_cloudfunctions2_function\.api"
        r"\.url\}/v1",
        "google_cloudfunctions2_function.api.uri}/v1",
        "outputs.tf",
        "google_cloudfunctions2_function.api does not export 'uri'",
    ),
    (
        "unexported attribute behind a splat",
        *_append(
            'output "x" {\n  value = google_compute_instance_template.worker[*].self_lnk\n}\n'
        ),
        "outputs.tf",
        "google_compute_instance_template.worker does not export 'self_lnk'",
    ),
    (
        "reference to an undeclared resource",
        "functions.tf",
        r"time_sleep\.iam_ready,",
        "time_sleep.iam_redy,",
        "functions.tf",
        "reference to undeclared resource time_sleep.iam_redy",
    ),
    (
        "counted resource without an instance key",
        *_append('output "x" {\n  value = google_storage_bucket.this.name\n}\n'),
        "outputs.tf",
        "google_storage_bucket.this.name needs an instance key",
    ),
    (
        "unknown resource type",
        "network.tf",
        r'resource "google_compute_firewall"',
        'resource "google_compute_firewal"',
        "network.tf",
        "unknown resource type 'google_compute_firewal'",
    ),
    (
        "unknown data source type",
        "main.tf",
        r'data "google_project"',
        'data "google_projekt"',
        "main.tf",
        "unknown data source type 'google_projekt'",
    ),
    (
        "unknown provider argument",
        "versions.tf",
        r'(provider "google" \{)',
        r"\1\n  regio = var.region",
        "versions.tf",
        "provider google: unsupported argument 'regio'",
    ),
]


@pytest.mark.parametrize(
    ("file", "pattern", "replacement", "where", "message"),
    [m[1:] for m in MUTATIONS],
    ids=[m[0] for m in MUTATIONS],
)
def test_a_mistake_is_reported_where_it_is(
    tmp_path, schemas, file, pattern, replacement, where, message
):
    module = tmp_path / "terraform"
    shutil.copytree(TERRAFORM, module)
    path = module / file
    text, n = re.subn(pattern, replacement, path.read_text(), count=1)
    assert n == 1, f"the mutation no longer applies to {file}: {pattern}"
    path.write_text(text)
    findings = check_module(module, schemas)
    assert findings, "the mutated terraform passed"
    hits = [f for f in findings if message in f.message]
    assert hits, "\n".join(map(str, findings))
    assert all(Path(f.file).name == where for f in hits)
    # The line is the mistake's (for something missing, the header of the block lacking it).
    quoted = re.search(r"'([^']+)'", message)
    marker = quoted.group(1) if quoted else next(w for w in message.split() if "." in w)
    lines = (module / where).read_text().splitlines()
    for finding in hits:
        line = lines[finding.line - 1]
        if "missing required" in message:
            assert line.rstrip().endswith("{"), line
        else:
            assert marker in line, line
