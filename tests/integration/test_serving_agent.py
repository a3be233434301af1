"""The whole local path: the real agent fetches MiniLM from S3, ``model-serve --model-uri`` serves it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.polling import eventually_sync
from tests.fixtures.ports import free_port
from tests.fixtures.s3server import S3Server

pytestmark = pytest.mark.slow


def _start(args: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen([sys.executable, *args], stdout=out, stderr=out, env=env)


def _get(url: str) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, None
    except OSError:
        return 0, None


def _post(url: str, body: dict[str, Any]) -> tuple[int, Any]:
    req = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}, method="POST"
    )
    with urllib.request.urlopen(req, timeout=30) as resp:
        return resp.status, json.loads(resp.read())


def _until_ready(url: str, proc: subprocess.Popen[bytes], log: Path, within: float = 180) -> None:
    def ready() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"{proc.args} exited {proc.returncode}:\n{log.read_text()}")
        return _get(url)[0] == 200

    eventually_sync(ready, within, lambda: f"{url} ready\n{log.read_text()}", interval=0.1)


def _stop(proc: subprocess.Popen[bytes]) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=40)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


def test_serve_a_model_uri_fetched_by_the_real_agent(
    s3_server: S3Server, minilm_s3: str, tmp_path: Path
) -> None:
    token = tmp_path / "token"
    token.write_text("s3cret\n")
    env = {k: v for k, v in os.environ.items() if k != "KUBECONFIG"}
    env.update(s3_server.env, HOME=str(tmp_path))  # no kubeconfig anywhere: the agent runs standalone
    agent_port, serve_port = free_port(), free_port()
    agent_log, serve_log = tmp_path / "agent.log", tmp_path / "serve.log"
    agent_args = ["-m", "agent", "serve", "--host", "127.0.0.1", "--port", str(agent_port)]
    agent_args += ["--cache-dir", str(tmp_path / "cache"), "--token-file", str(token)]
    agent = _start(agent_args, agent_log, env)
    serve = None
    try:
        _until_ready(f"http://127.0.0.1:{agent_port}/readyz", agent, agent_log)
        serve_args = [
            "-m",
            "serving",
            "--model-uri",
            minilm_s3,
            "--host",
            "127.0.0.1",
            "--port",
            str(serve_port),
        ]
        serve_args += ["--agent-url", f"http://127.0.0.1:{agent_port}", "--token-file", str(token)]
        serve = _start(serve_args, serve_log, env)
        _until_ready(f"http://127.0.0.1:{serve_port}/readyz", serve, serve_log)
        status, body = _post(f"http://127.0.0.1:{serve_port}/v1/embeddings", {"input": ["hello", "world"]})
        assert status == 200 and len(body["data"]) == 2 and len(body["data"][0]["embedding"]) == 384
        assert body["model"] == "all-MiniLM-L6-v2"
        log = serve_log.read_text()
        assert "/cache/models/" in log and "digests match" in log  # served from the cache, verified
    finally:
        serve_code = _stop(serve) if serve is not None else None
        _stop(agent)
    assert serve_code == 0, serve_log.read_text()
