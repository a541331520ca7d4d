"""One `terraform apply` in a fresh project: nothing calls an API before it is on, and
nothing that needs a grant runs before the grant has propagated (README, Deploy)."""

from __future__ import annotations

from .graph import graph, reaches

APIS = "time_sleep.apis_ready"
GRANTS = "time_sleep.iam_ready"


def _google(node: str) -> bool:
    return node.startswith(("google_", "data.google_")) and node != "google_project_service.apis"


def test_every_google_resource_and_data_source_waits_for_the_apis():
    unordered = sorted(n for n in graph() if _google(n) and not reaches(n, APIS))
    assert not unordered, f"these may call an API before it is enabled: {unordered}"


def test_the_gates_are_ordered_apis_then_grants():
    edges = graph()
    assert "google_project_service.apis" in edges[APIS]
    assert reaches(GRANTS, APIS)


def test_functions_and_their_triggers_wait_for_every_grant_they_run_with():
    # Every grant but those on the functions' own services (they need the functions).
    grants = {n for n in graph() if n.startswith("google_") and "_iam_member." in n}
    after_functions = {n for n in grants if n.startswith("google_cloud_run_v2_service_iam_member")}
    missing = sorted(g for g in grants - after_functions if not reaches(GRANTS, g))
    assert not missing, f"{GRANTS} does not wait for {missing}"
    functions = [n for n in graph() if n.startswith("google_cloudfunctions2_function.")]
    assert len(functions) == 3
    for function in functions:
        assert GRANTS in graph()[function], f"{function} does not depend on {GRANTS}"


def test_the_graph_sees_a_missing_gate(tmp_path):
    # The check itself: a resource with no path to the gate is reported.
    (tmp_path / "main.tf").write_text(
        'resource "google_project_service" "apis" {}\n'
        'resource "time_sleep" "apis_ready" {\n  depends_on = [google_project_service.apis]\n}\n'
        'resource "google_pubsub_topic" "gated" {\n  depends_on = [time_sleep.apis_ready]\n}\n'
        'resource "google_pubsub_subscription" "via_reference" {\n'
        "  topic = google_pubsub_topic.gated.id\n}\n"
        'resource "google_compute_health_check" "ungated" {\n  name = "x"\n}\n'
    )
    edges = graph(tmp_path)
    assert reaches("google_pubsub_subscription.via_reference", APIS, edges)
    assert not reaches("google_compute_health_check.ungated", APIS, edges)


def test_every_grant_to_our_accounts_waits_for_the_account():
    # Members are spelled from the prefix (local.sa, local.worker_sa, local.build_sa) so
    # they are known at plan time; the account must still exist before IAM accepts them.
    edges = graph()
    # Through locals only: a grant that names a function (whose account is ours) is not
    # a grant to that account.
    only_locals = {n: {m for m in e if m.startswith("local.")} for n, e in edges.items()}
    grants = [n for n in edges if "_iam_member." in n and reaches(n, "local.email", only_locals)]
    assert len(grants) >= 12
    accounts = [n for n in edges if n.startswith("google_service_account.")]
    unordered = [g for g in grants if not any(a in edges[g] for a in accounts)]
    assert not unordered, f"these may be granted before their account exists: {unordered}"
