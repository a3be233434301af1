"""The agent's Node writes on the real API server, as the agent's own ServiceAccount (token bound
to its pod) under the rendered RBAC and the node-scope admission policy: its model labels and
annotations land on its own Node; any other Node, label or field is refused."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from agent.cluster.nodesync import NodeSync
from agent.metrics import AgentMetrics
from locality.contract import MODELS_ANNOTATION
from locality.kube import Kube, KubeError
from tests.fixtures.nodesync import A, B, StateSource, state
from tests.fixtures.realkube import RealKube
from tests.fixtures.realkube_manifests import agent_token, apply_access, kubeconfig_file


@pytest.fixture(scope="module")
def cluster(real_kube: RealKube, tmp_path_factory: pytest.TempPathFactory) -> tuple[RealKube, Path]:
    apply_access(real_kube)
    present = {n["metadata"]["name"] for n in real_kube.request("GET", "/api/v1/nodes")["items"]}
    for name in ("agent-node-a", "agent-node-b"):
        if name in present:  # the server is shared by the session
            real_kube.request("DELETE", f"/api/v1/nodes/{name}")
        real_kube.create_gpu_node(name, labels={"pool": "gpu"}, annotations={"team": "ml"})
    token = agent_token(real_kube, "agent-node-a")
    kubeconfig = kubeconfig_file(real_kube, tmp_path_factory.mktemp("agent"), token, "agent")
    wait_policy_enforced(kubeconfig)
    return real_kube, kubeconfig


def wait_policy_enforced(kubeconfig: Path, timeout: float = 15.0) -> None:
    """A new ValidatingAdmissionPolicy takes effect a moment after it is created: dry-run a
    write it refuses until it does."""
    from kubernetes import client, config

    api = config.new_client_from_config(config_file=str(kubeconfig))
    deadline = time.monotonic() + timeout
    try:
        while True:
            try:
                body = {"metadata": {"labels": {A.label_key: "ready"}}}
                client.CoreV1Api(api).patch_node("agent-node-b", body, dry_run="All")
            except client.ApiException as err:
                if err.status == 403 and "ValidatingAdmissionPolicy" in str(err.body):
                    return
                raise
            if time.monotonic() > deadline:
                raise AssertionError(f"the node-scope policy is not enforced after {timeout}s")
            time.sleep(0.1)
    finally:
        api.close()
        api.rest_client.pool_manager.clear()


@pytest.fixture()
async def agent_kube(cluster: tuple[RealKube, Path]) -> AsyncIterator[Kube]:
    kube = Kube.connect(str(cluster[1]), request_timeout=5.0)
    assert kube is not None
    yield kube
    await kube.close()


async def test_nodesync_writes_model_labels_and_annotations_on_its_own_node(
    cluster: tuple[RealKube, Path], agent_kube: Kube
) -> None:
    real = cluster[0]
    source = StateSource([state(A, "ready"), state(B, "fetching")])
    sync = NodeSync(agent_kube, "agent-node-a", source, AgentMetrics(), base_delay=0.01, max_delay=0.05)  # type: ignore[arg-type]
    await sync.reconcile()
    node = real.request("GET", "/api/v1/nodes/agent-node-a")
    assert node["metadata"]["labels"]["pool"] == "gpu"  # others' labels untouched
    assert node["metadata"]["labels"][A.label_key] == "ready"
    assert B.label_key not in node["metadata"]["labels"]  # only ready models are labelled
    note = json.loads(node["metadata"]["annotations"][MODELS_ANNOTATION])
    assert {k: v["state"] for k, v in note.items()} == {A.id: "ready", B.id: "fetching"}
    assert node["metadata"]["annotations"]["team"] == "ml"
    writes = sync.writes
    await sync.reconcile()  # nothing changed: no write
    assert sync.writes == writes
    source.states = []
    await sync.reconcile()
    labels = real.request("GET", "/api/v1/nodes/agent-node-a")["metadata"]["labels"]
    assert A.label_key not in labels and labels["pool"] == "gpu"


async def test_the_agent_may_not_label_another_node(agent_kube: Kube) -> None:
    with pytest.raises(KubeError) as caught:
        await agent_kube.patch_node_metadata("agent-node-b", labels={A.label_key: "ready"})
    assert caught.value.status == 403
    assert "only the Node its pod runs on" in str(caught.value)


@pytest.mark.parametrize(
    ("labels", "annotations", "message"),
    [
        pytest.param({"pool": "cpu"}, {}, "only model-locality.io/ labels", id="foreign-label"),
        pytest.param({"pool": None}, {}, "only model-locality.io/ labels", id="remove-foreign-label"),
        pytest.param({}, {"team": "x"}, "only model-locality.io/ annotations", id="foreign-annotation"),
    ],
)
async def test_the_agent_may_change_only_its_own_keys(
    agent_kube: Kube, labels: dict[str, str | None], annotations: dict[str, str | None], message: str
) -> None:
    with pytest.raises(KubeError) as caught:
        await agent_kube.patch_node_metadata("agent-node-a", labels=labels, annotations=annotations)
    assert caught.value.status == 403 and message in str(caught.value)


def test_the_agent_may_not_change_the_node_spec(cluster: tuple[RealKube, Path]) -> None:
    from kubernetes import client, config

    api = config.new_client_from_config(config_file=str(cluster[1]))
    try:
        with pytest.raises(client.ApiException) as caught:
            client.CoreV1Api(api).patch_node("agent-node-a", {"spec": {"unschedulable": True}})
        assert caught.value.status == 403 and "may not change a Node's spec" in caught.value.body
    finally:
        api.close()
        api.rest_client.pool_manager.clear()
