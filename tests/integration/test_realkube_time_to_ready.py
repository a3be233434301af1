"""Time to ready on the real API server, the extender running as its own ServiceAccount (rendered
RBAC): injected pods bound and made Ready (the test writes their status: there is no kubelet)
become histogram samples of the right kind and the REST summary; a ``replicas: auto``
distribution over a Deployment + HPA gets the documented warm-node count, which follows a change
of ``maxReplicas`` and of the measured cold time to ready."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from locality.contract import MODELS_ANNOTATION
from scheduler_extender.injection import CLIENT_LABEL, WAIT_CONTAINER
from tests.fixtures.extender import AUTH, SETTINGS, A, Client, Factory, extender_apps, models_annotation
from tests.fixtures.polling import eventually
from tests.fixtures.realkube import GPU, RealKube
from tests.fixtures.realkube_manifests import NAMESPACE, apply_access, kubeconfig_file

MD = "/apis/model-locality.io/v1alpha1/modeldistributions"
NS = "ttr"
HPA = f"/apis/autoscaling/v2/namespaces/{NS}/horizontalpodautoscalers"
SERVE_IMAGE = "example.invalid/serve:1"
CPU_TARGET = {"type": "Utilization", "averageUtilization": 60}


@pytest.fixture(scope="module")
def extender_kubeconfig(real_kube: RealKube, tmp_path_factory: pytest.TempPathFactory) -> Path:
    apply_access(real_kube)
    token = real_kube.token_for(NAMESPACE, "model-locality-extender")
    return kubeconfig_file(real_kube, tmp_path_factory.mktemp("extender-ttr"), token, "extender")


@pytest.fixture()
def real(real_kube: RealKube, extender_kubeconfig: Path) -> RealKube:
    real_kube.delete_all("nodes")
    real_kube.delete_all("modeldistributions", "model-locality.io/v1alpha1")
    real_kube.create_service_account(NS, "default")
    real_kube.delete_all("pods", namespace=NS)
    real_kube.delete_all("horizontalpodautoscalers", "autoscaling/v2", namespace=NS)
    real_kube.delete_all("deployments", "apps/v1", namespace=NS)
    return real_kube


@pytest.fixture()
async def extender(
    real: RealKube, extender_kubeconfig: Path, aiohttp_client: Client
) -> AsyncIterator[Factory]:
    settings = replace(SETTINGS, workload_poll_seconds=0.3, default_cold_seconds=120.0)
    async with extender_apps(
        extender_kubeconfig, aiohttp_client, request_timeout=5.0, settings=settings
    ) as start:
        yield start


def rfc3339(when: datetime) -> str:
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


def injected_pod(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    """A pod as the webhook leaves it: our label, the models annotation."""
    meta = {"name": name, "labels": {CLIENT_LABEL: "true"}, "annotations": {MODELS_ANNOTATION: A.uri}}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec}


def start_pod(real: RealKube, name: str, node: str, *, wait_s: int, ready_s: int) -> None:
    """An injected pod (our label, a wait init container), bound to ``node``, then given the
    status a kubelet would write: the wait container done ``wait_s`` and Ready ``ready_s``
    seconds after the binding."""
    spec = {
        "initContainers": [{"name": WAIT_CONTAINER, "image": "example.invalid/agent:1"}],
        "containers": [{"name": "serve", "image": SERVE_IMAGE, "resources": {"limits": {GPU: "1"}}}],
    }
    real.request("POST", f"/api/v1/namespaces/{NS}/pods", injected_pod(name, spec))
    target = {"kind": "Node", "name": node}
    binding = {"apiVersion": "v1", "kind": "Binding", "metadata": {"name": name}, "target": target}
    real.request("POST", f"/api/v1/namespaces/{NS}/pods/{name}/binding", binding)
    pod = real.request("GET", f"/api/v1/namespaces/{NS}/pods/{name}")
    scheduled = next(c for c in pod["status"]["conditions"] if c["type"] == "PodScheduled")
    bound = datetime.fromisoformat(scheduled["lastTransitionTime"].replace("Z", "+00:00"))
    wait_end, ready = rfc3339(bound + timedelta(seconds=wait_s)), rfc3339(bound + timedelta(seconds=ready_s))
    status = {
        "phase": "Running",
        "conditions": [
            *pod["status"]["conditions"],
            {"type": "Ready", "status": "True", "lastTransitionTime": ready},
        ],
        "initContainerStatuses": [
            {
                "name": WAIT_CONTAINER, "image": "example.invalid/agent:1", "imageID": "", "ready": True,
                "restartCount": 0,
                "state": {"terminated": {"exitCode": 0, "reason": "Completed", "finishedAt": wait_end}},
            }
        ],
        "containerStatuses": [
            {"name": "serve", "image": SERVE_IMAGE, "imageID": "", "ready": True, "restartCount": 0,
             "state": {"running": {"startedAt": wait_end}}}
        ],
    }  # fmt: skip
    real.request(
        "PATCH", f"/api/v1/namespaces/{NS}/pods/{name}/status", {"status": status},
        content_type="application/merge-patch+json",
    )  # fmt: skip


def histogram_count(metrics: str, kind: str, phase: str) -> float:
    return sample(metrics, "count", kind, phase)


def histogram_sum(metrics: str, kind: str, phase: str) -> float:
    return sample(metrics, "sum", kind, phase)


def sample(metrics: str, suffix: str, kind: str, phase: str) -> float:
    labels = f'kind="{kind}",model="{A.id}",phase="{phase}"'
    found = re.search(rf"model_locality_startup_seconds_{suffix}\{{{labels}\}} (\S+)", metrics)
    return float(found.group(1)) if found else 0.0


async def test_bound_and_ready_pods_are_samples_of_their_kind(real: RealKube, extender: Any) -> None:
    real.create_gpu_node("warm", {A.label_key: "ready"}, models_annotation(True))
    real.create_gpu_node("cold")
    client = await extender()
    start_pod(real, "on-warm", "warm", wait_s=1, ready_s=4)
    start_pod(real, "on-cold", "cold", wait_s=70, ready_s=90)

    async def both_recorded() -> bool:
        text = await (await client.get("/metrics")).text()
        return histogram_count(text, "warm", "ready") == 1 and histogram_count(text, "cold", "ready") == 1

    await eventually(both_recorded, within=20)
    text = await (await client.get("/metrics")).text()
    assert histogram_sum(text, "warm", "ready") == 4.0
    assert histogram_sum(text, "warm", "wait") == 1.0
    assert histogram_sum(text, "cold", "ready") == 90.0
    assert histogram_sum(text, "cold", "wait") == 70.0
    assert histogram_count(text, "fetching", "ready") == 0

    resp = await client.get(f"/v1/models/{A.id}/startup", headers=AUTH)
    assert resp.status == 200
    summary = await resp.json()
    assert summary["ready"]["warm"] == {"count": 1, "p50": 4.0, "p90": 4.0}
    assert summary["ready"]["cold"] == {"count": 1, "p50": 90.0, "p90": 90.0}
    assert summary["wait"]["cold"]["p50"] == 70.0
    assert (await client.get(f"/v1/models/{A.id}/startup")).status == 401  # reads need the token too
    bad = await client.get("/v1/models/not-an-id/startup", headers=AUTH)
    assert bad.status == 400 and "model id" in (await bad.json())["error"]

    # Deleted before Ready: counted apart, never a start.
    spec = {"nodeName": "cold", "containers": [{"name": "serve", "image": SERVE_IMAGE}]}
    real.request("POST", f"/api/v1/namespaces/{NS}/pods", injected_pod("gone", spec))
    await eventually(lambda: _tracked(client), within=10)
    real.request("DELETE", f"/api/v1/namespaces/{NS}/pods/gone?gracePeriodSeconds=0")

    async def deleted_counted() -> bool:
        text = await (await client.get("/metrics")).text()
        labels = f'kind="cold",model="{A.id}",reason="deleted"'
        return f"model_locality_startup_abandoned_total{{{labels}}} 1.0" in text

    await eventually(deleted_counted, within=10)


async def _tracked(client: Any) -> bool:
    summary = await (await client.get(f"/v1/models/{A.id}/startup", headers=AUTH)).json()
    return bool(summary["inProgress"] == 1)


def deployment(gpus: int) -> dict[str, Any]:
    limits = {"limits": {GPU: str(gpus)}}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "serve", "namespace": NS},
        "spec": {
            "replicas": 4,
            "selector": {"matchLabels": {"app": "serve"}},
            "template": {
                "metadata": {"labels": {"app": "serve"}, "annotations": {MODELS_ANNOTATION: A.uri}},
                "spec": {"containers": [{"name": "serve", "image": SERVE_IMAGE, "resources": limits}]},
            },
        },
    }  # fmt: skip


def hpa(max_replicas: int) -> dict[str, Any]:
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": "serve", "namespace": NS},
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "serve"},
            "minReplicas": 2,
            "maxReplicas": max_replicas,
            "metrics": [{"type": "Resource", "resource": {"name": "cpu", "target": CPU_TARGET}}],
            "behavior": {"scaleUp": {"policies": [{"type": "Pods", "value": 2, "periodSeconds": 60}]}},
        },
    }  # fmt: skip


def set_hpa(real: RealKube, max_replicas: int) -> None:
    real.apply_manifests([hpa(max_replicas)])
    status = {"status": {"currentReplicas": 4, "desiredReplicas": 4}}
    real.request("PATCH", f"{HPA}/serve/status", status, content_type="application/merge-patch+json")


async def test_auto_distribution_is_sized_from_the_hpa_ramp(real: RealKube, extender: Any) -> None:
    for i in range(8):
        real.create_gpu_node(f"gpu-{i}", gpus=4)
    real.apply_manifests([deployment(gpus=2)])
    set_hpa(real, max_replicas=10)
    client = await extender()
    workload = {"kind": "HorizontalPodAutoscaler", "namespace": NS, "name": "serve"}
    spec = {"uri": A.uri, "replicas": "auto", "workload": workload}
    resp = await client.post("/v1/distributions", json=spec, headers=AUTH)
    assert resp.status == 201, await resp.text()
    name = (await resp.json())["name"]

    def status() -> dict[str, Any]:
        return dict(real.request("GET", f"{MD}/{name}").get("status") or {})

    async def desired(count: int) -> bool:
        return status().get("desired") == count and len(status().get("targets", [])) == count

    # 4 replicas, +2 pods per 60 s, default cold start 120 s: syncs at 0..105 s add 2 + 2 -> 8
    # replicas; 4 GPUs per node / 2 per pod = 2 pods per node -> 4 nodes.
    await eventually(lambda: desired(4), within=20)
    auto = status()["auto"]
    assert auto["replicasAfterColdStart"] == 8 and auto["podsPerNode"] == 2 and auto["maxReplicas"] == 10
    assert auto["coldStartSeconds"] == 120 and auto["coldStartSource"] == "default"
    assert "ceil(8 / 2) = 4" in auto["arithmetic"]

    set_hpa(real, max_replicas=6)  # the cap binds: 6 replicas -> 3 nodes
    await eventually(lambda: desired(3), within=20)

    set_hpa(real, max_replicas=10)
    # Three measured cold starts of 240 s: syncs at 0..225 s add 2 + 2 + 2 -> 10 (the cap) -> 5 nodes.
    for i in range(3):
        start_pod(real, f"cold-{i}", f"gpu-{i}", wait_s=200, ready_s=240)
    await eventually(lambda: desired(5), within=20)
    assert status()["auto"]["coldStartSource"] == "measured"
    assert status()["auto"]["coldStartSeconds"] == 240
    view = await (await client.get(f"/v1/distributions/{name}", headers=AUTH)).json()
    assert view["desired"] == 5 and view["auto"]["replicasAfterColdStart"] == 10
    listed = real.request("GET", MD)["items"]
    assert json.dumps(listed)  # the stored objects (status included) passed the CRD's schema
