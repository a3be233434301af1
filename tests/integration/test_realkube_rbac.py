"""The rendered manifests' RBAC on the real API server: each component's ServiceAccount may do
what its component needs and nothing else (SubjectAccessReview, allowed and denied rows)."""

from __future__ import annotations

import pytest

from tests.fixtures.realkube import RealKube
from tests.fixtures.realkube_manifests import NAMESPACE, SERVICE_ACCOUNTS, Row, apply_access, review

MD = "model-locality.io"

AGENT: list[Row] = [
    ("get", "", "nodes", "", None, "node-a", True),
    ("list", "", "nodes", "", None, None, True),
    ("watch", "", "nodes", "", None, None, True),
    ("patch", "", "nodes", "", None, "node-a", True),  # labels/annotations; the policy scopes it
    ("list", "", "pods", "", None, None, True),
    ("watch", "", "pods", "", None, None, True),
    ("get", MD, "modeldistributions", "", None, "d", True),
    ("watch", MD, "modeldistributions", "", None, None, True),
    ("update", "", "nodes", "", None, "node-a", False),
    ("delete", "", "nodes", "", None, "node-a", False),
    ("patch", "", "nodes", "status", None, "node-a", False),
    ("get", "", "pods", "", "ml", "p", False),
    ("create", "", "pods", "eviction", "ml", "p", False),
    ("patch", "", "pods", "", NAMESPACE, "model-locality-agent-x", True),  # peers: its own Pod's labels
    ("patch", "", "pods", "", "ml", "p", False),
    ("get", "", "secrets", "", NAMESPACE, "model-locality-token", False),
    ("create", MD, "modeldistributions", "", None, None, False),
    ("patch", MD, "modeldistributions", "status", None, "d", False),
    ("create", "", "events", "", NAMESPACE, None, False),
]

EXTENDER: list[Row] = [
    ("get", "", "nodes", "", None, "node-a", True),
    ("list", "", "nodes", "", None, None, True),
    ("watch", "", "nodes", "", None, None, True),
    ("create", MD, "modeldistributions", "", None, None, True),
    ("delete", MD, "modeldistributions", "", None, "d", True),
    ("patch", MD, "modeldistributions", "status", None, "d", True),
    ("update", MD, "modeldistributions", "status", None, "d", True),
    ("patch", "", "nodes", "", None, "node-a", False),
    ("list", "", "pods", "", None, None, True),  # time to ready: a label-selected watch
    ("watch", "", "pods", "", None, None, True),
    ("get", "", "pods", "", "ml", "p", False),
    ("get", "apps", "deployments", "", "ml", "serve", True),  # replicas: auto
    ("get", "autoscaling", "horizontalpodautoscalers", "", "ml", "serve", True),
    ("list", "autoscaling", "horizontalpodautoscalers", "", None, None, False),
    ("update", "apps", "deployments", "", "ml", "serve", False),
    ("create", "", "pods", "binding", "ml", "p", False),
    ("get", "", "secrets", "", NAMESPACE, "model-locality-token", False),
    (
        "delete",
        "apiextensions.k8s.io",
        "customresourcedefinitions",
        "",
        None,
        f"modeldistributions.{MD}",
        False,
    ),
]

SCHEDULER: list[Row] = [
    ("create", "", "pods", "binding", "ml", "p", True),
    ("patch", "", "pods", "status", "ml", "p", True),
    ("list", "", "nodes", "", None, None, True),
    ("watch", "", "pods", "", None, None, True),
    ("create", "coordination.k8s.io", "leases", "", NAMESPACE, None, True),
    ("update", "coordination.k8s.io", "leases", "", NAMESPACE, "model-locality-scheduler", True),
    ("get", "", "configmaps", "", "kube-system", "extension-apiserver-authentication", True),
    ("update", "coordination.k8s.io", "leases", "", NAMESPACE, "someone-else", False),
    ("patch", "", "nodes", "", None, "node-a", False),
    ("delete", "", "nodes", "", None, "node-a", False),
    ("get", "", "secrets", "", NAMESPACE, "model-locality-token", False),
    ("list", MD, "modeldistributions", "", None, None, False),
]

CASES = [
    pytest.param(sa, row, id=f"{sa.removeprefix('model-locality-')}-{'allow' if row[6] else 'deny'}-{row[0]}-"
                 f"{row[2]}{'/' + row[3] if row[3] else ''}{'-' + row[5] if row[5] else ''}")
    for sa, rows in (
        ("model-locality-agent", AGENT),
        ("model-locality-extender", EXTENDER),
        ("model-locality-scheduler", SCHEDULER),
    )
    for row in rows
]  # fmt: skip


@pytest.fixture(scope="module")
def rbac(real_kube: RealKube) -> RealKube:
    apply_access(real_kube)
    return real_kube


@pytest.mark.parametrize(("service_account", "row"), CASES)
def test_service_account_may_do_exactly_what_its_component_needs(
    rbac: RealKube, service_account: str, row: Row
) -> None:
    status = review(rbac, row, service_account)
    assert bool(status.get("allowed")) is row[6], status


def test_every_component_has_its_service_account(rbac: RealKube) -> None:
    listed = rbac.request("GET", f"/api/v1/namespaces/{NAMESPACE}/serviceaccounts")["items"]
    assert set(SERVICE_ACCOUNTS) <= {sa["metadata"]["name"] for sa in listed}


def test_no_project_role_grants_wildcards_or_secrets(rbac: RealKube) -> None:
    """Read back from the server (what RBAC enforces, not what the YAML says)."""
    roles = rbac.request(
        "GET",
        "/apis/rbac.authorization.k8s.io/v1/clusterroles?labelSelector=app.kubernetes.io/part-of=model-locality",
    )
    rules = [rule for role in roles["items"] for rule in role.get("rules") or []]
    assert rules
    for rule in rules:
        assert "*" not in rule.get("verbs", []) and "*" not in rule.get("resources", [])
        assert "secrets" not in rule.get("resources", [])
