"""A presigned http URI fetched by the agent (a real process, fake Kubernetes API, a real origin):
its signature and credential never appear in GET bodies, the Node annotation, /metrics or the log."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from locality.contract import MODELS_ANNOTATION
from locality.identity import model_ref
from tests.fixtures.fakekube.server import FakeKube
from tests.fixtures.models import write_safetensors
from tests.fixtures.origin import Faults, run_origin
from tests.fixtures.polling import eventually_sync
from tests.fixtures.ports import free_port

NODE = "node-r"
TOKEN = "redaction-test-token"
SIGNATURE = "f00dfacecafe1234deadbeef9876abcd"
CREDENTIAL = "AKIAQQQQQQQQQQQQQQQQ%2F20260101%2Fus-east-1%2Fs3%2Faws4_request"
SECRETS = (SIGNATURE, "AKIAQQQQQQQQQQQQQQQQ", "hunter2")


def call(url: str, method: str = "GET", body: Any = None) -> tuple[int, str]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method)
    req.add_header("Content-Type", "application/json")
    req.add_header("Authorization", f"Bearer {TOKEN}")
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as err:
        with err:
            return err.code, err.read().decode()


def until(check: Any, what: str, log: Path, within: float = 30.0) -> Any:
    return eventually_sync(check, within, lambda: f"{what}\n{log.read_text(errors='replace')[-3000:]}")


def leaks(text: str) -> list[str]:
    return [s for s in SECRETS if s in text]


def test_signed_query_never_leaves_the_agent(fake_kube: FakeKube, tmp_path: Path) -> None:
    fake_kube.add_node(NODE)
    write_safetensors(tmp_path / "origin" / "m" / "w.safetensors", 256 << 10, seed=5)
    (tmp_path / "token").write_text(TOKEN)
    failing = "/m/missing.safetensors"
    with run_origin(tmp_path / "origin", faults=Faults(status={failing: 403})) as origin:
        query = f"X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential={CREDENTIAL}&X-Amz-Signature={SIGNATURE}"
        good = f"{origin.url}/m/w.safetensors?{query}"
        bad = f"{origin.url}{failing}?{query}"  # the origin answers 403: a failed model
        port, log = free_port(), tmp_path / "agent.log"
        args = [sys.executable, "-m", "agent", "-v", "serve", "--host", "127.0.0.1", "--port", str(port)]
        args += ["--cache-dir", str(tmp_path / "cache"), "--node-name", NODE, "--quota", "1Gi"]
        args += ["--kubeconfig", str(fake_kube.kubeconfig_path), "--token-file", str(tmp_path / "token")]
        base = f"http://127.0.0.1:{port}"
        with log.open("wb") as out:
            proc = subprocess.Popen(args, env=dict(os.environ), stdout=out, stderr=out)
        try:
            until(lambda: _ok(f"{base}/readyz"), "readyz", log)
            status, body = call(
                f"{base}/v1/models", "POST", {"uri": f"http://alice:hunter2@127.0.0.1/m?{query}"}
            )
            assert status == 400 and not leaks(body), body  # credentials in a URI: refused, not echoed
            for uri in (good, bad):
                status, body = call(f"{base}/v1/models", "POST", {"uri": uri})
                assert status == 202, body
                assert not leaks(body), body
            good_id, bad_id = model_ref(good).id, model_ref(bad).id

            def states() -> dict[str, str] | None:
                views = json.loads(call(f"{base}/v1/models")[1])
                got = {v["id"]: v["state"] for v in views}
                return got if got.get(good_id) == "ready" and got.get(bad_id) == "failed" else None

            until(states, "one model ready, one failed", log)
            assert origin.gets("/m/w.safetensors"), "the agent really fetched it (with the query)"

            def annotated() -> str | None:
                node = fake_kube.get("nodes", NODE)
                text = (node["metadata"].get("annotations") or {}).get(MODELS_ANNOTATION, "")
                return text if good_id in text and bad_id in text else None

            annotation = until(annotated, "both models in the Node annotation", log)
            bodies = [call(f"{base}/v1/models")[1]] + [
                call(f"{base}/v1/models/{i}")[1] for i in (good_id, bad_id)
            ]
            assert "X-Amz-Signature=REDACTED" in bodies[1] and "X-Amz-Signature=REDACTED" in bodies[2]
            metrics = urllib.request.urlopen(f"{base}/metrics", timeout=10).read().decode()
            for where, text in [
                ("GET body", "\n".join(bodies)),
                ("annotation", annotation),
                ("metrics", metrics),
            ]:
                assert not leaks(text), f"{where} leaks {leaks(text)}: {text[:2000]}"
        finally:
            proc.terminate()
            proc.wait(timeout=15)
    text = log.read_text(errors="replace")
    assert "w.safetensors" in text, "the log speaks of the model"
    assert not leaks(text), f"log leaks {leaks(text)}:\n{text[-3000:]}"


def _ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return resp.status == 200
    except OSError:
        return False
