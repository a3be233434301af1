"""The install's identity part: the ModelAccessPolicy CRD and its default, the roles of users and
admins, the review rights of the services, and the serving example's own ServiceAccount."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jsonschema
import pytest

from agent.face.app import RULES as AGENT_RULES
from locality import auth
from locality.access_policy import decide, parse_policy
from locality.agentclient import DEFAULT_TOKEN_FILE
from scheduler_extender.distributions import RULES as EXTENDER_RULES
from scheduler_extender.injection import WAIT_CONTAINER
from tests.fixtures.kustomize import Obj, render
from tests.unit.test_manifests import _to_jsonschema, _walk, container, find, injected, pod_spec

MANIFESTS = Path(__file__).resolve().parents[2] / "manifests"
CRD = "modelaccesspolicies.model-locality.io"
GROUP = auth.API_GROUP


@pytest.fixture(scope="module")
def base() -> list[Obj]:
    return render(MANIFESTS)


@pytest.fixture(scope="module")
def examples() -> list[Obj]:
    return render(MANIFESTS / "examples")


def grants(role: Obj) -> dict[tuple[str, str], set[str]]:
    out: dict[tuple[str, str], set[str]] = {}
    for rule in role.get("rules", []):
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                out.setdefault((group, resource), set()).update(rule["verbs"])
    return out


def policy_schema(base: list[Obj]) -> Obj:
    (version,) = find(base, "CustomResourceDefinition", CRD)["spec"]["versions"]
    schema: Obj = version["schema"]["openAPIV3Schema"]
    return schema


# ---------------------------------------------------------------- the ModelAccessPolicy CRD


def test_policy_crd_shape(base: list[Obj]) -> None:
    spec = find(base, "CustomResourceDefinition", CRD)["spec"]
    assert spec["group"] == GROUP and spec["scope"] == "Cluster"
    assert spec["names"]["kind"] == "ModelAccessPolicy" and spec["names"]["plural"] == "modelaccesspolicies"
    (version,) = spec["versions"]
    assert version["name"] == "v1alpha1" and version["served"] and version["storage"]
    props = {path for path, _ in _walk(version["schema"]["openAPIV3Schema"])}
    for column in version["additionalPrinterColumns"]:
        if not column["jsonPath"].startswith(".metadata"):
            assert column["jsonPath"] in props, f"printer column {column['name']} points at nothing"


def test_policy_crd_is_structural_and_strict(base: list[Obj]) -> None:
    schema = policy_schema(base)
    assert set(schema["properties"]["spec"]["properties"]) == {
        "namespaceSelector",
        "allowedURIPrefixes",
        "credentialsSecretRef",
    }
    for path, node in _walk(schema):
        assert "x-kubernetes-preserve-unknown-fields" not in node, path
        assert "type" in node, f"{path or '<root>'} has no type (not structural)"


def _pol(spec: Any) -> Obj:
    return {
        "apiVersion": f"{GROUP}/v1alpha1",
        "kind": "ModelAccessPolicy",
        "metadata": {"name": "p"},
        "spec": spec,
    }


ALL = {"namespaceSelector": {}, "allowedURIPrefixes": ["s3://"]}
VALID = {
    "select all": ALL,
    "matchLabels": {**ALL, "namespaceSelector": {"matchLabels": {"team": "a"}}},
    "matchExpressions": {
        **ALL,
        "namespaceSelector": {"matchExpressions": [{"key": "team", "operator": "In", "values": ["a", "b"]}]},
    },
    "credentials": {**ALL, "credentialsSecretRef": {"name": "team-a-s3"}},
    "bucket prefix": {**ALL, "allowedURIPrefixes": ["s3://models/team-a", "hf://org"]},
}
BROKEN = {
    "no prefixes": {"namespaceSelector": {}, "allowedURIPrefixes": []},
    "prefixes missing": {"namespaceSelector": {}},
    "selector missing": {"allowedURIPrefixes": ["s3://"]},
    "prefix without scheme": {**ALL, "allowedURIPrefixes": ["models/team-a"]},
    "empty prefix": {**ALL, "allowedURIPrefixes": [""]},
    "unknown spec field": {**ALL, "allowedPrefixes": ["s3://"]},
    "bad operator": {**ALL, "namespaceSelector": {"matchExpressions": [{"key": "t", "operator": "Is"}]}},
    "secret ref without name": {**ALL, "credentialsSecretRef": {}},
    "secret ref with namespace": {**ALL, "credentialsSecretRef": {"name": "s", "namespace": "x"}},
}


@pytest.fixture(scope="module")
def validator(base: list[Obj]) -> jsonschema.protocols.Validator:
    schema = _to_jsonschema(policy_schema(base))
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(schema)


@pytest.mark.parametrize("spec", list(VALID.values()), ids=list(VALID))
def test_policy_crd_accepts(validator: jsonschema.protocols.Validator, spec: Obj) -> None:
    validator.validate(_pol(spec))
    parse_policy(_pol(spec))  # and the agent can use what the API server admits


@pytest.mark.parametrize("spec", list(BROKEN.values()), ids=list(BROKEN))
def test_policy_crd_rejects(validator: jsonschema.protocols.Validator, spec: Obj) -> None:
    assert not validator.is_valid(_pol(spec))


@pytest.mark.parametrize(
    "uri",
    ["s3://models/x", "http://origin.example/w.bin", "https://origin.example/w.bin", "hf://org/model"],
)
def test_default_policy_allows_every_namespace_every_scheme(
    base: list[Obj], validator: jsonschema.protocols.Validator, uri: str
) -> None:
    (obj,) = [o for o in base if o["kind"] == "ModelAccessPolicy"]
    validator.validate(obj)
    policy = parse_policy(obj)
    assert policy.credentials_secret is None, "the default uses the agents' own credentials"
    assert decide([policy], "any-namespace", {}, uri).allowed


def test_readme_says_what_the_default_policy_means() -> None:
    text = (MANIFESTS / "README.md").read_text()
    assert "allow-all" in text and "ModelAccessPolicy" in text
    assert "copy the Secret" not in text and "Copy the Secret" not in text


# ---------------------------------------------------------------- roles


def test_services_may_review_tokens_and_access(base: list[Obj]) -> None:
    role = find(base, "ClusterRole", "model-locality-auth-reviewer")
    assert grants(role) == {
        ("authentication.k8s.io", "tokenreviews"): {"create"},
        ("authorization.k8s.io", "subjectaccessreviews"): {"create"},
    }
    binding = find(base, "ClusterRoleBinding", "model-locality-auth-reviewer")
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert {(s["namespace"], s["name"]) for s in binding["subjects"]} == {
        ("model-locality", "model-locality-agent"),
        ("model-locality", "model-locality-extender"),
    }


def test_user_role_is_requesting_models_and_aggregates_into_edit_and_admin(base: list[Obj]) -> None:
    role = find(base, "ClusterRole", "model-locality-user")
    assert grants(role) == {(GROUP, "modelrequests"): {"create"}}
    labels = role["metadata"]["labels"]
    assert labels["rbac.authorization.k8s.io/aggregate-to-edit"] == "true"
    assert labels["rbac.authorization.k8s.io/aggregate-to-admin"] == "true"
    assert "rbac.authorization.k8s.io/aggregate-to-view" not in labels, "view never creates"


def test_admin_role_is_distributions_policies_and_deletes_not_aggregated(base: list[Obj]) -> None:
    role = find(base, "ClusterRole", "model-locality-admin")
    every = {"get", "list", "watch", "create", "update", "patch", "delete", "deletecollection"}
    got = grants(role)
    assert got[(GROUP, "modeldistributions")] == every
    assert got[(GROUP, "modelaccesspolicies")] == every
    assert "delete" in got[(GROUP, "modelrequests")]
    aggregate = [
        k for k in role["metadata"].get("labels", {}) if k.startswith("rbac.authorization.k8s.io/aggregate")
    ]
    assert not aggregate, "namespace admins must not get cluster-scoped distribution and policy rights"


def test_roles_cover_every_rule_the_services_check(base: list[Obj]) -> None:
    """Each RBAC check of the agent's and the extender's REST is granted by the admin role, and the
    user role grants the one a serving pod makes."""
    admin = grants(find(base, "ClusterRole", "model-locality-admin"))
    user = grants(find(base, "ClusterRole", "model-locality-user"))
    for rule in [*AGENT_RULES.values(), *EXTENDER_RULES.values()]:
        assert rule.verb in admin.get((GROUP, rule.resource), set()), rule
    caller = [r for r in AGENT_RULES.values() if r.scope == "caller"]
    assert caller and all(r.verb in user.get((GROUP, r.resource), set()) for r in caller)


# ---------------------------------------------------------------- the serving example


def test_example_pods_run_as_a_service_account_with_the_user_role(examples: list[Obj]) -> None:
    deploy = find(examples, "Deployment", "minilm-embed")
    sa_name = pod_spec(deploy)["serviceAccountName"]
    ns = deploy["metadata"]["namespace"]
    sa = find(examples, "ServiceAccount", sa_name)
    assert sa["metadata"]["namespace"] == ns and sa["automountServiceAccountToken"] is False
    bindings = [o for o in examples if o["kind"] == "RoleBinding" and o["metadata"]["namespace"] == ns]
    assert any(
        b["roleRef"]
        == {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "model-locality-user"}
        and {"kind": "ServiceAccount", "name": sa_name, "namespace": ns} in b["subjects"]
        for b in bindings
    )
    assert not [o for o in examples if o["kind"] == "Secret"], "no token Secret in user namespaces"


def test_injected_wait_container_sends_a_projected_token_of_our_audience(
    examples: list[Obj], base: list[Obj]
) -> None:
    serving = injected(examples, base)
    wait = container(serving, WAIT_CONTAINER)
    token_file = {e["name"]: e.get("value") for e in wait["env"]}["MODEL_LOCALITY_AGENT_TOKEN_FILE"]
    assert token_file == DEFAULT_TOKEN_FILE, "the client's default finds it even without the env"
    (mount,) = [m for m in wait["volumeMounts"] if token_file.startswith(m["mountPath"] + "/")]
    (volume,) = [v for v in pod_spec(serving)["volumes"] if v["name"] == mount["name"]]
    (source,) = volume["projected"]["sources"]
    projected = source["serviceAccountToken"]
    assert projected["audience"] == auth.AUDIENCE
    assert mount["mountPath"] + "/" + projected["path"] == token_file
    assert 600 <= projected["expirationSeconds"] <= 3600 * 24
