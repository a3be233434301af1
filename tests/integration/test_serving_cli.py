"""``python -m serving`` as a process: damaged weights fail start-up cleanly; the agent path serves."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from locality.identity import model_ref
from serving.cli import main
from tests.fixtures.cached import commit_copy
from tests.fixtures.polling import eventually
from tests.fixtures.ports import free_port

URI = "s3://models/sentence-transformers/all-MiniLM-L6-v2"


def serve(model_args: list[str], port: int, stderr: Path, **popen: Any) -> subprocess.Popen[bytes]:
    argv = [sys.executable, "-m", "serving", *model_args, "--host", "127.0.0.1", "--port", str(port)]
    with stderr.open("wb") as err:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=err, env={**os.environ, **popen})


def run_to_exit(model_dir: Path, tmp_path: Path) -> tuple[int, str]:
    log = tmp_path / "stderr.log"
    proc = serve(["--model-dir", str(model_dir)], free_port(), log)
    try:
        code = proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return code, log.read_text()


def cache_model(minilm: Path, root: Path, chunk_bytes: int = 16 * 2**20) -> Path:
    """Commit a copy of MiniLM into a node cache at ``root`` with a record, as the agent does."""
    return commit_copy(minilm, root, URI, chunk_bytes)


def last_line(stderr: str) -> str:
    return stderr.strip().splitlines()[-1]


def test_truncated_weight_file_fails_start_up_naming_it(minilm: Path, tmp_path: Path) -> None:
    model_dir = tmp_path / "m"
    shutil.copytree(minilm, model_dir)
    weights = model_dir / "model.safetensors"
    os.truncate(weights, weights.stat().st_size - 4096)
    code, stderr = run_to_exit(model_dir, tmp_path)
    assert code == 1
    assert "Traceback" not in stderr
    line = last_line(stderr)
    assert line.startswith("model-serve: ") and str(weights) in line and "file holds" in line


def test_garbled_header_fails_start_up_naming_it(minilm: Path, tmp_path: Path) -> None:
    model_dir = tmp_path / "m"
    shutil.copytree(minilm, model_dir)
    weights = model_dir / "model.safetensors"
    with weights.open("r+b") as f:
        f.seek(8)
        f.write(b"\x00garbage\xff" * 4)
    code, stderr = run_to_exit(model_dir, tmp_path)
    assert code == 1
    assert "Traceback" not in stderr
    line = last_line(stderr)
    assert str(weights) in line and "not valid JSON" in line


def test_flipped_data_bytes_in_a_cached_model_fail_verification(minilm: Path, tmp_path: Path) -> None:
    model_dir = cache_model(minilm, tmp_path / "cache")
    weights = model_dir / "model.safetensors"
    with weights.open("r+b") as f:  # a few bytes deep inside a tensor: the header stays valid
        f.seek(50_000_000)
        byte = f.read(1)
        f.seek(50_000_000)
        f.write(bytes([byte[0] ^ 0x40]))
    code, stderr = run_to_exit(model_dir, tmp_path)
    assert code == 1
    assert "Traceback" not in stderr
    line = last_line(stderr)
    assert "does not match the node cache record" in line and "model.safetensors" in line


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        pytest.param([], "exactly one of --model-dir and --model-uri", id="no model"),
        pytest.param(["--model-dir", "x", "--device", "tpu"], "--device must be one of", id="bad device"),
        pytest.param(
            ["--model-dir", "x", "--max-inputs", "10", "--max-queue", "5"],
            "--max-inputs",
            id="inputs > queue",
        ),
        pytest.param(["--model-dir", "x", "--max-batch", "0"], "--max-batch", id="zero batch"),
        pytest.param(["--model-dir", "x", "--port", "70000"], "invalid port", id="bad port"),
        pytest.param(
            ["--model-dir", "x", "--threads", "many"],
            "--threads='many' is not an integer",
            id="threads not a number",
        ),
    ],
)
def test_bad_settings_exit_2(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    try:
        code = main(argv, environ={})
    except SystemExit as exc:  # argparse's own type errors
        code = exc.code
    assert code == 2
    assert message in capsys.readouterr().err


def test_model_dir_from_env(capsys: pytest.CaptureFixture[str]) -> None:
    env = {"MODEL_SERVE_MODEL_DIR": "x", "MODEL_SERVE_MODEL_URI": "s3://b/m"}
    assert main([], environ=env) == 2
    assert "both set" in capsys.readouterr().err


async def test_model_uri_through_the_agent_then_serve_and_drain(minilm: Path, tmp_path: Path) -> None:
    """A stand-in for the agent's REST (section 3) hands out the cache path; the server goes ready."""
    model_dir = cache_model(minilm, tmp_path / "cache")
    ref = model_ref(URI)
    polls: list[str] = []

    async def post(request: web.Request) -> web.Response:
        assert request.headers.get("Authorization") == "Bearer s3cret"
        assert (await request.json()) == {"uri": URI}
        return web.json_response({"id": ref.id, "label": ref.label_key, "state": "queued"}, status=202)

    async def get(request: web.Request) -> web.Response:
        polls.append(request.match_info["id"])
        state = "fetching" if len(polls) < 3 else "ready"
        path = str(model_dir) if state == "ready" else None
        return web.json_response({"id": ref.id, "uri": URI, "state": state, "path": path, "error": None})

    agent = web.Application()
    agent.router.add_post("/v1/models", post)
    agent.router.add_get("/v1/models/{id}", get)
    token = tmp_path / "token"
    token.write_text("s3cret\n")
    port = free_port()
    log = tmp_path / "stderr.log"
    async with TestServer(agent, host="127.0.0.1") as server:
        args = ["--model-uri", URI, "--agent-url", str(server.make_url("")), "--token-file", str(token)]
        proc = await asyncio.to_thread(serve, args, port, log, MODEL_SERVE_MAX_WAIT_MS="1")
        try:
            base = f"http://127.0.0.1:{port}"
            async with aiohttp.ClientSession() as http:
                await _wait_ready(http, base, proc)
                async with http.post(f"{base}/v1/embeddings", json={"input": ["hi", "there"]}) as resp:
                    assert resp.status == 200
                    body = await resp.json()
                    assert body["model"] == "all-MiniLM-L6-v2" and len(body["data"]) == 2
                async with http.get(f"{base}/metrics") as resp:
                    text = await resp.text()
            proc.send_signal(signal.SIGTERM)
            code = await asyncio.to_thread(proc.wait, 30)
        finally:
            if proc.poll() is None:
                proc.kill()
                await asyncio.to_thread(proc.wait)
    assert code == 0, log.read_text()
    assert set(polls) == {ref.id} and len(polls) >= 3
    assert 'model_locality_serving_startup_phase_seconds{phase="wait_for_cache"}' in text
    assert "digests match" in log.read_text()


async def _wait_ready(http: aiohttp.ClientSession, base: str, proc: subprocess.Popen[bytes]) -> None:
    async def ready() -> bool:
        assert proc.poll() is None, "model-serve exited before it was ready"
        try:
            async with http.get(f"{base}/readyz") as resp:
                return resp.status == 200
        except aiohttp.ClientConnectionError:
            return False

    await eventually(ready, 120, "model-serve ready", interval=0.1)
