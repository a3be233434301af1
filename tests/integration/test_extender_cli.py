"""``model-extender serve`` as a process: standalone, and against the fake Kubernetes API."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from locality.contract import MODELS_ANNOTATION
from locality.identity import model_ref
from tests.fixtures.fakekube.server import FakeKube
from tests.fixtures.polling import eventually_sync
from tests.fixtures.ports import free_port, wait_listening

A = model_ref("s3://models/org/llama-3-8b")
ROOT = Path(__file__).resolve().parents[2]


@contextmanager
def extender(
    args: list[str], env: dict[str, str], output: list[str] | None = None
) -> Iterator[tuple[int, subprocess.Popen[bytes]]]:
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "scheduler_extender",
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            *args,
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_listening(port, timeout=60)
        yield port, proc
    finally:
        code = None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                code = proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        assert proc.stdout is not None
        if output is not None:
            output.append(proc.stdout.read().decode(errors="replace"))
        proc.stdout.close()
        assert code == 0, "SIGTERM must end the server cleanly"


def call(port: int, method: str, path: str, body: object = None, token: str | None = None) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data, method=method)
    request.add_header("Content-Type", "application/json")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            raw = resp.read()
            return resp.status, json.loads(raw) if raw else None
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def base_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("KUBECONFIG", "KUBERNETES_SERVICE_HOST")}
    env["PYTHONPATH"] = str(ROOT)
    return env


def test_standalone_without_a_token_file_refuses_to_start() -> None:
    """Fail closed: no cluster to check ServiceAccount tokens and no static token: no server."""
    proc = subprocess.run(
        [sys.executable, "-m", "scheduler_extender", "serve", "--port", str(free_port())],
        cwd=ROOT,
        env=base_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2 and "no authenticator" in proc.stderr and "Traceback" not in proc.stderr


def test_standalone_serves_full_nodes_requests(tmp_path: Path) -> None:
    body = {
        "Pod": {"metadata": {"annotations": {MODELS_ANNOTATION: A.uri}}},
        "Nodes": {"metadata": {}, "items": [{"metadata": {"name": "a", "labels": {A.label_key: "ready"}}}]},
        "NodeNames": None,
    }
    output: list[str] = []
    (tmp_path / "token").write_text("t0ken\n")
    args = ["--url-prefix", "/scheduler", "--token-file", str(tmp_path / "token")]
    with extender(args, base_env(), output) as (port, _):
        assert call(port, "GET", "/readyz")[0] == 200
        assert call(port, "POST", "/scheduler/prioritize", body) == (200, [{"Host": "a", "Score": 10}])
        assert call(port, "POST", "/v1/distributions", {"uri": A.uri})[0] == 401
        status, reply = call(port, "POST", "/v1/distributions", {"uri": A.uri}, token="t0ken")
        assert status == 503 and "standalone" in reply["error"]
    log = output[0]
    assert "standalone" in log and "POST /v1/distributions 503" in log
    assert "/scheduler/prioritize" not in log and "/readyz" not in log  # quiet hot path and probes


def test_against_fake_api_with_token(fake_kube: FakeKube, tmp_path: Path) -> None:
    fake_kube.add_node("warm", {A.label_key: "ready"})
    token = tmp_path / "token"
    token.write_text("t0ken\n")
    env = base_env() | {"KUBECONFIG": str(fake_kube.kubeconfig_path), "MODEL_LOCALITY_TOKEN_FILE": str(token)}
    with extender([], env) as (port, _):
        ready = lambda: call(port, "GET", "/readyz")[0] == 200  # noqa: E731
        eventually_sync(ready, 30, "the extender ready", interval=0.1)
        body = {
            "Pod": {"metadata": {"annotations": {MODELS_ANNOTATION: A.uri}}},
            "Nodes": None,
            "NodeNames": ["warm"],
        }
        assert call(port, "POST", "/prioritize", body) == (200, [{"Host": "warm", "Score": 10}])
        assert call(port, "POST", "/v1/distributions", {"uri": A.uri})[0] == 401
        status, created = call(port, "POST", "/v1/distributions", {"uri": A.uri, "replicas": 1}, "t0ken")
        assert status == 201 and created["targets"] == ["warm"]
        assert [o["metadata"]["name"] for o in fake_kube.objects("distribution")] == [created["name"]]


def test_bad_flag_values_exit_non_zero() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "scheduler_extender", "serve", "--max-body-bytes", "huge"],
        cwd=ROOT,
        env=base_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "not a size" in result.stderr and "Traceback" not in result.stderr
