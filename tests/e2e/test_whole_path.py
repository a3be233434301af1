"""The whole path over HTTP with real processes: S3 fixture, fake Kubernetes API with three GPU
nodes, one agent process per node, the extender process, a distribution to two nodes, the
scheduler's filter/prioritize calls in both node modes, then a pod bound to the cold node.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from locality.contract import LOCALITY_ANNOTATION, MODELS_ANNOTATION
from locality.identity import model_ref
from tests.e2e.procs import Processes
from tests.fixtures.fakekube.server import FakeKube
from tests.fixtures.ports import free_port
from tests.fixtures.s3server import S3Server

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "kube_scheduler"
NODES = ("gpu-a", "gpu-b", "gpu-c")
TOKEN = "e2e-token-0123456789"


def _call(method: str, url: str, body: Any = None, token: str | None = TOKEN) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=15) as resp:
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


def _until(what: str, check: Callable[[], Any], procs: Processes, timeout: float = 90.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}\n{procs.logs()}")


@pytest.fixture()
def cluster(
    tmp_path: Path, fake_kube: FakeKube, s3_server: S3Server, minilm_s3: str
) -> Iterator[dict[str, Any]]:
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    for name in NODES:
        fake_kube.add_node(
            name,
            labels={"kubernetes.io/hostname": name, "nvidia.com/gpu.present": "true"},
            allocatable={"cpu": "16", "memory": "64Gi", "pods": "110", "nvidia.com/gpu": "1"},
        )
    procs = Processes(tmp_path)
    env = {**s3_server.env, "KUBECONFIG": str(fake_kube.kubeconfig_path)}
    agents = {}
    try:
        for name in NODES:
            port = free_port()
            procs.start(
                f"agent-{name}",
                [
                    "-m",
                    "agent",
                    "serve",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(port),
                    "--cache-dir",
                    str(tmp_path / name),
                    "--node-name",
                    name,
                    "--kubeconfig",
                    str(fake_kube.kubeconfig_path),
                    "--token-file",
                    str(token_file),
                ],
                env,
            )
            agents[name] = f"http://127.0.0.1:{port}"
        ext_port = free_port()
        procs.start(
            "extender",
            [
                "-m",
                "scheduler_extender",
                "serve",
                "--host",
                "127.0.0.1",
                "--port",
                str(ext_port),
                "--kubeconfig",
                str(fake_kube.kubeconfig_path),
                "--token-file",
                str(token_file),
            ],
            env,
        )
        for name, url in agents.items():
            procs.wait_ready(f"agent-{name}", f"{url}/readyz")
        extender = f"http://127.0.0.1:{ext_port}"
        procs.wait_ready("extender", f"{extender}/readyz")
        yield {
            "agents": agents,
            "extender": extender,
            "procs": procs,
            "uri": minilm_s3,
            "kube": fake_kube,
            "token_file": token_file,
            "env": env,
        }
    finally:
        procs.stop()


def _scheduler_body(kind: str, cache_capable: bool, uri: str, nodes: list[dict[str, Any]]) -> dict[str, Any]:
    """A body exactly as kube-scheduler sends it (captured), with our annotation and these nodes."""
    name = f"{kind}-nodeCacheCapable-{'true' if cache_capable else 'false'}.json"
    body = json.loads((FIXTURES / name).read_text())
    body["Pod"]["metadata"].setdefault("annotations", {})[MODELS_ANNOTATION] = uri
    body["Pod"]["metadata"]["annotations"][LOCALITY_ANNOTATION] = "preferred"
    if cache_capable:
        body["NodeNames"] = [n["metadata"]["name"] for n in nodes]
    else:
        template = body["Nodes"]["items"][0]
        items = []
        for node in nodes:
            item = copy.deepcopy(template)
            item["metadata"] = node["metadata"]
            items.append(item)
        body["Nodes"]["items"] = items
    return body


def test_distribution_scores_and_fetch_on_schedule(cluster: dict[str, Any]) -> None:
    kube: FakeKube = cluster["kube"]
    procs: Processes = cluster["procs"]
    uri = cluster["uri"]
    ref = model_ref(uri)

    status, created = _call("POST", f"{cluster['extender']}/v1/distributions", {"uri": uri, "replicas": 2})
    assert status == 201, created
    name = created["name"]

    def warm_nodes() -> list[str]:
        return [n for n in NODES if kube.get("nodes", n)["metadata"]["labels"].get(ref.label_key) == "ready"]

    warm = _until("two nodes to hold the model", lambda: len(warm_nodes()) == 2 and warm_nodes(), procs)
    (cold,) = set(NODES) - set(warm)
    targets = kube.get("modeldistributions", name)["status"]["targets"]
    assert sorted(targets) == sorted(warm)

    status, dist = _call("GET", f"{cluster['extender']}/v1/distributions/{name}")
    assert status == 200
    assert {n: dist["nodes"][n]["state"] for n in warm} == dict.fromkeys(warm, "ready")

    nodes = [kube.get("nodes", n) for n in NODES]
    for cache_capable in (True, False):
        body = _scheduler_body("prioritize", cache_capable, uri, nodes)
        status, scores = _call("POST", f"{cluster['extender']}/prioritize", body, token=None)
        assert status == 200, scores
        by_host = {s["Host"]: s["Score"] for s in scores}  # a host left out scores 0
        assert all(isinstance(v, int) for v in by_host.values())
        assert min(by_host[w] for w in warm) > by_host.get(cold, 0), by_host

        body = _scheduler_body("filter", cache_capable, uri, nodes)
        body["Pod"]["metadata"]["annotations"][LOCALITY_ANNOTATION] = "required"
        status, filtered = _call("POST", f"{cluster['extender']}/filter", body, token=None)
        assert status == 200, filtered
        passed = (
            filtered["NodeNames"]
            if cache_capable
            else [n["metadata"]["name"] for n in filtered["Nodes"]["items"]]
        )
        assert sorted(passed) == sorted(warm)
        assert cold in filtered["FailedNodes"] and ref.uri in filtered["FailedNodes"][cold]

    # The scheduler placed the pod on the cold node anyway (say, the warm ones are full).
    kube.add_pod("inference", "embed-0", annotations={MODELS_ANNOTATION: uri}, phase="Pending")
    kube.bind_pod("inference", "embed-0", cold)
    _until(f"{cold} to fetch on schedule", lambda: cold in warm_nodes(), procs)

    wait = subprocess.run(
        [
            sys.executable,
            "-m",
            "agent",
            "wait",
            uri,
            "--timeout",
            "60",
            "--agent-url",
            cluster["agents"][cold],
            "--token-file",
            str(cluster["token_file"]),
        ],
        capture_output=True,
        text=True,
        timeout=90,
        env={**os.environ, **cluster["env"]},
    )
    assert wait.returncode == 0, wait.stderr
    path = Path(wait.stdout.strip())
    assert path.name == ref.id
    assert (path / "model.safetensors").stat().st_size > 80_000_000
