"""The real kube-scheduler with manifests/scheduler/config.yaml (pointed at this test's extender
process, running as the scheduler's ServiceAccount under the rendered RBAC) on the real API
server: annotated pods are bound to the node that holds their model; a ``required`` pod for a
model no node holds stays Pending, and its PodScheduled condition carries the extender's reason.
No kubelet: pods are bound, never run."""

from __future__ import annotations

import json
import re
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from locality.contract import LOCALITY_ANNOTATION, MODELS_ANNOTATION
from locality.identity import model_ref
from tests.e2e.procs import Processes
from tests.fixtures.kustomize import load_one
from tests.fixtures.ports import free_port
from tests.fixtures.realkube import GPU, RealKube
from tests.fixtures.realkube_manifests import NAMESPACE, apply_access, kubeconfig_file

pytestmark = pytest.mark.slow

CONFIG = Path(__file__).resolve().parents[2] / "manifests" / "scheduler" / "config.yaml"
WARM = model_ref("s3://models/org/llama-3-8b")
NOWHERE = model_ref("s3://models/org/held-by-no-node")
FETCHING = model_ref("s3://models/org/mixtral-8x7b")
PODS_NS = "e2e-sched"


def scheduler_config(kubeconfig: Path, extender_url: str) -> dict[str, Any]:
    """The shipped configuration, changed only where a test cluster differs: no leader election
    (one replica), a kubeconfig instead of in-cluster config, the extender's loopback URL."""
    config = load_one(CONFIG.read_text())
    config["leaderElection"] = {"leaderElect": False}
    config["clientConnection"] = {"kubeconfig": str(kubeconfig)}
    assert len(config["extenders"]) == 1
    config["extenders"][0]["urlPrefix"] = extender_url
    return config


def until(what: str, check: Callable[[], Any], logs: Callable[[], str], timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := check():
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}\n{logs()}")


@pytest.fixture()
def cluster(real_kube: RealKube, tmp_path: Path) -> Iterator[dict[str, Any]]:
    real = real_kube
    apply_access(real)
    real.delete_all("nodes")
    real.create_service_account(PODS_NS, "default")  # no controller-manager makes it
    real.delete_all("pods", namespace=PODS_NS)
    held = json.dumps({WARM.id: {"uri": WARM.uri, "bytes": 10**9, "state": "ready"}})
    real.create_gpu_node("gpu-warm", {WARM.label_key: "ready"}, {MODELS_ANNOTATION: held}, gpus=2)
    for name in ("gpu-cold-1", "gpu-cold-2"):
        real.create_gpu_node(name, gpus=2)

    token_file = tmp_path / "token"
    token_file.write_text("e2e-token-0123456789")
    extender_kc = kubeconfig_file(
        real, tmp_path, real.token_for(NAMESPACE, "model-locality-extender"), "extender"
    )
    scheduler_kc = kubeconfig_file(
        real, tmp_path, real.token_for(NAMESPACE, "model-locality-scheduler"), "scheduler"
    )
    procs = Processes(tmp_path)
    port = free_port()
    try:
        procs.start(
            "extender",
            ["-m", "scheduler_extender", "serve", "--host", "127.0.0.1", "--port", str(port),
             "--kubeconfig", str(extender_kc), "--token-file", str(token_file)],
            {},
        )  # fmt: skip
        url = f"http://127.0.0.1:{port}"
        procs.wait_ready("extender", f"{url}/readyz")
        config_file = tmp_path / "scheduler-config.yaml"
        config_file.write_text(yaml.safe_dump(scheduler_config(scheduler_kc, url)))
        real.start_scheduler(config_file)

        def logs() -> str:
            return f"{procs.logs()}\n--- kube-scheduler\n{real.log('kube-scheduler')}"

        yield {"real": real, "logs": logs, "url": url}
    finally:
        real.stop_process("kube-scheduler")
        procs.stop()
        real.delete_all("pods", namespace=PODS_NS)
        real.delete_all("nodes")


def create_pod(real: RealKube, name: str, annotations: dict[str, str]) -> None:
    body = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": PODS_NS, "annotations": annotations},
        "spec": {
            "schedulerName": "model-locality-scheduler",
            "containers": [
                {"name": "serve", "image": "example.invalid/serve:1", "resources": {"limits": {GPU: "1"}}}
            ],
        },
    }
    real.request("POST", f"/api/v1/namespaces/{PODS_NS}/pods", body)


def pod(real: RealKube, name: str) -> dict[str, Any]:
    found: dict[str, Any] = real.request("GET", f"/api/v1/namespaces/{PODS_NS}/pods/{name}")
    return found


def test_annotated_pods_land_on_the_warm_node(cluster: dict[str, Any]) -> None:
    real, logs = cluster["real"], cluster["logs"]
    for name in ("serve-0", "serve-1"):
        create_pod(real, name, {MODELS_ANNOTATION: WARM.uri})
    for name in ("serve-0", "serve-1"):
        node = until(f"{name} bound", lambda n=name: pod(real, n)["spec"].get("nodeName"), logs)
        assert node == "gpu-warm", logs()
    # ... because kube-scheduler asked the extender (all three nodes offered each time).
    with urllib.request.urlopen(f"{cluster['url']}/metrics", timeout=5) as resp:
        metrics = resp.read().decode()
    prioritized = re.search(
        r'model_locality_extender_requests_total\{[^}]*verb="prioritize"[^}]*\} (\S+)', metrics
    )
    assert prioritized and float(prioritized.group(1)) >= 2, metrics


def test_required_pod_for_a_model_no_node_holds_stays_pending_with_the_reason(
    cluster: dict[str, Any],
) -> None:
    real, logs = cluster["real"], cluster["logs"]
    create_pod(real, "needs-nowhere", {MODELS_ANNOTATION: NOWHERE.uri, LOCALITY_ANNOTATION: "required"})

    def unschedulable() -> dict[str, Any] | None:
        for cond in pod(real, "needs-nowhere").get("status", {}).get("conditions") or []:
            if cond["type"] == "PodScheduled" and cond["status"] == "False":
                return dict(cond)
        return None

    cond = until("PodScheduled=False", unschedulable, logs)
    assert cond["reason"] == "Unschedulable"
    # The extender's FailedNodes reason, counted over the three nodes by kube-scheduler.
    assert (
        f"0/3 nodes are available: 3 model-locality: required model not ready here: {NOWHERE.uri}"
        in (cond["message"])
    ), cond
    time.sleep(1.0)  # a second scheduling attempt does not bind it either
    assert not pod(real, "needs-nowhere")["spec"].get("nodeName")


def test_pod_lands_on_the_node_90_percent_through_a_fetch(cluster: dict[str, Any]) -> None:
    """Scoring by time: no node has FETCHING ready; gpu-cold-1 is 90% through fetching it, so
    kube-scheduler (with the extender's prioritize in its sum) binds the pod there, not to a cold node."""
    real, logs, url = cluster["real"], cluster["logs"], cluster["url"]
    progress = {"bytes": 10**10, "state": "fetching", "bytes_done": 9 * 10**9}
    entry = {FETCHING.id: {"uri": FETCHING.uri, **progress}}
    body = {"metadata": {"annotations": {MODELS_ANNOTATION: json.dumps(entry)}}}
    real.request("PATCH", "/api/v1/nodes/gpu-cold-1", body, content_type="application/merge-patch+json")
    ask = {"Pod": {"metadata": {"annotations": {MODELS_ANNOTATION: FETCHING.uri}}}, "Nodes": None,
           "NodeNames": ["gpu-warm", "gpu-cold-1", "gpu-cold-2"]}  # fmt: skip

    def scored() -> dict[str, int] | None:
        request = urllib.request.Request(
            f"{url}/prioritize", json.dumps(ask).encode(), {"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=5) as resp:
            listed = {e["Host"]: e["Score"] for e in json.loads(resp.read())}
        scores = {n: listed.get(n, 0) for n in ask["NodeNames"]}  # a host left out scores 0
        return scores if scores["gpu-cold-1"] == 9 else None  # the extender saw the progress

    assert until("the fetch progress in the node cache", scored, logs) == {
        "gpu-warm": 0, "gpu-cold-1": 9, "gpu-cold-2": 0
    }  # fmt: skip
    create_pod(real, "serve-fetching", {MODELS_ANNOTATION: FETCHING.uri})
    node = until("serve-fetching bound", lambda: pod(real, "serve-fetching")["spec"].get("nodeName"), logs)
    assert node == "gpu-cold-1", logs()
