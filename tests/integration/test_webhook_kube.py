"""The admission webhook on the real kube-apiserver, which calls it over TLS with the caBundle the
webhook's own CertKeeper published: pods come back mutated (both modes), a second pass adds
nothing, pods that did not ask (or whose namespace did not opt in, or whose user set the fields)
are left as written, and with the webhook down pods are still created."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime as dt
import json
import ssl
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
from aiohttp import web

from locality.identity import model_ref
from scheduler_extender.certstore import CertKeeper, server_context
from scheduler_extender.injection import DIR_ENV, INJECTED_ANNOTATION, WAIT_CONTAINER, Install, inject
from scheduler_extender.webhook import EVENT_REASON, WebhookContext, serve_webhook
from tests.fixtures.polling import eventually
from tests.fixtures.ports import free_port
from tests.fixtures.realkube import RealKube

URI = "s3://models/org/webhook-model"
REF = model_ref(URI)
SYSTEM_NS = "ml-webhook-system"


@dataclass
class Hook:
    """One registered webhook configuration with its server; pods go to namespaces made by ``ns``."""

    kube: RealKube
    edge: Any
    name: str
    selector: dict[str, str]
    keeper: CertKeeper
    ctx: WebhookContext
    port: int
    server: Any = None

    def ns(self, opted_in: bool = True) -> str:
        name = f"wh-{uuid.uuid4().hex[:8]}"
        # The fixture's create_service_account re-applies its namespace without labels: SA first.
        self.kube.create_service_account(name, "default")
        self.kube.create_namespace(name, self.selector if opted_in else {})
        return name

    async def start(self) -> None:
        self.server = serve_webhook(self.ctx, "127.0.0.1", self.port, self.keeper.context)
        await self.server.__aenter__()

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.__aexit__(None, None, None)
            self.server = None


def pod_body(name: str, *, models: str | None = URI, **spec: Any) -> dict[str, Any]:
    annotations = {"model-locality.io/models": models} if models is not None else {}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "annotations": annotations},
        "spec": {"containers": [{"name": "server", "image": "srv:1"}], **spec},
    }


def create_pod(kube: RealKube, ns: str, body: dict[str, Any], *, dry_run: bool = False) -> dict[str, Any]:
    path = f"/api/v1/namespaces/{ns}/pods" + ("?dryRun=All" if dry_run else "")
    answer: dict[str, Any] = kube.request("POST", path, body)
    return answer


def webhook_config(name: str, port: int, selector: dict[str, str]) -> dict[str, Any]:
    return {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": name},
        "webhooks": [
            {
                "name": "pods.model-locality.io",
                "clientConfig": {"url": f"https://127.0.0.1:{port}/mutate"},
                "rules": [
                    {
                        "apiGroups": [""],
                        "apiVersions": ["v1"],
                        "operations": ["CREATE"],
                        "resources": ["pods"],
                        "scope": "Namespaced",
                    }
                ],
                "namespaceSelector": {"matchLabels": selector},
                "failurePolicy": "Ignore",
                "sideEffects": "None",
                "timeoutSeconds": 3,
                "admissionReviewVersions": ["v1"],
                "reinvocationPolicy": "Never",
            }
        ],
    }


@contextlib.asynccontextmanager
async def registered(real_kube: RealKube, install: Install, *, wall: Any = None) -> AsyncIterator[Hook]:
    """A webhook configuration selecting namespaces with a unique label, a CertKeeper that made
    the CA, the serving certificate and the caBundle, and the server; all removed after."""
    suffix = uuid.uuid4().hex[:8]
    name = f"ml-test-{suffix}"
    selector = {"model-locality.io/injection": "enabled", "test-webhook": suffix}
    port = free_port()
    real_kube.create_namespace(SYSTEM_NS)
    real_kube.apply_manifests([webhook_config(name, port, selector)])
    edge = real_kube.connect()
    keeper = CertKeeper(
        server_context(),
        ("127.0.0.1",),
        edge,
        namespace=SYSTEM_NS,
        secret_name=f"tls-{suffix}",
        webhook_name=name,
    )
    if wall is not None:
        keeper.wall = wall
    await keeper.sync()
    ctx = WebhookContext(install, dict, edge.create_event)
    hook = Hook(real_kube, edge, name, selector, keeper, ctx, port)
    await hook.start()
    try:
        await until_effective(hook)
        yield hook
    finally:
        await hook.stop()
        real_kube.request(
            "DELETE", f"/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/{name}"
        )
        await edge.close()


async def until_effective(hook: Hook, seconds: float = 20.0) -> None:
    """The API server picks up a new webhook configuration asynchronously: dry-run until it bites."""
    ns = hook.ns()

    async def bites() -> bool:
        pod = await asyncio.to_thread(create_pod, hook.kube, ns, pod_body("probe"), dry_run=True)
        return INJECTED_ANNOTATION in pod["metadata"].get("annotations", {})

    def what() -> str:
        return "the API server calls the webhook\n" + hook.kube.log("kube-apiserver")[-3000:]

    await eventually(bites, seconds, what, interval=0.2)


async def create(hook: Hook, ns: str, body: dict[str, Any]) -> dict[str, Any]:
    return await asyncio.to_thread(create_pod, hook.kube, ns, body)


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value") for e in container.get("env", [])}


async def test_scheduler_mode_pod_comes_back_mutated(real_kube: RealKube) -> None:
    async with registered(real_kube, Install(mode="scheduler")) as hook:
        pod = await create(hook, hook.ns(), pod_body("a"))
    spec = pod["spec"]
    assert spec["schedulerName"] == "model-locality-scheduler"
    assert [c["name"] for c in spec["initContainers"]] == [WAIT_CONTAINER]
    assert spec["initContainers"][0]["args"][:2] == ["wait", REF.uri]
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes[f"model-{REF.id}"]["hostPath"]["path"] == f"/var/lib/model-locality/models/{REF.id}"
    token = volumes["model-locality-token"]["projected"]["sources"][0]["serviceAccountToken"]
    assert token["audience"] == "model-locality"
    assert env_of(spec["containers"][0])[DIR_ENV] == f"/var/lib/model-locality/models/{REF.id}"
    assert pod["metadata"]["annotations"][INJECTED_ANNOTATION] == "scheduler"
    assert pod["metadata"]["labels"]["model-locality.io/agent-client"] == "true"


async def test_affinity_mode_pod_comes_back_mutated(real_kube: RealKube) -> None:
    async with registered(real_kube, Install(mode="affinity")) as hook:
        body = pod_body("a")
        body["metadata"]["annotations"]["model-locality.io/locality"] = "required"
        pod = await create(hook, hook.ns(), body)
    spec = pod["spec"]
    assert spec["schedulerName"] == "default-scheduler"
    affinity = spec["affinity"]["nodeAffinity"]
    ready = {"key": REF.label_key, "operator": "In", "values": ["ready"]}
    assert affinity["preferredDuringSchedulingIgnoredDuringExecution"] == [
        {"weight": 100, "preference": {"matchExpressions": [ready]}}
    ]
    assert affinity["requiredDuringSchedulingIgnoredDuringExecution"] == {
        "nodeSelectorTerms": [{"matchExpressions": [ready]}]
    }
    assert spec["initContainers"][0]["name"] == WAIT_CONTAINER


@pytest.mark.parametrize("mode", ["scheduler", "affinity"])
async def test_second_pass_adds_nothing(real_kube: RealKube, mode: str) -> None:
    install = Install(mode=mode)  # type: ignore[arg-type]
    async with registered(real_kube, install) as hook:
        ns = hook.ns()
        first = await create(hook, ns, pod_body("first"))
        assert inject(first, install, {}).patch == ()  # the server's object, defaults and all
        again = json.loads(json.dumps(first))
        again["metadata"] = {
            "name": "second",
            "annotations": first["metadata"]["annotations"],
            "labels": first["metadata"]["labels"],
        }
        again.pop("status", None)
        second = await create(hook, ns, again)
    assert second["spec"] == first["spec"]
    assert second["metadata"]["annotations"] == first["metadata"]["annotations"]


async def test_pods_that_did_not_ask_are_left_alone(real_kube: RealKube) -> None:
    async with registered(real_kube, Install()) as hook:
        plain = await create(hook, hook.ns(), pod_body("plain", models=None))
        elsewhere = await create(hook, hook.ns(opted_in=False), pod_body("elsewhere"))
    for pod in (plain, elsewhere):
        assert pod["spec"]["schedulerName"] == "default-scheduler"
        assert "initContainers" not in pod["spec"]
        assert INJECTED_ANNOTATION not in pod["metadata"].get("annotations", {})
        assert "env" not in pod["spec"]["containers"][0]


async def test_fields_the_user_set_are_kept(real_kube: RealKube) -> None:
    mine = {"name": WAIT_CONTAINER, "image": "mine:1", "command": ["my-wait"]}
    body = pod_body(
        "mine",
        schedulerName="gpu-scheduler",
        initContainers=[mine],
        containers=[{"name": "server", "image": "srv:1", "env": [{"name": DIR_ENV, "value": "/mine"}]}],
    )
    async with registered(real_kube, Install()) as hook:
        pod = await create(hook, hook.ns(), body)
    assert pod["spec"]["schedulerName"] == "gpu-scheduler"
    assert [(c["name"], c["image"], c["command"]) for c in pod["spec"]["initContainers"]] == [
        (WAIT_CONTAINER, "mine:1", ["my-wait"])
    ]
    assert env_of(pod["spec"]["containers"][0])[DIR_ENV] == "/mine"


async def test_bad_annotation_still_starts_with_warning_and_event(real_kube: RealKube) -> None:
    async with registered(real_kube, Install()) as hook:
        ns = hook.ns()
        body = pod_body("bad", models="ftp://models/x")
        with real_kube.client() as api:
            response = await asyncio.to_thread(
                api.rest_client.request,
                "POST",
                f"{api.configuration.host}/api/v1/namespaces/{ns}/pods",
                headers={"Content-Type": "application/json"},
                body=body,
            )
            pod = json.loads(response.read())
            warnings = response.headers.get("Warning", "")
        assert "unsupported scheme" in warnings
        assert pod["spec"]["schedulerName"] == "default-scheduler" and "initContainers" not in pod["spec"]
        events: list[dict[str, Any]] = []
        for _ in range(50):  # the Event is posted after the answer, best effort
            events = real_kube.request("GET", f"/api/v1/namespaces/{ns}/events")["items"]
            if events:
                break
            await asyncio.sleep(0.1)
    assert [(e["type"], e["reason"], e["involvedObject"]["name"]) for e in events] == [
        ("Warning", EVENT_REASON, "bad")
    ]
    assert "unsupported scheme" in events[0]["message"]


async def test_webhook_down_pods_are_still_created(real_kube: RealKube) -> None:
    async with registered(real_kube, Install()) as hook:
        ns = hook.ns()
        await hook.stop()
        started = asyncio.get_running_loop().time()
        pod = await create(hook, ns, pod_body("down"))
        seconds = asyncio.get_running_loop().time() - started
    assert pod["metadata"]["name"] == "down" and "initContainers" not in pod["spec"]
    assert seconds < 8  # refused at once, or at worst the 3s timeout (the default would be 10s)


async def test_replicas_share_one_ca_and_renewal_keeps_serving(real_kube: RealKube) -> None:
    async with registered(real_kube, Install()) as hook:
        secret = await hook.edge.get_secret(SYSTEM_NS, hook.keeper.secret_name)
        other = CertKeeper(
            server_context(),
            ("127.0.0.1",),
            hook.edge,
            namespace=SYSTEM_NS,
            secret_name=hook.keeper.secret_name,
            webhook_name=hook.name,
        )
        await other.sync()  # a second replica: reads the Secret, writes nothing
        assert (await hook.edge.get_secret(SYSTEM_NS, hook.keeper.secret_name))["metadata"][
            "resourceVersion"
        ] == secret["metadata"]["resourceVersion"]
        assert other.ca_bundle == hook.keeper.ca_bundle
        # 70 days later the serving certificate is due: renewed in the Secret and in the live context.
        later = (dt.datetime.now(dt.UTC) + dt.timedelta(days=70)).timestamp()
        hook.keeper.wall = lambda: later
        await hook.keeper.sync()
        renewed = await hook.edge.get_secret(SYSTEM_NS, hook.keeper.secret_name)
        assert renewed["data"]["tls.crt"] != secret["data"]["tls.crt"]
        assert renewed["data"]["ca.crt"] == secret["data"]["ca.crt"]
        served = await asyncio.to_thread(ssl.get_server_certificate, ("127.0.0.1", hook.port))
        assert served.encode() == base64.b64decode(renewed["data"]["tls.crt"])
        pod = await create(hook, hook.ns(), pod_body("after-renewal"))
        assert pod["spec"]["schedulerName"] == "model-locality-scheduler"


async def test_racing_replicas_create_one_secret(real_kube: RealKube) -> None:
    edge = real_kube.connect()
    real_kube.create_namespace(SYSTEM_NS)
    name = f"race-{uuid.uuid4().hex[:8]}"
    try:
        keepers = [
            CertKeeper(
                server_context(),
                ("127.0.0.1",),
                edge,
                namespace=SYSTEM_NS,
                secret_name=name,
                webhook_name=name,
            )
            for _ in range(3)
        ]
        await asyncio.gather(*(k.sync() for k in keepers))  # no webhook configuration: logged, skipped
        assert len({k.ca_bundle for k in keepers}) == 1
    finally:
        await edge.close()


async def test_extender_app_serves_the_webhook(real_kube: RealKube) -> None:
    """``--webhook-port``: the extender's own app starts the listener (cleanup_ctx) and stops it."""
    from scheduler_extender.app import Deps, create_app
    from scheduler_extender.config import Settings
    from scheduler_extender.webhook_config import WebhookSettings

    suffix = uuid.uuid4().hex[:8]
    port = free_port()
    selector = {"model-locality.io/injection": "enabled", "test-webhook": suffix}
    real_kube.create_namespace(SYSTEM_NS)
    real_kube.apply_manifests([webhook_config(f"ml-app-{suffix}", port, selector)])
    ws = WebhookSettings(
        port=port,
        namespace=SYSTEM_NS,
        configuration=f"ml-app-{suffix}",
        secret=f"app-{suffix}",
        hosts=("127.0.0.1",),
    )
    edge = real_kube.connect()
    runner = web.AppRunner(create_app(Settings(host="127.0.0.1", webhook=ws), Deps(kube=edge)))
    await runner.setup()
    try:
        hook = Hook(real_kube, edge, f"ml-app-{suffix}", selector, None, None, port)  # type: ignore[arg-type]
        await until_effective(hook, seconds=40.0)
    finally:
        await runner.cleanup()
        real_kube.request(
            "DELETE", f"/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/ml-app-{suffix}"
        )
        await edge.close()
