"""The node-restriction component's pod-scope policy on a real API server: an agent may label only
its own Pod, and only with peer.model-locality.io/ keys (docs/peers.md)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from agent.peers.holdings import Holdings
from agent.peers.kubedir import PREFIX
from agent.peers.podsync import PodSync
from locality.kube import Kube, KubeError
from locality.records import Layout
from tests.fixtures.polling import eventually
from tests.fixtures.realkube import RealKube
from tests.fixtures.realkube_manifests import NAMESPACE, agent_token, apply_access, kubeconfig_file, pod_on

MODEL = "0123456789abcdef"


@pytest.fixture()
async def as_agent(real_kube: RealKube, tmp_path: Path) -> AsyncIterator[Kube]:
    apply_access(real_kube)
    pod_on(real_kube, "agent-node-p2", "node-p2", "model-locality-agent")
    token = agent_token(real_kube, "node-p1")  # bound to its Pod agent-node-p1
    kube = Kube.connect(str(kubeconfig_file(real_kube, tmp_path, token, "agent-p1")), request_timeout=5.0)
    assert kube is not None
    try:
        yield kube
    finally:
        await kube.close()


async def refused(write: object) -> bool:
    try:
        await write  # type: ignore[misc]
    except KubeError as exc:
        return exc.status == 403 and "ValidatingAdmissionPolicy" in str(exc)
    return False


async def test_an_agent_labels_only_its_own_pod_and_only_peer_keys(as_agent: Kube, tmp_path: Path) -> None:
    other = {f"{PREFIX}{MODEL}": "f.deadbeef"}

    async def enforced() -> bool:
        return await refused(as_agent.patch_pod_metadata(NAMESPACE, "agent-node-p2", labels=other))

    await eventually(enforced, within=20, what="the pod-scope policy enforced")  # type: ignore[arg-type]
    sync = PodSync(
        as_agent,
        NAMESPACE,
        "agent-node-p1",
        "node-p1",
        "http://10.0.0.1:8472",
        held=lambda: [(MODEL, "rev1aaaaaaaa")],
        holdings=Holdings(Layout(tmp_path)),
    )
    await sync.sync_once()  # its own Pod, peer keys: allowed
    assert sync._current[f"{PREFIX}{MODEL}"].endswith(".rev1aaaa")
    steer = {"app.kubernetes.io/name": "model-locality-extender"}
    assert await refused(as_agent.patch_pod_metadata(NAMESPACE, "agent-node-p1", labels=steer))
    assert await refused(as_agent.patch_pod_metadata(NAMESPACE, "agent-node-p2", labels=other))
