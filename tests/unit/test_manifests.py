"""The rendered manifests: schema-valid, least-privilege, and consistent with the code they run.

Renders manifests/ (and the examples, and the ServiceMonitor component) with `kubectl kustomize`
when kubectl exists, else with the pure-Python subset in tests/fixtures/kustomize.py.
"""

from __future__ import annotations

import base64
import copy
import functools
import importlib
import importlib.util
import json
import os
import re
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import kubernetes_validate
import pytest

from locality.contract import LOCALITY_ANNOTATION, MODELS_ANNOTATION
from locality.identity import model_ref
from scheduler_extender.injection import WAIT_CONTAINER, Install, inject
from tests.fixtures.kustomize import DuplicateKeyError, Obj, load_all, load_one, render

ROOT = Path(__file__).resolve().parents[2]
MANIFESTS = ROOT / "manifests"
K8S_VERSION = "1.31.0"  # the scheduler image is v1.31.x; validate against the same minor
AGENT_PORT = 8470
EXTENDER_PORT = 8471
WEBHOOK_PORT = 8473
SERVING_PORT = 8000
CACHE_DIR = "/var/lib/model-locality"
TOKEN_FILE = "/etc/model-locality/token/token"
WORKLOADS = {"Deployment", "DaemonSet", "StatefulSet", "Job"}
COMPONENTS = ("servicemonitor", "node-restriction")
CUSTOM_GROUPS = ("model-locality.io/", "keda.sh/", "monitoring.coreos.com/")


# ---------------------------------------------------------------- rendering


@pytest.fixture(scope="module")
def base() -> list[Obj]:
    return render(MANIFESTS)


@pytest.fixture(scope="module")
def examples() -> list[Obj]:
    return render(MANIFESTS / "examples")


@pytest.fixture(scope="module")
def autoscaling() -> list[Obj]:
    return render(MANIFESTS / "examples" / "autoscaling")


@pytest.fixture(scope="module")
def with_components(tmp_path_factory: pytest.TempPathFactory) -> list[Obj]:
    """The base plus both optional components, as an operator's overlay would use them."""
    overlay = tmp_path_factory.mktemp("overlay")
    base_rel = os.path.relpath(MANIFESTS, overlay)
    comps = [os.path.relpath(MANIFESTS / "components" / c, overlay) for c in COMPONENTS]
    (overlay / "kustomization.yaml").write_text(
        f"apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n"
        f"resources: [{base_rel}]\ncomponents: [{', '.join(comps)}]\n"
    )
    return render(overlay)


@pytest.fixture(scope="module")
def everything(
    base: list[Obj], examples: list[Obj], autoscaling: list[Obj], with_components: list[Obj]
) -> list[Obj]:
    seen = {(o["kind"], o["metadata"]["name"]) for o in base}
    extra = [o for o in with_components if (o["kind"], o["metadata"]["name"]) not in seen]
    assert {o["kind"] for o in extra} == {
        "ServiceMonitor",
        "ValidatingAdmissionPolicy",
        "ValidatingAdmissionPolicyBinding",
    }
    return base + examples + autoscaling + extra


def find(objs: list[Obj], kind: str, name: str) -> Obj:
    hits = [o for o in objs if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(hits) == 1, f"expected one {kind}/{name}, found {len(hits)}"
    return hits[0]


def pod_spec(obj: Obj) -> Obj:
    spec: Obj = obj["spec"]["template"]["spec"]
    return spec


def workloads(objs: list[Obj]) -> Iterator[Obj]:
    return (o for o in objs if o["kind"] in WORKLOADS)


def all_containers(spec: Obj) -> list[Obj]:
    return list(spec.get("initContainers", [])) + list(spec["containers"])


def container(obj: Obj, name: str) -> Obj:
    hits = [c for c in all_containers(pod_spec(obj)) if c["name"] == name]
    assert len(hits) == 1, f"no container {name} in {obj['metadata']['name']}"
    return hits[0]


def env_of(c: Obj) -> dict[str, Obj]:
    return {e["name"]: e for e in c.get("env", [])}


def probe_port(c: Obj, probe: Obj) -> int:
    port = probe["httpGet"]["port"]
    if isinstance(port, int):
        return port
    named = {p["name"]: p["containerPort"] for p in c.get("ports", [])}
    assert port in named, f"probe port {port!r} is not a port of container {c['name']}"
    return int(named[port])


def scheduler_config(base: list[Obj]) -> Obj:
    deploy = find(base, "Deployment", "model-locality-scheduler")
    cm_name = next(v["configMap"]["name"] for v in pod_spec(deploy)["volumes"] if "configMap" in v)
    return load_one(find(base, "ConfigMap", cm_name)["data"]["config.yaml"])


def test_base_has_every_part(base: list[Obj]) -> None:
    kinds = {(o["kind"], o["metadata"]["name"]) for o in base}
    for expected in [
        ("Namespace", "model-locality"),
        ("CustomResourceDefinition", "modeldistributions.model-locality.io"),
        ("ServiceAccount", "model-locality-agent"),
        ("ServiceAccount", "model-locality-extender"),
        ("ServiceAccount", "model-locality-scheduler"),
        ("ClusterRole", "model-locality-agent"),
        ("ClusterRole", "model-locality-extender"),
        ("DaemonSet", "model-locality-agent"),
        ("Deployment", "model-locality-extender"),
        ("PodDisruptionBudget", "model-locality-extender"),
        ("Service", "model-locality-extender"),
        ("Deployment", "model-locality-scheduler"),
        ("NetworkPolicy", "model-locality-agent"),
        ("NetworkPolicy", "model-locality-extender"),
    ]:
        assert expected in kinds, f"missing {expected}"


def test_every_source_yaml_parses_without_duplicate_keys() -> None:
    files = sorted(MANIFESTS.rglob("*.yaml"))
    assert len(files) > 10
    for path in files:
        load_all(path.read_text())  # raises DuplicateKeyError on a repeated key


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl not installed: nothing to compare")
@pytest.mark.parametrize("where", ["", "examples", "examples/autoscaling"])
def test_fallback_renderer_matches_kubectl(where: str) -> None:
    by_kubectl = render(MANIFESTS / where)
    by_python = render(MANIFESTS / where, use_kubectl=False)
    hashed = {
        o["metadata"]["name"]
        for o in by_kubectl
        if o["kind"] in {"ConfigMap", "Secret"} and re.search(r"-[a-z0-9]{10}$", o["metadata"]["name"])
    }

    def canon(objs: list[Obj]) -> list[str]:
        out = []
        for o in objs:
            text = json.dumps(o, sort_keys=True)
            for name in hashed:
                text = text.replace(name, name[:-11])
            out.append(text)
        return sorted(out)

    assert canon(by_python) == canon(by_kubectl)


# ---------------------------------------------------------------- schema validation


def _kube_validate(obj: Obj) -> None:
    try:
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        path = "/".join(str(p) for p in exc.path)
        pytest.fail(f"{obj['kind']}/{obj['metadata']['name']}: {exc.message} at {path}")


def test_builtin_objects_validate(everything: list[Obj]) -> None:
    builtin = [o for o in everything if not o["apiVersion"].startswith(CUSTOM_GROUPS)]
    assert len(builtin) >= 25
    for obj in builtin:
        _kube_validate(obj)


def test_schema_validation_catches_a_typo(base: list[Obj]) -> None:
    broken = copy.deepcopy(find(base, "DaemonSet", "model-locality-agent"))
    pod_spec(broken)["containers"][0]["readinessprobe"] = {"httpGet": {"path": "/readyz", "port": 8470}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSION, strict=True)


def _walk(node: Any, path: str = "") -> Iterator[tuple[str, Obj]]:
    if isinstance(node, dict):
        yield path, node
        for key, value in node.get("properties", {}).items():
            yield from _walk(value, f"{path}.{key}")
        if isinstance(node.get("additionalProperties"), dict):
            yield from _walk(node["additionalProperties"], f"{path}.*")
        if "items" in node:
            yield from _walk(node["items"], f"{path}[]")


INT_OR_STRING_ANY_OF = [{"type": "integer"}, {"type": "string"}]


def crd_schema(base: list[Obj]) -> Obj:
    crd = find(base, "CustomResourceDefinition", "modeldistributions.model-locality.io")
    (version,) = crd["spec"]["versions"]
    schema: Obj = version["schema"]["openAPIV3Schema"]
    return schema


def test_crd_shape(base: list[Obj]) -> None:
    crd = find(base, "CustomResourceDefinition", "modeldistributions.model-locality.io")
    spec = crd["spec"]
    assert spec["group"] == "model-locality.io" and spec["scope"] == "Cluster"
    assert spec["names"]["kind"] == "ModelDistribution" and spec["names"]["plural"] == "modeldistributions"
    (version,) = spec["versions"]
    assert version["name"] == "v1alpha1" and version["served"] and version["storage"]
    assert version["subresources"] == {"status": {}}
    columns = {c["name"]: c["jsonPath"] for c in version["additionalPrinterColumns"]}
    assert columns["Model"] == ".spec.uri"
    assert columns["Replicas"] == ".spec.replicas"
    assert columns["Ready"] == ".status.ready"
    assert columns["Age"] == ".metadata.creationTimestamp"
    schema = version["schema"]["openAPIV3Schema"]
    props = {path for path, _ in _walk(schema)}
    for column in version["additionalPrinterColumns"]:
        if not column["jsonPath"].startswith(".metadata"):
            assert column["jsonPath"] in props, f"printer column {column['name']} points at nothing"


def test_crd_schema_is_structural_and_strict(base: list[Obj]) -> None:
    schema = crd_schema(base)
    status = schema["properties"]["status"]["properties"]
    assert set(status) == {
        "modelId",
        "label",
        "targets",
        "desired",
        "ready",
        "observedGeneration",
        "conditions",
        "nodes",
        "auto",
    }
    spec = set(schema["properties"]["spec"]["properties"])
    assert spec == {"uri", "nodeSelector", "replicas", "revision", "workload"}
    for path, node in _walk(schema):
        assert "x-kubernetes-preserve-unknown-fields" not in node, f"{path} preserves unknown fields"
        assert not ("properties" in node and "additionalProperties" in node), path
        if node.get("x-kubernetes-int-or-string"):
            assert "type" not in node and node.get("anyOf", INT_OR_STRING_ANY_OF) == INT_OR_STRING_ANY_OF
        else:
            assert "type" in node, f"{path or '<root>'} has no type (not structural)"
            assert "anyOf" not in node and "oneOf" not in node, path
    assert schema["properties"]["metadata"] == {"type": "object"}


def _to_jsonschema(node: Any) -> Any:
    """OpenAPI v3 (Kubernetes flavour) -> JSON Schema, as the API server with strict field
    validation applies it: int-or-string becomes anyOf integer/string, and objects with declared
    properties reject unknown fields (the API server would prune them, kubectl --validate=strict
    rejects them)."""
    if not isinstance(node, dict):
        return node
    out = {k: v for k, v in node.items() if not k.startswith("x-kubernetes-")}
    if node.get("x-kubernetes-int-or-string") and "anyOf" not in out:
        out["anyOf"] = INT_OR_STRING_ANY_OF
    if "properties" in out:
        out["properties"] = {k: _to_jsonschema(v) for k, v in out["properties"].items()}
        if "additionalProperties" not in out and not node.get("x-kubernetes-preserve-unknown-fields"):
            out["additionalProperties"] = False
    for key in ("items", "additionalProperties", "not"):
        if isinstance(out.get(key), dict):
            out[key] = _to_jsonschema(out[key])
    for key in ("anyOf", "allOf", "oneOf"):
        if key in out:
            out[key] = [_to_jsonschema(v) for v in out[key]]
    return out


def _md(spec: Obj, status: Obj | None = None) -> Obj:
    obj: Obj = {
        "apiVersion": "model-locality.io/v1alpha1",
        "kind": "ModelDistribution",
        "metadata": {"name": "m"},
        "spec": spec,
    }
    if status is not None:
        obj["status"] = status
    return obj


URI = "s3://models/sentence-transformers/all-MiniLM-L6-v2"
FULL_STATUS = {
    "modelId": "0123456789abcdef",
    "label": "model-locality.io/all-minilm-l6-v2.01234567",
    "targets": ["gpu-a", "gpu-b"],
    "desired": 2,
    "ready": 1,
    "observedGeneration": 3,
    "nodes": {"gpu-a": {"state": "ready", "bytes": 90868376}, "gpu-b": {"state": "fetching", "bytes": 0}},
    "conditions": [
        {
            "type": "Ready",
            "status": "False",
            "reason": "Fetching",
            "message": "1 of 2 targets ready",
            "lastTransitionTime": "2026-01-01T00:00:00Z",
            "observedGeneration": 3,
        }
    ],
}
VALID_DISTRIBUTIONS = {
    "count": _md({"uri": URI, "replicas": 3}),
    "all": _md({"uri": URI, "replicas": "all"}),
    "auto": _md(
        {"uri": URI, "replicas": "auto", "workload": {"kind": "Deployment", "namespace": "a", "name": "b"}}
    ),
    "replicas omitted": _md({"uri": URI}),
    "selector": _md({"uri": URI, "replicas": 1, "nodeSelector": {"nvidia.com/gpu.present": "true"}}),
    "https uri": _md({"uri": "https://example.com/w/model.safetensors"}),
    "revision": _md({"uri": URI, "revision": "9a7b3c1d2e4f5a6b7c8d9e0f1a2b3c4d5e6f7a8b"}),
    "full status": _md({"uri": URI, "replicas": 2}, FULL_STATUS),
}
BROKEN_DISTRIBUTIONS = {
    "negative replicas": _md({"uri": URI, "replicas": -1}),
    "zero replicas": _md({"uri": URI, "replicas": 0}),
    "fractional replicas": _md({"uri": URI, "replicas": 1.5}),
    "replicas word other than all": _md({"uri": URI, "replicas": "some"}),
    "replicas ALL upper-case": _md({"uri": URI, "replicas": "ALL"}),
    "replicas numeric string": _md({"uri": URI, "replicas": "3"}),
    "unknown spec field": _md({"uri": URI, "replica": 3}),
    "missing uri": _md({"replicas": 3}),
    "empty uri": _md({"uri": ""}),
    "uri without scheme": _md({"uri": "models/all-MiniLM-L6-v2"}),
    "non-string selector value": _md({"uri": URI, "nodeSelector": {"gpu": True}}),
    "empty revision": _md({"uri": URI, "revision": ""}),
    "revision with a space": _md({"uri": URI, "revision": "main branch"}),
    "revision too long": _md({"uri": URI, "revision": "a" * 129}),
    "non-string revision": _md({"uri": URI, "revision": 7}),
    "missing spec": {"apiVersion": "model-locality.io/v1alpha1", "kind": "ModelDistribution", "metadata": {}},
    "unknown status field": _md({"uri": URI}, {"readyNodes": 1}),
    "negative ready count": _md({"uri": URI}, {"ready": -1}),
    "condition reason with spaces": _md(
        {"uri": URI},
        {"conditions": [{**FULL_STATUS["conditions"][0], "reason": "not ready"}]},
    ),
    "bad condition status": _md(
        {"uri": URI}, {"conditions": [{**FULL_STATUS["conditions"][0], "status": "yes"}]}
    ),
}


@pytest.fixture(scope="module")
def md_validator(base: list[Obj]) -> jsonschema.protocols.Validator:
    schema = _to_jsonschema(crd_schema(base))
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(schema)


@pytest.mark.parametrize("obj", list(VALID_DISTRIBUTIONS.values()), ids=list(VALID_DISTRIBUTIONS))
def test_crd_accepts(md_validator: jsonschema.protocols.Validator, obj: Obj) -> None:
    md_validator.validate(obj)


@pytest.mark.parametrize("obj", list(BROKEN_DISTRIBUTIONS.values()), ids=list(BROKEN_DISTRIBUTIONS))
def test_crd_rejects(md_validator: jsonschema.protocols.Validator, obj: Obj) -> None:
    assert not md_validator.is_valid(obj)


def test_example_distributions_validate_against_crd(
    md_validator: jsonschema.protocols.Validator, examples: list[Obj]
) -> None:
    found = [o for o in examples if o["kind"] == "ModelDistribution"]
    assert {str(o["spec"].get("replicas")) for o in found} >= {"all"} and len(found) >= 2
    for obj in found:
        md_validator.validate(obj)
        assert "namespace" not in obj["metadata"], "ModelDistribution is cluster-scoped"
        model_ref(obj["spec"]["uri"])  # the same rules the agent and extender apply


# ---------------------------------------------------------------- RBAC


def _rules(objs: list[Obj]) -> Iterator[tuple[Obj, Obj]]:
    for obj in objs:
        if obj["kind"] in {"Role", "ClusterRole"}:
            for rule in obj.get("rules", []):
                yield obj, rule


def test_rbac_has_no_wildcards_and_no_cluster_wide_secrets(base: list[Obj]) -> None:
    rules = list(_rules(base))
    assert len(rules) >= 6
    for obj, rule in rules:
        name = f"{obj['kind']}/{obj['metadata']['name']}"
        for field in ("apiGroups", "resources", "verbs", "resourceNames", "nonResourceURLs"):
            assert not any("*" in item for item in rule.get(field, [])), f"wildcard in {name} {field}"
        if obj["kind"] == "ClusterRole":
            assert "secrets" not in rule.get("resources", []), f"{name} grants Secrets cluster-wide"
    for obj in base:
        if obj["kind"] in {"ClusterRoleBinding", "RoleBinding"}:
            assert obj["roleRef"]["name"] not in {"cluster-admin", "admin", "edit"}, obj["metadata"]["name"]


def _grants(base: list[Obj], role: str) -> dict[tuple[str, str], set[str]]:
    out: dict[tuple[str, str], set[str]] = {}
    for rule in find(base, "ClusterRole", role)["rules"]:
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                out.setdefault((group, resource), set()).update(rule["verbs"])
    return out


def test_agent_rbac_is_exactly_what_it_needs(base: list[Obj]) -> None:
    # The extender is the single writer of distribution status, so the agent
    # gets no modeldistributions/status access at all.
    assert _grants(base, "model-locality-agent") == {
        ("", "nodes"): {"get", "list", "watch", "patch"},
        ("", "pods"): {"list", "watch"},
        ("model-locality.io", "modeldistributions"): {"get", "list", "watch"},
        # the ModelAccessPolicy gate (agent/access.py): an informer, and one namespace's labels
        ("model-locality.io", "modelaccesspolicies"): {"list", "watch"},
        ("", "namespaces"): {"get"},
    }


def test_extender_rbac_is_exactly_what_it_needs(base: list[Obj]) -> None:
    assert _grants(base, "model-locality-extender") == {
        ("", "nodes"): {"get", "list", "watch"},
        ("", "pods"): {"list", "watch"},  # time to ready: the injected pods (label-selected watch)
        ("apps", "deployments"): {"get"},  # replicas: auto
        ("autoscaling", "horizontalpodautoscalers"): {"get"},
        ("model-locality.io", "modeldistributions"): {
            "get",
            "list",
            "watch",
            "create",
            "delete",
            "patch",
            "update",
        },
        ("model-locality.io", "modeldistributions/status"): {"get", "patch", "update"},
        ("admissionregistration.k8s.io", "mutatingwebhookconfigurations"): {"get", "patch"},
        ("", "events"): {"create"},
    }
    hook_rule = next(
        r
        for r in find(base, "ClusterRole", "model-locality-extender")["rules"]
        if "mutatingwebhookconfigurations" in r["resources"]
    )
    assert hook_rule["resourceNames"] == [
        find(base, "MutatingWebhookConfiguration", "model-locality")["metadata"]["name"]
    ]


def test_webhook_tls_role_is_one_secret(base: list[Obj]) -> None:
    role = find(base, "Role", "model-locality-extender-webhook-tls")
    assert role["metadata"]["namespace"] == "model-locality"
    assert role["rules"] == [
        {"apiGroups": [""], "resources": ["secrets"], "verbs": ["create"]},
        {
            "apiGroups": [""],
            "resources": ["secrets"],
            "resourceNames": ["model-locality-webhook-tls"],
            "verbs": ["get", "update"],
        },
    ]


def test_webhook_configuration(base: list[Obj]) -> None:
    (hook,) = find(base, "MutatingWebhookConfiguration", "model-locality")["webhooks"]
    assert hook["failurePolicy"] == "Ignore" and hook["sideEffects"] == "None"
    assert 3 <= hook["timeoutSeconds"] <= 5
    assert hook["rules"] == [
        {
            "apiGroups": [""],
            "apiVersions": ["v1"],
            "operations": ["CREATE"],
            "resources": ["pods"],
            "scope": "Namespaced",
        }
    ]
    assert hook["namespaceSelector"] == {"matchLabels": {"model-locality.io/injection": "enabled"}}
    assert "caBundle" not in hook["clientConfig"]  # the extender publishes its own CA
    svc_ref = hook["clientConfig"]["service"]
    svc = find(base, "Service", svc_ref["name"])
    assert svc["metadata"]["namespace"] == svc_ref["namespace"]
    (sport,) = [p for p in svc["spec"]["ports"] if p["port"] == svc_ref["port"]]
    deploy = find(base, "Deployment", "model-locality-extender")
    ext = container(deploy, "extender")
    named = {p["name"]: p["containerPort"] for p in ext["ports"]}
    assert named[sport["targetPort"]] == WEBHOOK_PORT == svc_ref["port"]
    assert f"--webhook-port={WEBHOOK_PORT}" in ext["args"]


def test_bindings_point_at_service_accounts_that_exist(base: list[Obj]) -> None:
    accounts = {
        (o["metadata"]["namespace"], o["metadata"]["name"]) for o in base if o["kind"] == "ServiceAccount"
    }
    for obj in base:
        if obj["kind"] in {"ClusterRoleBinding", "RoleBinding"}:
            for subject in obj["subjects"]:
                assert (subject["namespace"], subject["name"]) in accounts, obj["metadata"]["name"]
    for obj in workloads(base):
        sa = pod_spec(obj)["serviceAccountName"]
        assert (obj["metadata"]["namespace"], sa) in accounts


# ---------------------------------------------------------------- pods: resources, probes, images


def test_every_container_sets_requests_and_limits(everything: list[Obj]) -> None:
    count = 0
    for obj in workloads(everything):
        for c in all_containers(pod_spec(obj)):
            count += 1
            res = c.get("resources", {})
            for part in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(res.get(part, {})), f"{c['name']} lacks {part}"
    assert count >= 5  # the serving example's wait container is injected (checked in its contract test)


def test_agent_memory_request_equals_limit(base: list[Obj]) -> None:
    res = container(find(base, "DaemonSet", "model-locality-agent"), "agent")["resources"]
    assert res["requests"]["memory"] == res["limits"]["memory"]


def test_long_running_containers_have_probes(everything: list[Obj]) -> None:
    for obj in workloads(everything):
        for c in pod_spec(obj)["containers"]:
            assert "readinessProbe" in c and "livenessProbe" in c, c["name"]
    agent = container(find(everything, "DaemonSet", "model-locality-agent"), "agent")
    assert {"startupProbe", "readinessProbe", "livenessProbe"} <= set(agent)
    assert agent["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert agent["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert agent["startupProbe"]["httpGet"]["path"] == "/healthz"


def test_hostpath_volumes_are_typed(everything: list[Obj]) -> None:
    seen = 0
    for obj in workloads(everything):
        for vol in pod_spec(obj).get("volumes", []):
            if "hostPath" in vol:
                seen += 1
                assert vol["hostPath"].get("type") in {"Directory", "DirectoryOrCreate"}, vol["name"]
                assert vol["hostPath"]["path"] == CACHE_DIR
    assert seen == 1  # the agent's cache; serving pods get per-model mounts from the webhook


IMAGE = re.compile(
    r"^(?P<repo>[a-z0-9.\-/:]+?):(?P<tag>[A-Za-z0-9_][A-Za-z0-9_.\-]{0,127})(@sha256:[0-9a-f]{64})?$"
)


def test_images_are_pinned_by_tag(everything: list[Obj]) -> None:
    ours: set[str] = set()
    for obj in workloads(everything):
        for c in all_containers(pod_spec(obj)):
            match = IMAGE.match(c["image"])
            assert match, f"{c['name']}: image {c['image']!r} has no tag"
            assert match["tag"] != "latest", f"{c['name']} uses :latest"
            assert c.get("imagePullPolicy", "IfNotPresent") != "Always"
            if match["repo"].startswith("ghcr.io/model-locality/"):
                ours.add(match["tag"])
            if match["repo"] == "registry.k8s.io/kube-scheduler":
                assert re.fullmatch(r"v1\.31\.\d+", match["tag"]), "scheduler minor must match K8S_VERSION"
    assert ours == {"0.1.0"}, "every model-locality image carries the same release tag"


def _pod_sc(obj: Obj) -> Obj:
    sc: Obj = pod_spec(obj).get("securityContext", {})
    return sc


@pytest.mark.parametrize(
    ("kind", "name"),
    [
        ("DaemonSet", "model-locality-agent"),
        ("Deployment", "model-locality-extender"),
        ("Deployment", "model-locality-scheduler"),
    ],
)
def test_containers_are_locked_down(base: list[Obj], kind: str, name: str) -> None:
    obj = find(base, kind, name)
    assert _pod_sc(obj)["runAsNonRoot"] is True and _pod_sc(obj)["runAsUser"] > 0
    assert _pod_sc(obj)["seccompProfile"]["type"] == "RuntimeDefault"
    assert not pod_spec(obj).get("hostNetwork") and not pod_spec(obj).get("hostPID")
    for c in pod_spec(obj)["containers"]:
        sc = c["securityContext"]
        assert sc["readOnlyRootFilesystem"] is True
        assert sc.get("privileged") is False and sc["allowPrivilegeEscalation"] is False
        assert sc["capabilities"]["drop"] == ["ALL"] and "add" not in sc["capabilities"]
        assert sc.get("runAsUser", 1) != 0


def test_agent_root_init_step_is_minimal(base: list[Obj]) -> None:
    init = pod_spec(find(base, "DaemonSet", "model-locality-agent"))["initContainers"]
    for c in init:
        sc = c["securityContext"]
        assert sc["privileged"] is False and sc["allowPrivilegeEscalation"] is False
        assert sc["readOnlyRootFilesystem"] is True and sc["capabilities"]["drop"] == ["ALL"]
        assert set(sc["capabilities"].get("add", [])) <= {"CHOWN", "FOWNER", "DAC_READ_SEARCH"}


# ---------------------------------------------------------------- the agent DaemonSet


def test_agent_daemonset(base: list[Obj]) -> None:
    ds = find(base, "DaemonSet", "model-locality-agent")
    spec = pod_spec(ds)
    assert spec["priorityClassName"] == "system-node-critical"
    rolling = ds["spec"]["updateStrategy"]["rollingUpdate"]
    unavailable = str(rolling["maxUnavailable"])
    assert unavailable != "100%" and (not unavailable.endswith("%") or int(unavailable[:-1]) <= 50)
    # A surge pod could not bind the same hostPort next to the old one.
    assert str(rolling.get("maxSurge", 0)) in {"0", "0%"}
    terms = spec["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    keys = {e["key"] for t in terms["nodeSelectorTerms"] for e in t["matchExpressions"]}
    assert "nvidia.com/gpu.present" in keys
    assert not any(k.startswith("model-locality.io/") for k in keys), "the agent owns that label prefix"
    assert any(t.get("key") == "nvidia.com/gpu" for t in spec["tolerations"])
    agent = container(ds, "agent")
    assert env_of(agent)["NODE_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
    port, peer_port = agent["ports"]
    assert port["containerPort"] == AGENT_PORT and port["hostPort"] == AGENT_PORT
    assert peer_port["containerPort"] == 8472 and "hostPort" not in peer_port  # docs/peers.md: pod network
    peer_token = next(v for v in ds["spec"]["template"]["spec"]["volumes"] if v["name"] == "peer-token")
    (source,) = peer_token["projected"]["sources"]
    assert source["serviceAccountToken"]["audience"] == "model-locality-peer"
    assert {"POD_NAME", "POD_NAMESPACE", "POD_IP"} <= set(env_of(agent))
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert probe_port(agent, agent[probe]) == AGENT_PORT
    mounts = {m["mountPath"]: m for m in agent["volumeMounts"]}
    assert CACHE_DIR in mounts and not mounts[CACHE_DIR].get("readOnly")
    assert os.path.dirname(TOKEN_FILE) not in mounts, "the static token is opt-in (components/static-token)"


def test_agent_reads_s3_credentials_from_files_of_an_optional_secret(base: list[Obj]) -> None:
    """Files (re-read by each fetch's new boto3 session), not env vars (fixed at start-up)."""
    agent = container(find(base, "DaemonSet", "model-locality-agent"), "agent")
    assert "envFrom" not in agent
    env = {k: v.get("value") for k, v in env_of(agent).items()}
    mounts = {m["name"]: m for m in agent["volumeMounts"]}
    volumes = {v["name"]: v for v in pod_spec(find(base, "DaemonSet", "model-locality-agent"))["volumes"]}
    secret = volumes["s3"]["secret"]
    assert secret["secretName"] == "model-locality-s3" and secret["optional"] is True
    assert mounts["s3"]["readOnly"] is True
    files = [
        ("AWS_SHARED_CREDENTIALS_FILE", "credentials"),
        ("AWS_CONFIG_FILE", "config"),
        ("HF_TOKEN_PATH", "hf-token"),
    ]
    for var, key in files:
        assert env[var] == f"{mounts['s3']['mountPath']}/{key}"


def test_base_holds_no_token_and_no_placeholder(base: list[Obj]) -> None:
    """Callers are ServiceAccounts: nothing in the base authenticates by a shared secret."""
    assert not [o for o in base if o["kind"] == "Secret"]
    assert "CHANGE-ME" not in json.dumps(base)
    for kind, name, flag_env in [
        ("DaemonSet", "model-locality-agent", "MODEL_LOCALITY_AGENT_TOKEN_FILE"),
        ("Deployment", "model-locality-extender", "MODEL_LOCALITY_EXTENDER_TOKEN_FILE"),
    ]:
        obj = find(base, kind, name)
        vols = pod_spec(obj)["volumes"]
        assert not [v for v in vols if v.get("secret", {}).get("secretName") == "model-locality-token"]
        for c in all_containers(pod_spec(obj)):
            assert flag_env not in env_of(c) and not any("--token-file" in a for a in c.get("args", []))


def static_token_overlay(tmp_path: Path, token: str = "0123456789abcdef0123456789abcdef") -> list[Obj]:
    """The overlay components/static-token's header (and manifests/README.md) tells operators to write."""
    (tmp_path / "token.txt").write_text(token)
    rel = os.path.relpath(MANIFESTS, tmp_path)
    (tmp_path / "kustomization.yaml").write_text(
        f"resources: [{rel}]\n"
        f"components: [{rel}/components/static-token]\n"
        "secretGenerator:\n"
        "  - {name: model-locality-token, namespace: model-locality, files: [token=token.txt],\n"
        "     options: {disableNameSuffixHash: true}}\n"
    )
    return render(tmp_path)


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="component patches need real kustomize")
def test_static_token_component_wires_the_secret_into_agent_and_extender(tmp_path: Path) -> None:
    objs = static_token_overlay(tmp_path)
    (secret,) = [o for o in objs if o["kind"] == "Secret"]
    assert secret["metadata"]["name"] == "model-locality-token"
    assert base64.b64decode(secret["data"]["token"]) == b"0123456789abcdef0123456789abcdef"
    for kind, name, cname, var, module in [
        ("DaemonSet", "model-locality-agent", "agent", "MODEL_LOCALITY_AGENT_TOKEN_FILE", "agent.cli"),
        ("Deployment", "model-locality-extender", "extender", "MODEL_LOCALITY_EXTENDER_TOKEN_FILE",
         "scheduler_extender.cli"),
    ]:  # fmt: skip
        obj = find(objs, kind, name)
        c = container(obj, cname)
        assert env_of(c)[var]["value"] == TOKEN_FILE
        mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
        vols = {v["name"]: v for v in pod_spec(obj)["volumes"]}
        assert vols[mounts[os.path.dirname(TOKEN_FILE)]]["secret"]["secretName"] == "model-locality-token"
        assert "optional" not in vols[mounts[os.path.dirname(TOKEN_FILE)]]["secret"], "no Secret: no start"
        _parse(_builder(module), c["args"])  # the base's flags still parse beside it
    readme = (MANIFESTS / "README.md").read_text()
    assert "components/static-token" in readme and "files: [token=token.txt]" in readme


def test_secret_and_configmap_references_resolve(base: list[Obj]) -> None:
    have = {(o["kind"], o["metadata"].get("namespace"), o["metadata"]["name"]) for o in base}
    for obj in workloads(base):
        ns = obj["metadata"]["namespace"]
        for vol in pod_spec(obj).get("volumes", []):
            if "secret" in vol and not vol["secret"].get("optional"):
                assert ("Secret", ns, vol["secret"]["secretName"]) in have
            if "configMap" in vol:
                assert ("ConfigMap", ns, vol["configMap"]["name"]) in have


# ---------------------------------------------------------------- extender and services


def _service_for(objs: list[Obj], workload: Obj) -> Obj:
    labels = workload["spec"]["template"]["metadata"]["labels"]
    hits = [
        o
        for o in objs
        if o["kind"] == "Service"
        and o["metadata"]["namespace"] == workload["metadata"]["namespace"]
        and all(labels.get(k) == v for k, v in o["spec"]["selector"].items())
    ]
    assert hits, f"no Service selects {workload['metadata']['name']}"
    return hits[0]


def test_extender_deployment_service_and_pdb(base: list[Obj]) -> None:
    deploy = find(base, "Deployment", "model-locality-extender")
    assert deploy["spec"]["replicas"] == 2
    ext = container(deploy, "extender")
    port, webhook_port = ext["ports"]
    assert port["containerPort"] == EXTENDER_PORT and "hostPort" not in port
    assert webhook_port["containerPort"] == WEBHOOK_PORT and "hostPort" not in webhook_port
    for probe in ("readinessProbe", "livenessProbe"):
        assert probe_port(ext, ext[probe]) == EXTENDER_PORT
    assert ext["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert ext["livenessProbe"]["httpGet"]["path"] == "/healthz"
    pdb = find(base, "PodDisruptionBudget", "model-locality-extender")
    labels = deploy["spec"]["template"]["metadata"]["labels"]
    assert all(labels.get(k) == v for k, v in pdb["spec"]["selector"]["matchLabels"].items())
    assert 1 <= pdb["spec"]["minAvailable"] < deploy["spec"]["replicas"]
    svc = _service_for(base, deploy)
    assert svc["metadata"]["name"] == "model-locality-extender"
    sport, _ = svc["spec"]["ports"]
    assert sport["port"] == EXTENDER_PORT and sport["targetPort"] in {"http", EXTENDER_PORT}


# ---------------------------------------------------------------- second scheduler

TOP_KEYS = {
    "apiVersion",
    "kind",
    "parallelism",
    "leaderElection",
    "clientConnection",
    "enableProfiling",
    "enableContentionProfiling",
    "percentageOfNodesToScore",
    "podInitialBackoffSeconds",
    "podMaxBackoffSeconds",
    "profiles",
    "extenders",
    "delayCacheUntilActive",
}
LEADER_KEYS = {
    "leaderElect",
    "leaseDuration",
    "renewDeadline",
    "retryPeriod",
    "resourceLock",
    "resourceName",
    "resourceNamespace",
}
CLIENT_KEYS = {"kubeconfig", "acceptContentTypes", "contentType", "qps", "burst"}
PROFILE_KEYS = {"schedulerName", "percentageOfNodesToScore", "plugins", "pluginConfig"}
EXTENDER_KEYS = {
    "urlPrefix",
    "filterVerb",
    "preemptVerb",
    "prioritizeVerb",
    "bindVerb",
    "weight",
    "enableHTTPS",
    "tlsConfig",
    "httpTimeout",
    "nodeCacheCapable",
    "managedResources",
    "ignorable",
}
TLS_KEYS = {"insecure", "serverName", "certFile", "keyFile", "caFile", "certData", "keyData", "caData"}
MANAGED_KEYS = {"name", "ignoredByScheduler"}
DURATION = re.compile(r"^(\d+(\.\d+)?(ns|us|µs|ms|s|m|h))+$")
BOOLEANS = {
    "leaderElect",
    "enableHTTPS",
    "nodeCacheCapable",
    "ignorable",
    "insecure",
    "ignoredByScheduler",
    "enableProfiling",
    "enableContentionProfiling",
    "delayCacheUntilActive",
}


def spelling_errors(cfg: Obj) -> list[str]:
    """Keys kube-scheduler's strict v1 decoder would reject, and values of the wrong type."""
    errors: list[str] = []

    def check(where: str, obj: Any, allowed: set[str]) -> None:
        if not isinstance(obj, dict):
            errors.append(f"{where} is not a mapping")
            return
        errors.extend(f"unknown key {where}.{k}" for k in obj if k not in allowed)
        errors.extend(
            f"{where}.{k} must be true/false" for k in obj if k in BOOLEANS and not isinstance(obj[k], bool)
        )

    check("<top>", cfg, TOP_KEYS)
    if (
        cfg.get("apiVersion") != "kubescheduler.config.k8s.io/v1"
        or cfg.get("kind") != "KubeSchedulerConfiguration"
    ):
        errors.append("apiVersion/kind must be kubescheduler.config.k8s.io/v1 KubeSchedulerConfiguration")
    check("leaderElection", cfg.get("leaderElection", {}), LEADER_KEYS)
    check("clientConnection", cfg.get("clientConnection", {}), CLIENT_KEYS)
    for i, prof in enumerate(cfg.get("profiles", [])):
        check(f"profiles[{i}]", prof, PROFILE_KEYS)
    for i, ext in enumerate(cfg.get("extenders", [])):
        check(f"extenders[{i}]", ext, EXTENDER_KEYS)
        check(f"extenders[{i}].tlsConfig", ext.get("tlsConfig", {}), TLS_KEYS)
        for j, res in enumerate(ext.get("managedResources", [])):
            check(f"extenders[{i}].managedResources[{j}]", res, MANAGED_KEYS)
        if "httpTimeout" in ext and not DURATION.match(str(ext["httpTimeout"])):
            errors.append(f"extenders[{i}].httpTimeout is not a Go duration")
        if not isinstance(ext.get("weight", 0), int) or isinstance(ext.get("weight"), bool):
            errors.append(f"extenders[{i}].weight must be an integer")
        if ext.get("prioritizeVerb") and not ext.get("weight", 0) > 0:
            errors.append(f"extenders[{i}] sets prioritizeVerb, so weight must be > 0")
    for key in ("leaseDuration", "renewDeadline", "retryPeriod"):
        value = cfg.get("leaderElection", {}).get(key)
        if value is not None and not DURATION.match(str(value)):
            errors.append(f"leaderElection.{key} is not a Go duration")
    return errors


def test_scheduler_config_spelling(base: list[Obj]) -> None:
    assert spelling_errors(scheduler_config(base)) == []


SPELLING_MISTAKES = {
    "enableHttps (KEP sample typo)": ("extenders", 0, "enableHttps", False),
    "nodecachecapable lower-case": ("extenders", 0, "nodecachecapable", True),
    "urlprefix lower-case": ("extenders", 0, "urlprefix", "http://x"),
    "profile typo": ("profiles", 0, "scheduler_name", "x"),
    "leader election typo": ("leaderElection", None, "resourcename", "x"),
    "unknown top-level key": (None, None, "percentageOfNodeToScore", 100),
    "string boolean": ("extenders", 0, "ignorable", "true"),
    "bad duration": ("extenders", 0, "httpTimeout", "2 seconds"),
    "zero weight with prioritize": ("extenders", 0, "weight", 0),
}


@pytest.mark.parametrize("mistake", list(SPELLING_MISTAKES.values()), ids=list(SPELLING_MISTAKES))
def test_scheduler_spelling_check_catches(base: list[Obj], mistake: tuple[Any, Any, str, Any]) -> None:
    cfg = copy.deepcopy(scheduler_config(base))
    section, index, key, value = mistake
    target = cfg if section is None else cfg[section] if index is None else cfg[section][index]
    target[key] = value
    assert spelling_errors(cfg)


def test_scheduler_config_duplicate_key_is_caught() -> None:
    with pytest.raises(DuplicateKeyError):
        load_one("extenders:\n  - weight: 2\n    weight: 3\n")


def test_scheduler_config_semantics(base: list[Obj], examples: list[Obj]) -> None:
    cfg = scheduler_config(base)
    election = cfg["leaderElection"]
    assert election["leaderElect"] is True
    assert election["resourceName"] == "model-locality-scheduler"  # never the default "kube-scheduler"
    assert cfg["percentageOfNodesToScore"] == 100
    (profile,) = cfg["profiles"]
    assert profile["schedulerName"] == "model-locality-scheduler"
    (ext,) = cfg["extenders"]
    assert ext["filterVerb"] == "filter" and ext["prioritizeVerb"] == "prioritize"
    assert ext["nodeCacheCapable"] is True and ext["ignorable"] is True and ext["enableHTTPS"] is False
    assert ext["httpTimeout"] == "2s"
    assert "bindVerb" not in ext and "preemptVerb" not in ext
    # Max extender contribution = 10 (MaxExtenderPriority) x weight x 10. Positive (decisive between
    # similar nodes) and at most 200: never above TaintToleration's 300 for a PreferNoSchedule
    # taint, at most a tie with a fully matched preferred NodeAffinity (200).
    assert 0 < 10 * ext["weight"] * 10 <= 200
    # urlPrefix names the extender Service, its namespace and port; verbs are appended with "/".
    url = urlsplit(ext["urlPrefix"])
    assert url.scheme == "http" and url.path in {"", "/"}
    host = url.hostname or ""
    svc_name, svc_ns = host.split(".")[:2]
    assert host in {f"{svc_name}.{svc_ns}.svc", f"{svc_name}.{svc_ns}.svc.cluster.local"}
    svc = find(base, "Service", svc_name)
    assert svc["metadata"]["namespace"] == svc_ns
    assert url.port in {p["port"] for p in svc["spec"]["ports"]}
    extender = find(base, "Deployment", "model-locality-extender")
    assert _service_for(base, extender) is svc
    # The webhook (scheduler mode) hands the example pods to this scheduler by name.
    serving = injected(examples, base)
    assert pod_spec(serving)["schedulerName"] == profile["schedulerName"]


def test_scheduler_deployment_follows_the_multiple_schedulers_pattern(base: list[Obj]) -> None:
    cfg = scheduler_config(base)
    deploy = find(base, "Deployment", "model-locality-scheduler")
    ns = deploy["metadata"]["namespace"]
    sa = pod_spec(deploy)["serviceAccountName"]
    subject = {"kind": "ServiceAccount", "name": sa, "namespace": ns}
    bound = {
        (o["kind"], o["metadata"].get("namespace"), o["roleRef"]["name"])
        for o in base
        if o["kind"] in {"ClusterRoleBinding", "RoleBinding"} and subject in o["subjects"]
    }
    assert ("ClusterRoleBinding", None, "system:kube-scheduler") in bound
    assert ("ClusterRoleBinding", None, "system:volume-scheduler") in bound
    assert ("RoleBinding", "kube-system", "extension-apiserver-authentication-reader") in bound
    lease_ns = cfg["leaderElection"]["resourceNamespace"]
    assert lease_ns == ns, "keep the scheduler and its lease in one namespace"
    role_name = next(r for k, n, r in bound if k == "RoleBinding" and n == lease_ns)
    role = next(o for o in base if o["kind"] == "Role" and o["metadata"]["name"] == role_name)
    assert role["metadata"]["namespace"] == lease_ns
    granted = {
        v
        for rule in role["rules"]
        if cfg["leaderElection"]["resourceName"] in rule.get("resourceNames", [])
        for v in rule["verbs"]
    }
    assert {"get", "update"} <= granted
    assert any(r["resources"] == ["leases"] and "create" in r["verbs"] for r in role["rules"])
    c = container(deploy, "kube-scheduler")
    config_flag = next(a for a in c["command"] + c.get("args", []) if a.startswith("--config="))
    config_path = config_flag.split("=", 1)[1]
    mount = next(m for m in c["volumeMounts"] if config_path.startswith(m["mountPath"] + "/"))
    assert config_path.rsplit("/", 1)[1] == "config.yaml" and mount["name"] == "config"
    for probe in ("livenessProbe", "readinessProbe"):
        assert c[probe]["httpGet"]["port"] == 10259 and c[probe]["httpGet"]["scheme"] == "HTTPS"


# ---------------------------------------------------------------- CLIs accept the flags used


def _parse(build: Callable[[], Any], argv: list[str]) -> Any:
    parser = build()
    try:
        return parser.parse_args(argv)
    except SystemExit as exc:  # argparse prints the reason on stderr
        pytest.fail(f"{parser.prog} rejects {argv!r} (exit {exc.code})")


def _builder(module: str) -> Callable[[], Any]:
    if importlib.util.find_spec(module) is None:
        pytest.skip(f"{module} does not exist yet")
    return importlib.import_module(module).build_parser


def test_agent_serve_flags_are_accepted(base: list[Obj]) -> None:
    agent = container(find(base, "DaemonSet", "model-locality-agent"), "agent")
    assert agent["command"] == ["model-agent"]
    args = _parse(_builder("agent.cli"), agent["args"])
    assert args.verb == "serve"
    assert (args.host, int(args.port)) == ("0.0.0.0", AGENT_PORT)
    assert str(args.cache_dir) == CACHE_DIR and args.token_file is None


def test_extender_serve_flags_are_accepted(base: list[Obj]) -> None:
    ext = container(find(base, "Deployment", "model-locality-extender"), "extender")
    assert ext["command"] == ["model-extender"]
    args = _parse(_builder("scheduler_extender.cli"), ext["args"])
    assert (args.host, int(args.port)) == ("0.0.0.0", EXTENDER_PORT)
    assert args.token_file is None


def test_example_wait_and_serve_flags_are_accepted(examples: list[Obj], base: list[Obj]) -> None:
    serving = injected(examples, base)
    wait = container(serving, WAIT_CONTAINER)
    assert wait["command"] == ["model-agent"]
    args = _parse(_builder("agent.cli"), wait["args"])
    assert args.verb == "wait"
    server = container(serving, "server")
    assert server["command"] == ["model-serve"]
    sargs = _parse(_builder("serving.cli"), server["args"])
    assert int(sargs.port) == SERVING_PORT and sargs.host == "0.0.0.0"


# ---------------------------------------------------------------- the serving example


def injected(examples: list[Obj], base: list[Obj], mode: str = "scheduler") -> Obj:
    """The example Deployment with its pod template as the webhook mutates it, with the install's
    settings read from the extender's manifest (agent image, mode) and the agent's port."""
    import copy

    import jsonpatch

    deploy = copy.deepcopy(find(examples, "Deployment", "minilm-embed"))
    env = env_of(container(find(base, "Deployment", "model-locality-extender"), "extender"))
    agent_port = container(find(base, "DaemonSet", "model-locality-agent"), "agent")["ports"][0]["hostPort"]
    install = Install(
        mode=mode,  # type: ignore[arg-type]
        agent_image=env["MODEL_LOCALITY_AGENT_IMAGE"]["value"],
        agent_port=agent_port,
        cache_dir=CACHE_DIR,
    )
    assert env["MODEL_LOCALITY_INJECTION_MODE"]["value"] == "scheduler"
    template = {"metadata": deploy["spec"]["template"]["metadata"], "spec": pod_spec(deploy)}
    outcome = inject(template, install, {})
    assert outcome.patch and not outcome.warnings
    deploy["spec"]["template"] = jsonpatch.apply_patch(template, list(outcome.patch))
    return deploy


def test_example_is_just_the_annotation_and_a_container(examples: list[Obj]) -> None:
    spec = pod_spec(find(examples, "Deployment", "minilm-embed"))
    assert "initContainers" not in spec and "schedulerName" not in spec
    assert not [v for v in spec.get("volumes", []) if "hostPath" in v or "secret" in v]
    ns = find(examples, "Namespace", "model-serving")
    assert ns["metadata"]["labels"]["model-locality.io/injection"] == "enabled"


def test_serving_example_contract(examples: list[Obj], base: list[Obj]) -> None:
    serving = injected(examples, base)
    meta = serving["spec"]["template"]["metadata"]
    uris = [u.strip() for u in meta["annotations"][MODELS_ANNOTATION].split(",")]
    assert uris and all(model_ref(u) for u in uris)
    assert meta["annotations"][LOCALITY_ANNOTATION] in {"preferred", "required"}
    wait = container(serving, WAIT_CONTAINER)
    assert wait["args"][0] == "wait" and wait["args"][1] in uris
    assert {"cpu", "memory"} <= set(wait["resources"]["requests"]) & set(wait["resources"]["limits"])
    env = env_of(wait)
    assert env["HOST_IP"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.hostIP"
    agent_port = container(find(base, "DaemonSet", "model-locality-agent"), "agent")["ports"][0]["hostPort"]
    assert env["MODEL_LOCALITY_AGENT_URL"]["value"] == f"http://$(HOST_IP):{agent_port}"
    server = container(serving, "server")
    ref = model_ref(uris[0])
    assert env_of(server)["MODEL_LOCALITY_MODEL_DIR"]["value"] == f"{CACHE_DIR}/models/{ref.id}"
    mounts = {m["name"]: m for m in server["volumeMounts"]}
    host_vols = [v for v in pod_spec(serving)["volumes"] if "hostPath" in v]
    assert {v["hostPath"]["path"] for v in host_vols} == {
        f"{CACHE_DIR}/models/{ref.id}",
        f"{CACHE_DIR}/records/{ref.id}.json",
    }, "exactly this model, never the whole cache"
    for vol in host_vols:
        assert mounts[vol["name"]]["readOnly"] is True
        assert mounts[vol["name"]]["mountPath"] == vol["hostPath"]["path"], "the agent's paths are valid here"
    assert "nvidia.com/gpu" in server["resources"]["limits"]
    for probe, path in [("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")]:
        assert server[probe]["httpGet"]["path"] == path
        assert probe_port(server, server[probe]) == SERVING_PORT


def _selects(policy_peer: Obj, labels: dict[str, str]) -> bool:
    wanted = policy_peer.get("podSelector", {}).get("matchLabels", {})
    return "podSelector" in policy_peer and all(labels.get(k) == v for k, v in wanted.items())


def test_network_policies_admit_the_right_callers(base: list[Obj], examples: list[Obj]) -> None:
    agent_np = find(base, "NetworkPolicy", "model-locality-agent")
    rule, peers_rule = agent_np["spec"]["ingress"]
    assert [p["port"] for p in rule["ports"]] == [AGENT_PORT]
    agent_labels = find(base, "DaemonSet", "model-locality-agent")["spec"]["template"]["metadata"]["labels"]
    assert [p["port"] for p in peers_rule["ports"]] == [8472]  # docs/peers.md: agents only
    assert [_selects(peer, agent_labels) for peer in peers_rule["from"]] == [True]
    serving_labels = injected(examples, base)["spec"]["template"]["metadata"]["labels"]
    assert any(
        _selects(peer, serving_labels) and peer.get("namespaceSelector") == {} for peer in rule["from"]
    )
    ext_np = find(base, "NetworkPolicy", "model-locality-extender")
    rule, webhook_rule = ext_np["spec"]["ingress"]
    assert webhook_rule == {"ports": [{"port": WEBHOOK_PORT, "protocol": "TCP"}]}  # the API server
    assert [p["port"] for p in rule["ports"]] == [EXTENDER_PORT]
    sched_labels = find(base, "Deployment", "model-locality-scheduler")["spec"]["template"]["metadata"][
        "labels"
    ]
    assert any(_selects(peer, sched_labels) for peer in rule["from"])
    assert any("namespaceSelector" in peer and "podSelector" not in peer for peer in rule["from"]), (
        "operators"
    )
    for np, kind, name in [
        (agent_np, "DaemonSet", "model-locality-agent"),
        (ext_np, "Deployment", "model-locality-extender"),
    ]:
        labels = find(base, kind, name)["spec"]["template"]["metadata"]["labels"]
        assert all(labels.get(k) == v for k, v in np["spec"]["podSelector"]["matchLabels"].items())
        assert np["spec"]["policyTypes"] == ["Ingress"]


# ---------------------------------------------------------------- CRDs of others: KEDA, Prometheus Operator

SCALED_OBJECT_SPEC_KEYS = {
    "scaleTargetRef",
    "pollingInterval",
    "cooldownPeriod",
    "initialCooldownPeriod",
    "idleReplicaCount",
    "minReplicaCount",
    "maxReplicaCount",
    "fallback",
    "advanced",
    "triggers",
}
PROMETHEUS_TRIGGER_KEYS = {
    "serverAddress",
    "query",
    "threshold",
    "activationThreshold",
    "namespace",
    "customHeaders",
    "ignoreNullValues",
    "unsafeSsl",
    "queryParameters",
}
SERVICE_MONITOR_ENDPOINT_KEYS = {
    "port",
    "targetPort",
    "path",
    "scheme",
    "interval",
    "scrapeTimeout",
    "relabelings",
    "metricRelabelings",
    "honorLabels",
    "bearerTokenSecret",
    "tlsConfig",
    "params",
}


def test_scaled_object_scales_the_example_on_queue_depth(autoscaling: list[Obj], examples: list[Obj]) -> None:
    so = find(autoscaling, "ScaledObject", "minilm-embed")
    assert so["apiVersion"] == "keda.sh/v1alpha1"
    assert set(so["spec"]) <= SCALED_OBJECT_SPEC_KEYS
    target = so["spec"]["scaleTargetRef"]
    deploy = find(examples, target["kind"], target["name"])
    assert deploy["metadata"]["namespace"] == so["metadata"]["namespace"]
    assert 1 <= so["spec"]["minReplicaCount"] < so["spec"]["maxReplicaCount"]
    (trigger,) = so["spec"]["triggers"]
    assert trigger["type"] == "prometheus" and set(trigger["metadata"]) <= PROMETHEUS_TRIGGER_KEYS
    assert "model_locality_serving_queue_depth" in trigger["metadata"]["query"]
    assert float(trigger["metadata"]["threshold"]) > 0 and isinstance(trigger["metadata"]["threshold"], str)


def test_service_monitors_select_services_with_those_ports(everything: list[Obj]) -> None:
    monitors = [o for o in everything if o["kind"] == "ServiceMonitor"]
    assert {m["metadata"]["name"] for m in monitors} == {
        "model-locality-agent",
        "model-locality-extender",
        "minilm-embed",
    }
    services = [o for o in everything if o["kind"] == "Service"]
    for mon in monitors:
        ns = mon["metadata"]["namespace"]
        wanted = mon["spec"]["selector"]["matchLabels"]
        hits = [
            s
            for s in services
            if s["metadata"]["namespace"] == ns
            and all(s["metadata"].get("labels", {}).get(k) == v for k, v in wanted.items())
        ]
        assert hits, f"ServiceMonitor {mon['metadata']['name']} selects no Service"
        for ep in mon["spec"]["endpoints"]:
            assert set(ep) <= SERVICE_MONITOR_ENDPOINT_KEYS
            assert ep["port"] in {p["name"] for s in hits for p in s["spec"]["ports"]}
            assert ep["path"] == "/metrics"


# ---------------------------------------------------------------- Dockerfiles

DOCKERFILES = {
    "agent": ROOT / "docker" / "agent.Dockerfile",
    "serving": ROOT / "docker" / "serving.Dockerfile",
}


def _stages(text: str) -> list[list[str]]:
    lines: list[str] = []
    for raw in re.sub(r"\\\n", " ", text).splitlines():
        line = raw.strip()
        if line and not line.startswith("#"):
            lines.append(line)
    stages: list[list[str]] = []
    for line in lines:
        if line.upper().startswith("FROM "):
            stages.append([])
        assert stages, "instruction before the first FROM"
        stages[-1].append(line)
    return stages


@pytest.mark.parametrize("path", list(DOCKERFILES.values()), ids=list(DOCKERFILES))
def test_dockerfile_lint(path: Path) -> None:
    stages = _stages(path.read_text())
    assert len(stages) >= 2, "multi-stage: build in one stage, install in another"
    for stage in stages:
        image = stage[0].split()[1]
        tag = image.rsplit(":", 1)[1] if ":" in image.rsplit("/", 1)[-1] else ""
        assert tag and tag != "latest" and re.search(r"\d", tag), f"unpinned base {image}"
    names = {stage[0].split()[-1].lower() for stage in stages if " as " in stage[0].lower()}
    for line in (line for stage in stages for line in stage):
        if line.upper().startswith("COPY --FROM="):
            src = line.split()[1].split("=", 1)[1]
            pinned = ":" in src and not src.endswith(":latest")
            assert src.lower() in names or pinned, f"unpinned COPY --from {src}"
    runtime = stages[-1]
    users = [line.split()[1] for line in runtime if line.upper().startswith("USER ")]
    assert users, "runtime stage must switch to a non-root USER"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) != 0, "USER must be a numeric non-root uid (runAsNonRoot checks it)"
    runtime_text = " ".join(runtime)
    for tool in ("build-essential", "gcc", "g++", "git ", "pip wheel", "uv build"):
        assert tool not in runtime_text, f"build tool {tool!r} in the runtime stage"
    for line in (line for stage in stages for line in stage):
        if line.upper().startswith("COPY ") and "--from" not in line:
            for src in line.split()[1:-1]:
                assert (ROOT / src).exists(), f"COPY of missing {src}"


def test_dockerignore_keeps_what_the_images_copy() -> None:
    kept = {
        line[1:].rstrip("/")
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.startswith("!")
    }
    assert {"pyproject.toml", "README.md", "agent", "scheduler_extender", "serving"} <= kept


# ---------------------------------------------------------------- the extender's real status fits the CRD


def _node(name: str, labels: dict[str, str]) -> Obj:
    return {
        "metadata": {"name": name, "labels": {"nvidia.com/gpu.present": "true", **labels}},
        "status": {
            "conditions": [{"type": "Ready", "status": "True"}],
            "allocatable": {"nvidia.com/gpu": "1"},
        },
    }


STATUS_SPECS = {
    "two replicas, one ready": {"uri": URI, "replicas": 2},
    "all nodes": {"uri": URI, "replicas": "all", "nodeSelector": {"nvidia.com/gpu.present": "true"}},
    "more replicas than nodes": {"uri": URI, "replicas": 5},
    "invalid spec": {"uri": "ftp://nope/x"},
}


@pytest.mark.parametrize("spec", list(STATUS_SPECS.values()), ids=list(STATUS_SPECS))
def test_status_written_by_the_extender_fits_the_crd(
    md_validator: jsonschema.protocols.Validator, spec: Obj
) -> None:
    if importlib.util.find_spec("scheduler_extender.specs") is None:
        pytest.skip("scheduler_extender.specs does not exist yet")
    from scheduler_extender.index import NodeIndex
    from scheduler_extender.nodes import node_state
    from scheduler_extender.specs import desired_status

    label = model_ref(URI).label_key
    index = NodeIndex(
        node_state(n) for n in [_node("gpu-a", {label: "ready"}), _node("gpu-b", {}), _node("gpu-c", {})]
    )
    obj = _md(spec)
    obj["metadata"]["generation"] = 4
    obj["status"] = desired_status(obj, index, "2026-01-01T00:00:00Z")
    assert obj["status"]["observedGeneration"] == 4
    md_validator.validate(obj)


# ---------------------------------------------------------------- node-restriction admission policy

AGENT_USER = "system:serviceaccount:model-locality:model-locality-agent"
NODE_NAME_EXTRA = "authentication.kubernetes.io/node-name"


def _node_obj(name: str, labels: dict[str, str], annotations: dict[str, str], taints: list[Obj]) -> Obj:
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": labels, "annotations": annotations},
        "spec": {"podCIDR": "10.0.1.0/24", "taints": taints},
    }


OLD_NODE = _node_obj(
    "gpu-a",
    {"kubernetes.io/hostname": "gpu-a", "model-locality.io/old-model.89abcdef": "ready"},
    {"node.alpha.kubernetes.io/ttl": "0", "model-locality.io/models": "{}"},
    [{"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}],
)


def _changed(section: str, key: str, value: Any) -> Obj:
    """OLD_NODE with one label/annotation set (``None``: removed) or one spec field replaced."""
    node = copy.deepcopy(OLD_NODE)
    target = node["spec"] if section == "spec" else node["metadata"][section]
    if value is None:
        del target[key]
    else:
        target[key] = value
    return node


OUR_LABEL = "model-locality.io/all-minilm-l6-v2.01234567"
ADD_OUR_LABEL = _changed("labels", OUR_LABEL, "ready")
ADMISSION_CASES = {
    # name: (user, node-name claim in the token, new object, allowed)
    "own node, add model label": (AGENT_USER, ["gpu-a"], ADD_OUR_LABEL, True),
    "own node, drop model label": (
        AGENT_USER,
        ["gpu-a"],
        _changed("labels", "model-locality.io/old-model.89abcdef", None),
        True,
    ),
    "own node, models annotation": (
        AGENT_USER,
        ["gpu-a"],
        _changed("annotations", "model-locality.io/models", '{"x": 1}'),
        True,
    ),
    "other node": (AGENT_USER, ["gpu-b"], ADD_OUR_LABEL, False),
    "token without node name (before 1.30)": (AGENT_USER, None, ADD_OUR_LABEL, False),
    "foreign label added": (AGENT_USER, ["gpu-a"], _changed("labels", "role", "x"), False),
    "foreign label removed": (
        AGENT_USER,
        ["gpu-a"],
        _changed("labels", "kubernetes.io/hostname", None),
        False,
    ),
    "foreign annotation changed": (
        AGENT_USER,
        ["gpu-a"],
        _changed("annotations", "node.alpha.kubernetes.io/ttl", "30"),
        False,
    ),
    "taint removed": (AGENT_USER, ["gpu-a"], _changed("spec", "taints", []), False),
    "another user is not matched": (
        "system:serviceaccount:kube-system:node-controller",
        None,
        _changed("spec", "taints", []),
        True,
    ),
}


@pytest.fixture(scope="module")
def node_policy(with_components: list[Obj]) -> Obj:
    return find(with_components, "ValidatingAdmissionPolicy", "model-locality-agent-node-scope")


@functools.cache
def _cel_program(expr: str) -> Any:
    import celpy

    env = celpy.Environment()
    return env.program(env.compile(expr))


def _admit(policy: Obj, user: str, node_names: list[str] | None, new: Obj, old: Obj) -> list[str]:
    """Evaluate the policy as the API server would (matchConditions, variables, validations);
    return the messages of the failed validations."""
    celpy = pytest.importorskip("celpy")

    def run(expr: str, activation: dict[str, Any]) -> Any:
        result = _cel_program(expr).evaluate(activation)
        if isinstance(result, Exception):  # celpy returns some evaluation errors as values
            pytest.fail(f"CEL error in {expr!r}: {result}")
        return result

    user_info: Obj = {"username": user}
    if node_names is not None:
        user_info["extra"] = {NODE_NAME_EXTRA: node_names}
    activation = {
        "object": celpy.json_to_cel(new),
        "oldObject": celpy.json_to_cel(old),
        "request": celpy.json_to_cel({"operation": "UPDATE", "userInfo": user_info}),
    }
    if not all(bool(run(c["expression"], activation)) for c in policy["spec"]["matchConditions"]):
        return []
    variables = celpy.celtypes.MapType({})
    for var in policy["spec"]["variables"]:
        value = run(var["expression"], {**activation, "variables": variables})
        variables[celpy.celtypes.StringType(var["name"])] = value
    activation["variables"] = variables
    return [v["message"] for v in policy["spec"]["validations"] if not bool(run(v["expression"], activation))]


@pytest.mark.parametrize("case", list(ADMISSION_CASES.values()), ids=list(ADMISSION_CASES))
def test_node_restriction_policy(node_policy: Obj, case: tuple[str, list[str] | None, Obj, bool]) -> None:
    user, node_names, new, allowed = case
    assert new != OLD_NODE or not allowed
    failures = _admit(node_policy, user, node_names, new, OLD_NODE)
    assert (failures == []) is allowed, failures


def test_node_restriction_binding_denies(with_components: list[Obj], node_policy: Obj) -> None:
    binding = find(with_components, "ValidatingAdmissionPolicyBinding", "model-locality-agent-node-scope")
    assert binding["spec"]["policyName"] == node_policy["metadata"]["name"]
    assert binding["spec"]["validationActions"] == ["Deny"]
    assert node_policy["spec"]["failurePolicy"] == "Fail"
    agent_sa = find(with_components, "ServiceAccount", "model-locality-agent")["metadata"]
    expected = f"system:serviceaccount:{agent_sa['namespace']}:{agent_sa['name']}"
    assert expected == AGENT_USER
    assert AGENT_USER in node_policy["spec"]["matchConditions"][0]["expression"]
