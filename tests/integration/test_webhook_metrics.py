"""``model_locality_extender_webhook_requests_total{result}`` on the extender's /metrics: the
extender app with ``--webhook-port`` (certificate from a directory, as with cert-manager) counts
each review its HTTPS listener answers as mutated, skipped or failed."""

from __future__ import annotations

import json
import shutil
import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient

from scheduler_extender.app import create_app
from scheduler_extender.config import Settings
from scheduler_extender.webhook_config import WebhookSettings
from tests.fixtures.polling import eventually
from tests.fixtures.ports import free_port
from tests.fixtures.tlsca import make_ca

Client = Callable[..., Awaitable[TestClient[Any, Any]]]
FAMILY = "model_locality_extender_webhook_requests_total"


def review(uid: str, obj: dict[str, Any], operation: str = "CREATE") -> dict[str, Any]:
    request = {
        "uid": uid,
        "kind": {"group": "", "version": "v1", "kind": "Pod"},
        "operation": operation,
        "namespace": "serving",
        "dryRun": True,  # no Event to post (and no API server to post it to)
        "object": obj,
    }
    return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": request}


def pod(models: str | None) -> dict[str, Any]:
    annotations = {"model-locality.io/models": models} if models else {}
    return {"metadata": {"name": "p", "annotations": annotations}, "spec": {"containers": [{"name": "c"}]}}


def counts(text: str) -> dict[str, float]:
    found = {}
    for line in text.splitlines():
        if line.startswith(FAMILY + "{"):
            labels, value = line.rsplit(" ", 1)
            found[labels.split('result="')[1].split('"')[0]] = float(value)
    return found


async def test_reviews_counted_by_result(tmp_path: Path, aiohttp_client: Client) -> None:
    ca = make_ca(tmp_path / "ca")
    certs = tmp_path / "certs"
    certs.mkdir()
    shutil.copy(ca.cert_file, certs / "tls.crt")
    shutil.copy(ca.key_file, certs / "tls.key")
    port = free_port()
    ws = WebhookSettings(port=port, hosts=("127.0.0.1",), cert_dir=str(certs))
    client = await aiohttp_client(create_app(Settings(host="127.0.0.1", token="t0ken", webhook=ws)))
    assert counts(await (await client.get("/metrics")).text()) == {"mutated": 0, "skipped": 0, "failed": 0}

    tls = ssl.create_default_context(cafile=str(ca.ca_file))
    url = f"https://127.0.0.1:{port}/mutate"
    async with aiohttp.ClientSession() as http:

        async def listening() -> bool:
            try:
                async with http.get(f"https://127.0.0.1:{port}/healthz", ssl=tls) as resp:
                    return resp.status == 200
            except aiohttp.ClientConnectionError:
                return False

        await eventually(listening, within=10, what="the webhook listener")
        sent = [
            (review("1", pod("s3://models/a")), 200),  # mutated
            (review("2", pod("s3://models/a")), 200),  # mutated
            (review("3", pod(None)), 200),  # skipped: nothing asked
            (review("4", pod("s3://models/a"), operation="UPDATE"), 200),  # skipped: not CREATE
            (review("5", pod("ftp://models/a")), 200),  # failed: allowed, not mutated, warned
            ({"kind": "NotAReview"}, 400),  # failed: not an AdmissionReview
        ]
        for body, status in sent:
            async with http.post(url, data=json.dumps(body), ssl=tls) as resp:
                assert resp.status == status, await resp.text()
    text = await (await client.get("/metrics")).text()
    assert counts(text) == {"mutated": 2, "skipped": 2, "failed": 2}


async def test_a_webhook_listener_that_could_not_start_is_restarted(
    tmp_path: Path, aiohttp_client: Client, caplog: pytest.LogCaptureFixture
) -> None:
    """The port is taken when the extender starts: the listener fails, is restarted by its supervisor,
    and serves once the port is free (before, it logged once and stayed down for the process's life)."""
    import socket

    ca = make_ca(tmp_path / "ca")
    certs = tmp_path / "certs"
    certs.mkdir()
    shutil.copy(ca.cert_file, certs / "tls.crt")
    shutil.copy(ca.key_file, certs / "tls.key")
    port = free_port()
    squatter = socket.socket()
    squatter.bind(("127.0.0.1", port))
    squatter.listen()
    ws = WebhookSettings(port=port, hosts=("127.0.0.1",), cert_dir=str(certs))
    await aiohttp_client(create_app(Settings(host="127.0.0.1", token="t0ken", webhook=ws)))
    tls = ssl.create_default_context(cafile=str(ca.ca_file))
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=1)) as http:

        async def webhook_answers() -> bool:
            try:
                async with http.get(f"https://127.0.0.1:{port}/healthz", ssl=tls) as resp:
                    return resp.status == 200
            except (aiohttp.ClientConnectionError, ssl.SSLError, TimeoutError):
                return False

        stopped = "the admission webhook stopped"
        await eventually(lambda: stopped in caplog.text, within=15, what="the failed start logged")
        assert not await webhook_answers()  # the squatter holds the port (it never speaks TLS)
        squatter.close()
        await eventually(webhook_answers, within=15, what="the restarted webhook listener")
