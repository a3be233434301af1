"""Identity on the real kube-apiserver, with the install's rendered RBAC: who may review tokens,
who may request/distribute models (SubjectAccessReview rows), the roles' aggregation, the
extender's REST and the agent's ModelAccessPolicy gate as the components' own ServiceAccounts,
and the answer when the API server is gone."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from agent.cluster.access import AccessGate
from agent.config import Settings as AgentSettings
from agent.face.app import Deps as AgentDeps
from agent.face.app import create_app as agent_app
from locality import auth
from locality.kube import Kube
from scheduler_extender.app import Deps as ExtenderDeps
from scheduler_extender.app import create_app as extender_app
from scheduler_extender.config import Settings as ExtenderSettings
from tests.fixtures.origin import run_origin
from tests.fixtures.polling import eventually
from tests.fixtures.ports import free_port
from tests.fixtures.realkube import RealKube
from tests.fixtures.realkube_manifests import NAMESPACE, Row, apply_access, kubeconfig_file, review

Client = Callable[..., Awaitable[TestClient[Any, Any]]]
MD = "model-locality.io"
AUTHN, AUTHZ = "authentication.k8s.io", "authorization.k8s.io"
TEAM = "team-a"  # a serving namespace labelled team=a, its SA "serve" bound to model-locality-user
OPS = "ops"  # a namespace whose SA "admin" holds model-locality-admin and "plain" holds nothing

SERVICE_ROWS: list[tuple[str, Row]] = [
    ("model-locality-agent", ("create", AUTHN, "tokenreviews", "", None, None, True)),
    ("model-locality-agent", ("create", AUTHZ, "subjectaccessreviews", "", None, None, True)),
    ("model-locality-agent", ("list", MD, "modelaccesspolicies", "", None, None, True)),
    ("model-locality-agent", ("watch", MD, "modelaccesspolicies", "", None, None, True)),
    ("model-locality-agent", ("get", "", "namespaces", "", None, TEAM, True)),
    ("model-locality-agent", ("list", "", "namespaces", "", None, None, False)),
    ("model-locality-agent", ("create", MD, "modelaccesspolicies", "", None, None, False)),
    ("model-locality-agent", ("create", AUTHZ, "localsubjectaccessreviews", "", TEAM, None, False)),
    ("model-locality-agent", ("create", MD, "modelrequests", "", TEAM, None, False)),
    ("model-locality-extender", ("create", AUTHN, "tokenreviews", "", None, None, True)),
    ("model-locality-extender", ("create", AUTHZ, "subjectaccessreviews", "", None, None, True)),
    ("model-locality-extender", ("list", MD, "modelaccesspolicies", "", None, None, False)),
    ("model-locality-extender", ("get", "", "namespaces", "", None, TEAM, False)),
    # (the scheduler's kube-scheduler role has its own token reviews; not ours to pin)
    ("model-locality-scheduler", ("list", MD, "modelaccesspolicies", "", None, None, False)),
]  # fmt: skip

USER_ROWS: list[tuple[str, str, Row]] = [
    # (namespace, service account, row)
    (TEAM, "serve", ("create", MD, "modelrequests", "", TEAM, None, True)),
    (TEAM, "serve", ("create", MD, "modelrequests", "", "other", None, False)),
    (TEAM, "serve", ("delete", MD, "modelrequests", "", None, "0123456789abcdef", False)),
    (TEAM, "serve", ("create", MD, "modeldistributions", "", None, None, False)),
    (OPS, "admin", ("create", MD, "modeldistributions", "", None, None, True)),
    (OPS, "admin", ("delete", MD, "modeldistributions", "", None, "d", True)),
    (OPS, "admin", ("create", MD, "modelaccesspolicies", "", None, None, True)),
    (OPS, "admin", ("delete", MD, "modelrequests", "", None, "0123456789abcdef", True)),
    (OPS, "admin", ("update", MD, "modeldistributions", "status", None, "d", False)),
    (OPS, "plain", ("create", MD, "modeldistributions", "", None, None, False)),
    (OPS, "plain", ("create", MD, "modelrequests", "", OPS, None, False)),
]  # fmt: skip


def _binding(kind: str, name: str, role: str, namespace: str, sa: str) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name}
    if kind == "RoleBinding":
        meta["namespace"] = namespace
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": kind,
        "metadata": meta,
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
        "subjects": [{"kind": "ServiceAccount", "name": sa, "namespace": namespace}],
    }


@pytest.fixture(scope="module")
def identity(real_kube: RealKube) -> RealKube:
    apply_access(real_kube)
    real_kube.create_namespace(TEAM, {"team": "a"})
    for namespace, sa in ((TEAM, "serve"), (OPS, "admin"), (OPS, "plain")):
        real_kube.create_service_account(namespace, sa)
    real_kube.apply_manifests(
        [
            _binding("RoleBinding", "serve-may-request", "model-locality-user", TEAM, "serve"),
            _binding("ClusterRoleBinding", "test-ops-admin", "model-locality-admin", OPS, "admin"),
        ]
    )
    return real_kube


@pytest.mark.parametrize(
    ("service_account", "row"), SERVICE_ROWS, ids=[f"{s[15:]}-{r[0]}-{r[2]}-{r[6]}" for s, r in SERVICE_ROWS]
)
def test_components_may_review_callers_and_read_policies(
    identity: RealKube, service_account: str, row: Row
) -> None:
    assert bool(review(identity, row, service_account).get("allowed")) is row[6]


@pytest.mark.parametrize(
    ("namespace", "sa", "row"),
    USER_ROWS,
    ids=[f"{n}-{s}-{r[0]}-{r[2]}-{r[4]}-{r[6]}" for n, s, r in USER_ROWS],
)
def test_user_and_admin_roles(identity: RealKube, namespace: str, sa: str, row: Row) -> None:
    assert bool(review(identity, row, sa, namespace).get("allowed")) is row[6]


def test_user_role_aggregates_into_edit_and_admin_but_admin_role_does_not(identity: RealKube) -> None:
    """The server's own bootstrap roles select our labels (no controller-manager here to fill them)."""
    roles = "/apis/rbac.authorization.k8s.io/v1/clusterroles"
    ours = {
        n: identity.request("GET", f"{roles}/{n}")["metadata"]["labels"]
        for n in ("model-locality-user", "model-locality-admin")
    }

    def selected(target: str, labels: dict[str, str]) -> bool:
        rule = identity.request("GET", f"{roles}/{target}")["aggregationRule"]
        return any(
            all(labels.get(k) == v for k, v in sel.get("matchLabels", {}).items())
            for sel in rule["clusterRoleSelectors"]
        )

    assert selected("edit", ours["model-locality-user"]) and selected("admin", ours["model-locality-user"])
    assert not selected("view", ours["model-locality-user"])
    for target in ("admin", "edit", "view"):
        assert not selected(target, ours["model-locality-admin"]), target


# ---------------------------------------------------------------- the services as their own SAs


@pytest.fixture()
async def as_component(identity: RealKube, tmp_path: Path) -> AsyncIterator[Callable[[str], Kube]]:
    kubes: list[Kube] = []

    def connect(service_account: str) -> Kube:
        token = identity.token_for(NAMESPACE, service_account)
        kube = Kube.connect(
            str(kubeconfig_file(identity, tmp_path, token, service_account)), request_timeout=5.0
        )
        assert kube is not None
        kubes.append(kube)
        return kube

    yield connect
    for kube in kubes:
        await kube.close()


async def test_extender_rest_201_for_admin_403_for_plain_401_other_audience(
    identity: RealKube, as_component: Callable[[str], Kube], aiohttp_client: Client
) -> None:
    kube = as_component("model-locality-extender")
    settings = ExtenderSettings(status_interval_seconds=0.2, resync_seconds=300)
    client = await aiohttp_client(
        extender_app(settings, ExtenderDeps(kube=kube, authenticator=auth.build(None, kube)))
    )

    async def ready() -> bool:
        return (await client.get("/readyz")).status == 200

    await eventually(ready)
    body = {"uri": "s3://models/identity/test", "replicas": 1}

    async def post(token: str) -> tuple[int, Any]:
        resp = await client.post("/v1/distributions", json=body, headers={"Authorization": f"Bearer {token}"})
        return resp.status, await resp.json()

    status, answer = await post(identity.token_for(OPS, "admin", audiences=[auth.AUDIENCE]))
    assert status == 201, answer
    status, answer = await post(identity.token_for(OPS, "plain", audiences=[auth.AUDIENCE]))
    assert status == 403 and "create modeldistributions.model-locality.io cluster-wide" in answer["error"]
    status, answer = await post(
        identity.token_for(OPS, "admin", audiences=["https://kubernetes.default.svc"])
    )
    assert status == 401, answer
    identity.delete_all("modeldistributions", f"{MD}/v1alpha1")


POLICY = {
    "apiVersion": f"{MD}/v1alpha1",
    "kind": "ModelAccessPolicy",
    "metadata": {"name": "test-team-a"},
    "spec": {"namespaceSelector": {"matchLabels": {"team": "a"}}, "allowedURIPrefixes": []},
}


async def test_uri_outside_the_namespaces_prefixes_is_refused_before_any_byte(
    identity: RealKube, as_component: Callable[[str], Kube], aiohttp_client: Client, tmp_path: Path
) -> None:
    (tmp_path / "origin" / "allowed").mkdir(parents=True)
    (tmp_path / "origin" / "other").mkdir()
    for d in ("allowed", "other"):
        (tmp_path / "origin" / d / "model.safetensors").write_bytes(b"\0" * 64)
    with run_origin(tmp_path / "origin") as origin:
        policy = {**POLICY, "spec": {**POLICY["spec"], "allowedURIPrefixes": [f"{origin.url}/allowed"]}}
        identity.apply_manifests([policy])
        kube = as_component("model-locality-agent")
        gate = AccessGate(kube)
        settings = AgentSettings(cache_dir=tmp_path / "cache", quota_bytes=1 << 30).validate()
        client = await aiohttp_client(
            agent_app(settings, AgentDeps(authenticator=auth.build(None, kube), access=gate))
        )
        informer = asyncio.create_task(gate.run())
        try:
            await asyncio.wait_for(gate.informer.synced.wait(), 20)
            headers = {
                "Authorization": f"Bearer {identity.token_for(TEAM, 'serve', audiences=[auth.AUDIENCE])}"
            }
            uri = f"{origin.url}/other/model.safetensors?X-Amz-Signature=deadbeefcafe"
            resp = await client.post("/v1/models", json={"uri": uri}, headers=headers)
            body = await resp.json()
            assert resp.status == 403, body
            assert f"no ModelAccessPolicy allows namespace '{TEAM}'" in body["error"]
            assert "deadbeefcafe" not in body["error"], "the refusal names the URI redacted"
            assert origin.log == [], "refused before any request reached the origin"
            resp = await client.post(
                "/v1/models", json={"uri": f"{origin.url}/allowed/model.safetensors"}, headers=headers
            )
            assert resp.status == 202, await resp.json()
        finally:
            informer.cancel()
            await asyncio.gather(informer, return_exceptions=True)
            identity.request("DELETE", f"/apis/{MD}/v1alpha1/modelaccesspolicies/test-team-a")


async def test_api_server_unreachable_is_503_never_open(aiohttp_client: Client, tmp_path: Path) -> None:
    """A kubeconfig whose server is a closed port: the token cannot be checked, so 503."""
    config = tmp_path / "gone.kubeconfig"
    config.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: gone\n"
        f"clusters:\n- name: gone\n  cluster:\n    server: https://127.0.0.1:{free_port()}\n"
        "    insecure-skip-tls-verify: true\n"
        "users:\n- name: u\n  user:\n    token: x\n"
        "contexts:\n- name: gone\n  context:\n    cluster: gone\n    user: u\n"
    )
    kube = Kube.connect(str(config), request_timeout=2.0)
    assert kube is not None
    try:
        settings = AgentSettings(cache_dir=tmp_path / "cache", quota_bytes=1 << 30).validate()
        client = await aiohttp_client(agent_app(settings, AgentDeps(authenticator=auth.build(None, kube))))
        resp = await client.post(
            "/v1/models", json={"uri": "s3://models/x"}, headers={"Authorization": "Bearer t"}
        )
        body = await resp.json()
        assert resp.status == 503, body
        assert body["error"].startswith("cannot verify the token: TokenReview failed")
    finally:
        await kube.close()
