"""manifests/examples/engines/ on the real kube-apiserver with the upstream CRDs (../shared/crds,
checked against their SOURCES): every example is accepted with strict field validation, and the
webhook turns each engine's pod, as its controller would create it (a Deployment's, KServe's
predictor with a Knative queue-proxy, the LeaderWorkerSet leader and worker), into a pod whose
args only use variables the container defines, whose engine container mounts exactly its model
read-only, and whose other containers are what they are without the webhook.

No engine runs here (no GPU, no engine image): the checks stop at the pod spec. The pods are
built from the rendered examples the way the controllers build them (``kserve_pod``, ``lws_pod``:
KServe ``MergeRuntimeContainers``, the ISVC's annotations on the pod; the LWS controller's labels
and its webhook's ``LWS_*`` env), not by the controllers themselves.
"""

from __future__ import annotations

import asyncio
import copy
import hashlib
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes.client import ApiException

from locality.contract import pod_models
from scheduler_extender.injection import DIR_ENV, WAIT_CONTAINER, Install, model_dir, record_path
from tests.fixtures.kustomize import render
from tests.fixtures.realkube import RealKube
from tests.integration.test_webhook_kube import Hook, create_pod, registered

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "manifests" / "examples" / "engines"
CRDS = ROOT.parent / "shared" / "crds"
CRD_FILES = (
    "kserve_serving.kserve.io_inferenceservices.yaml",
    "kserve_serving.kserve.io_servingruntimes.yaml",
    "lws_leaderworkerset.x-k8s.io_leaderworkersets.yaml",
    "keda_keda.sh_scaledobjects.yaml",
    "prometheus-operator_monitoring.coreos.com_podmonitors.yaml",
)
INSTALL = Install()
VAR = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)")
Obj = dict[str, Any]


def git_blob(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()  # git's object id


def upstream_crds() -> list[Obj]:
    """The CRDs, each checked to be the upstream blob SOURCES names."""
    if not (CRDS / "SOURCES").is_file():
        pytest.skip(f"the upstream CRDs are not beside the checkout ({CRDS})")
    blobs = {
        cols[0]: cols[7]
        for line in (CRDS / "SOURCES").read_text().splitlines()
        if len(cols := [c.strip() for c in line.split("|")]) > 7
    }
    crds = []
    for name in CRD_FILES:
        data = (CRDS / name).read_bytes()
        assert git_blob(data) == blobs[name], f"{name} is not the upstream blob SOURCES names"
        crds.append(yaml.load(data, Loader=yaml.CSafeLoader))
    return crds


@pytest.fixture(scope="module")
def engines_kube(real_kube: RealKube) -> Iterator[RealKube]:
    real_kube.apply_manifests(upstream_crds(), timeout=60.0)
    yield real_kube


@pytest.fixture(scope="module")
def examples() -> list[Obj]:
    return render(EXAMPLES)


def find(objs: list[Obj], kind: str, name: str) -> Obj:
    matches = [o for o in objs if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(matches) == 1, f"{kind}/{name}: {len(matches)} found"
    return copy.deepcopy(matches[0])


def test_every_example_is_accepted_by_the_upstream_crds(engines_kube: RealKube, examples: list[Obj]) -> None:
    kinds = sorted({o["kind"] for o in examples})
    assert kinds == [
        "Deployment", "InferenceService", "LeaderWorkerSet", "Namespace", "PodMonitor", "RoleBinding",
        "ScaledObject", "Service", "ServiceAccount", "ServingRuntime",
    ]  # fmt: skip
    namespaces = [o for o in examples if o["kind"] == "Namespace"]
    engines_kube.apply_manifests(namespaces)
    for obj in examples:
        if obj["kind"] == "Namespace":
            continue
        path = engines_kube.collection_path(obj["apiVersion"], obj["kind"], obj["metadata"].get("namespace"))
        # Strict: a field the schema does not know is an error, not silently pruned.
        made = engines_kube.request("POST", f"{path}?dryRun=All&fieldValidation=Strict", obj)
        assert made["metadata"]["name"] == obj["metadata"]["name"]
    bad = find(examples, "InferenceService", "qwen-kserve")
    bad["spec"]["predictor"]["model"]["storage_uri"] = "s3://models/x"  # a typo the schema does not know
    path = engines_kube.collection_path(bad["apiVersion"], bad["kind"], "llm-serving")
    with pytest.raises(ApiException, match=r"unknown field \W*spec\.predictor\.model\.storage_uri"):
        engines_kube.request("POST", f"{path}?dryRun=All&fieldValidation=Strict", bad)
    scaled = [o for o in examples if o["kind"] == "ScaledObject"]
    targets = {(o["spec"]["scaleTargetRef"]["kind"], o["spec"]["scaleTargetRef"]["name"]) for o in scaled}
    assert targets == {
        ("Deployment", "vllm-qwen"), ("Deployment", "sglang-qwen"), ("Deployment", "tgi-qwen"),
        ("Deployment", "qwen-kserve-predictor"), ("LeaderWorkerSet", "qwen-lws"),
    }  # fmt: skip
    for obj in scaled:
        queries = [t["metadata"]["query"] for t in obj["spec"]["triggers"]]
        assert [t["name"] for t in obj["spec"]["triggers"]] == ["queue-depth", "p99-latency"]
        assert "histogram_quantile(0.99," in queries[1] and "_bucket{" in queries[1]


# --- the pods as their controllers create them ------------------------------------------------


def deployment_pod(deploy: Obj) -> Obj:
    template = deploy["spec"]["template"]
    meta = copy.deepcopy(template["metadata"])
    meta["generateName"] = f"{deploy['metadata']['name']}-5d4f8b9c7-"
    meta["labels"]["pod-template-hash"] = "5d4f8b9c7"
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": copy.deepcopy(template["spec"])}


def kserve_pod(isvc: Obj, runtime: Obj, *, knative: bool) -> Obj:
    """KServe's predictor pod: the runtime's container with the ISVC's model fields merged in
    (args appended, env merged, resources from the ISVC), ISVC annotations and labels on the pod;
    with ``knative``, the queue-proxy sidecar Knative's revision adds."""
    name = isvc["metadata"]["name"]
    predictor = isvc["spec"]["predictor"]
    model = predictor["model"]
    container = copy.deepcopy(runtime["spec"]["containers"][0])
    container["args"] = [
        a.replace("{{.Name}}", name) for a in container.get("args", []) + model.get("args", [])
    ]
    container["env"] = container.get("env", []) + model.get("env", [])
    container["resources"] = model["resources"]
    containers = [container]
    if knative:
        containers.append(
            {
                "name": "queue-proxy",
                "image": "gcr.io/knative-releases/knative.dev/serving/cmd/queue:v1.19.0",
                "ports": [{"name": "queue-port", "containerPort": 8012}],
                "env": [{"name": "USER_PORT", "value": "8080"}],
            }
        )
    labels = {
        "serving.kserve.io/inferenceservice": name,
        "component": "predictor",
        "app": f"isvc.{name}-predictor",
    }
    meta = {
        "generateName": f"{name}-predictor-7c9d6f5b8-",
        "labels": labels,
        "annotations": dict(isvc["metadata"]["annotations"]),
    }
    spec = {
        "serviceAccountName": predictor["serviceAccountName"],
        "tolerations": predictor["tolerations"],
        "containers": containers,
        "volumes": copy.deepcopy(runtime["spec"]["volumes"]),
    }
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec}


def lws_pod(lws: Obj, role: str) -> Obj:
    """A pod of group 0 from the leader or worker template, with the LWS controller's labels and
    annotations and the ``LWS_*`` env its pod webhook gives every container."""
    name = lws["metadata"]["name"]
    template = copy.deepcopy(lws["spec"]["leaderWorkerTemplate"][f"{role}Template"])
    size = lws["spec"]["leaderWorkerTemplate"]["size"]
    index = "0" if role == "leader" else "1"
    meta = template["metadata"]
    meta["name"] = name + "-0" if role == "leader" else f"{name}-0-1"
    meta["labels"] |= {
        "leaderworkerset.sigs.k8s.io/name": name,
        "leaderworkerset.sigs.k8s.io/group-index": "0",
        "leaderworkerset.sigs.k8s.io/worker-index": index,
    }
    meta["annotations"]["leaderworkerset.sigs.k8s.io/size"] = str(size)
    lws_env = [
        {"name": "LWS_LEADER_ADDRESS", "value": f"{name}-0.{name}.llm-serving"},
        {"name": "LWS_GROUP_SIZE", "value": str(size)},
        {"name": "LWS_WORKER_INDEX", "value": index},
    ]
    for container in template["spec"]["containers"]:
        container["env"] = lws_env + container.get("env", [])
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": template["spec"]}


def engine_pods(examples: list[Obj]) -> dict[str, tuple[Obj, str]]:
    """case -> (pod as its controller creates it, the name of the container that reads the model)."""
    isvc = find(examples, "InferenceService", "qwen-kserve")
    runtime = find(examples, "ServingRuntime", "vllm-model-locality")
    lws = find(examples, "LeaderWorkerSet", "qwen-lws")
    return {
        "vllm": (deployment_pod(find(examples, "Deployment", "vllm-qwen")), "vllm"),
        "sglang": (deployment_pod(find(examples, "Deployment", "sglang-qwen")), "sglang"),
        "tgi": (deployment_pod(find(examples, "Deployment", "tgi-qwen")), "tgi"),
        "kserve standard": (kserve_pod(isvc, runtime, knative=False), "kserve-container"),
        "kserve knative": (kserve_pod(isvc, runtime, knative=True), "kserve-container"),
        "lws leader": (lws_pod(lws, "leader"), "vllm-leader"),
        "lws worker": (lws_pod(lws, "worker"), "vllm-worker"),
    }


# --- what the webhook leaves ----------------------------------------------------------------


def expanded(words: list[str], env: dict[str, str]) -> list[str]:
    """``$(VAR)`` replaced as the kubelet does for variables in the container's env."""
    return [VAR.sub(lambda m: env.get(m.group(1), m.group(0)), w) for w in words]


def check_engine(pod: Obj, engine: str, uri: str) -> None:
    ref = pod_models({"model-locality.io/models": uri}).refs[0]
    container = next(c for c in pod["spec"]["containers"] if c["name"] == engine)
    env = {e["name"]: e.get("value", "") for e in container.get("env", [])}
    words = container.get("command", []) + container.get("args", [])
    used = {m for w in words for m in VAR.findall(w)}
    assert used <= env.keys(), f"{engine}: $({used - env.keys()}) is not in its env"
    assert env[DIR_ENV] == model_dir(INSTALL, ref)
    if DIR_ENV in used:
        assert any(model_dir(INSTALL, ref) in w for w in expanded(words, env))
    host = {v["name"]: v["hostPath"]["path"] for v in pod["spec"]["volumes"] if "hostPath" in v}
    assert sorted(host.values()) == sorted([model_dir(INSTALL, ref), record_path(INSTALL, ref)])
    mounts = [m for m in container["volumeMounts"] if m["name"] in host]
    assert sorted((host[m["name"]], m["mountPath"], m.get("readOnly")) for m in mounts) == sorted(
        [(p, p, True) for p in host.values()]
    )
    assert [c["name"] for c in pod["spec"]["initContainers"]] == [WAIT_CONTAINER]
    assert pod["spec"]["initContainers"][0]["args"][:2] == ["wait", ref.uri]


def sidecar(container: Obj) -> str:
    """The container as JSON, its API token volume's random suffix (kube-api-access-xxxxx) cut."""
    return re.sub(r"kube-api-access-[a-z0-9]+", "kube-api-access", json.dumps(container, sort_keys=True))


async def make(hook: Hook, ns: str, body: Obj) -> Obj:
    created: Obj = await asyncio.to_thread(create_pod, hook.kube, ns, copy.deepcopy(body))
    return created


@pytest.mark.parametrize(
    "case",
    ["vllm", "sglang", "tgi", "kserve standard", "kserve knative", "lws leader", "lws worker"],
)
async def test_the_webhook_leaves_each_engine_pod_ready_to_read_its_model(
    engines_kube: RealKube, examples: list[Obj], case: str
) -> None:
    body, engine = engine_pods(examples)[case]
    uri = body["metadata"]["annotations"]["model-locality.io/models"]
    async with registered(engines_kube, INSTALL) as hook:
        mutated_ns, plain_ns = hook.ns(), hook.ns(opted_in=False)
        for ns in (mutated_ns, plain_ns):
            engines_kube.create_service_account(ns, body["spec"]["serviceAccountName"])
        pod = await make(hook, mutated_ns, body)
        plain = await make(hook, plain_ns, body)
    assert pod["metadata"]["annotations"]["model-locality.io/injected"] == "scheduler"
    check_engine(pod, engine, uri)
    others = [sidecar(c) for c in pod["spec"]["containers"] if c["name"] != engine]
    assert others == [sidecar(c) for c in plain["spec"]["containers"] if c["name"] != engine]
    assert all(DIR_ENV not in str(c) for c in others)
    assert "initContainers" not in plain["spec"]  # the control pod really was left alone
    assert len(others) == (1 if case == "kserve knative" else 0)
