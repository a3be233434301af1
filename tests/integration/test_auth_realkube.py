"""ServiceAccount tokens and RBAC against a real kube-apiserver: the agent's POST /v1/models."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from agent.config import Settings
from agent.face.app import Deps, create_app
from locality import auth
from tests.fixtures.realkube import RealKube

NS = "auth-serving"
URI = "s3://models/nothing/here"
ROLE: dict[str, Any] = {
    "apiVersion": "rbac.authorization.k8s.io/v1",
    "kind": "ClusterRole",
    "metadata": {"name": "test-model-locality-user"},
    "rules": [{"apiGroups": ["model-locality.io"], "resources": ["modelrequests"], "verbs": ["create"]}],
}
BINDING = {
    "apiVersion": "rbac.authorization.k8s.io/v1",
    "kind": "RoleBinding",
    "metadata": {"name": "minilm-may-request", "namespace": NS},
    "roleRef": {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "ClusterRole",
        "name": ROLE["metadata"]["name"],
    },
    "subjects": [{"kind": "ServiceAccount", "name": "allowed", "namespace": NS}],
}


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def forged_token(issuer: str, key: ec.EllipticCurvePrivateKey, *, exp_offset: int) -> str:
    """An ES256 JWT shaped like a ServiceAccount token of NS/allowed, signed with ``key``."""
    import time

    now = int(time.time())
    header = {"alg": "ES256", "typ": "JWT"}
    claims = {
        "iss": issuer,
        "aud": [auth.AUDIENCE],
        "sub": f"system:serviceaccount:{NS}:allowed",
        "iat": now - 1200,
        "nbf": now - 1200,
        "exp": now + exp_offset,
        "kubernetes.io": {"namespace": NS, "serviceaccount": {"name": "allowed", "uid": "x"}},
    }
    signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}"
    r, s = decode_dss_signature(key.sign(signing_input.encode(), ec.ECDSA(hashes.SHA256())))
    return f"{signing_input}.{_b64(r.to_bytes(32, 'big') + s.to_bytes(32, 'big'))}"


@pytest.fixture()
async def agent(real_kube: RealKube, tmp_path: Path, aiohttp_client: Any) -> AsyncIterator[Any]:
    real_kube.create_service_account(NS, "allowed")
    real_kube.create_service_account(NS, "denied")
    real_kube.apply_manifests([ROLE, BINDING])
    kube = real_kube.connect()
    settings = Settings(cache_dir=tmp_path / "cache", quota_bytes=1 << 30).validate()
    try:
        yield await aiohttp_client(create_app(settings, Deps(authenticator=auth.build(None, kube))))
    finally:
        await kube.close()


async def post(client: Any, token: str) -> tuple[int, dict[str, Any]]:
    resp = await client.post("/v1/models", json={"uri": URI}, headers={"Authorization": f"Bearer {token}"})
    return resp.status, await resp.json()


async def test_sa_with_the_role_gets_202(agent: Any, real_kube: RealKube) -> None:
    status, body = await post(agent, real_kube.token_for(NS, "allowed", audiences=[auth.AUDIENCE]))
    assert status == 202, body


async def test_sa_without_the_role_gets_403_naming_what_is_missing(agent: Any, real_kube: RealKube) -> None:
    status, body = await post(agent, real_kube.token_for(NS, "denied", audiences=[auth.AUDIENCE]))
    assert status == 403
    assert f"create modelrequests.model-locality.io in namespace '{NS}'" in body["error"]


async def test_other_audience_is_401(agent: Any, real_kube: RealKube) -> None:
    status, body = await post(
        agent, real_kube.token_for(NS, "allowed", audiences=["https://kubernetes.default.svc"])
    )
    assert status == 401, body


async def test_token_signed_with_another_key_is_401(agent: Any, real_kube: RealKube) -> None:
    token = forged_token(real_kube.issuer, ec.generate_private_key(ec.SECP256R1()), exp_offset=600)
    assert (await post(agent, token))[0] == 401


def cluster_key(real_kube: RealKube) -> ec.EllipticCurvePrivateKey:
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    key = load_pem_private_key(Path(real_kube.sa_key_file).read_bytes(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return key


async def test_expired_token_is_401(agent: Any, real_kube: RealKube) -> None:
    """Signed with the cluster's own ServiceAccount key, right issuer and audience, but expired."""
    expired = forged_token(real_kube.issuer, cluster_key(real_kube), exp_offset=-600)
    status, body = await post(agent, expired)
    assert status == 401, body


async def test_no_token_is_401(agent: Any) -> None:
    resp = await agent.post("/v1/models", json={"uri": URI})
    assert resp.status == 401 and resp.headers["WWW-Authenticate"] == "Bearer"
