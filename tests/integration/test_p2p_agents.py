"""Three real ``model-agent serve`` processes with peers: REST shows where each fetch's bytes came
from, /metrics counts them, and the origin sends the model about once."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.origin import Faults, Origin, run_origin
from tests.fixtures.polling import eventually_sync
from tests.fixtures.ports import free_port, wait_listening

MiB = 2**20
ROOT = Path(__file__).resolve().parents[2]


def call(url: str, body: dict[str, str] | None = None) -> Any:
    req = urllib.request.Request(
        url,
        data=json.dumps(body).encode() if body is not None else None,
        headers={"Authorization": "Bearer rest-token", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        raw = resp.read()
        return json.loads(raw) if resp.headers.get("Content-Type", "").startswith("application/json") else raw


@pytest.fixture()
def group(tmp_path: Path) -> Iterator[tuple[Origin, list[str]]]:
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "model.bin").write_bytes(os.urandom(24 * MiB))
    (tmp_path / "rest.token").write_text("rest-token")
    (tmp_path / "peer.token").write_text("peer-token")
    ports = [(free_port(), free_port()) for _ in range(3)]
    peers = ",".join(f"http://127.0.0.1:{p}" for _, p in ports)
    procs = []
    with run_origin(tmp_path / "src", faults=Faults(throttle_bps=24 * MiB)) as origin:
        try:
            for i, (port, peer_port) in enumerate(ports):
                args = [sys.executable, "-m", "agent", "serve", "--host", "127.0.0.1", "--port", str(port),
                        "--cache-dir", str(tmp_path / f"c{i}"), "--token-file", str(tmp_path / "rest.token"),
                        "--chunk-size", "1Mi", "--peers", peers, "--peer-port", str(peer_port),
                        "--peer-url", f"http://127.0.0.1:{peer_port}",
                        "--peer-token-file", str(tmp_path / "peer.token")]  # fmt: skip
                with (tmp_path / f"agent{i}.log").open("wb") as log:
                    procs.append(subprocess.Popen(args, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT))
            for port, peer_port in ports:
                wait_listening(port, timeout=120)  # a busy CI machine: start-up imports take a while
                wait_listening(peer_port, timeout=30)
            yield origin, [f"http://127.0.0.1:{port}" for port, _ in ports]
        finally:
            for proc in procs:
                proc.terminate()
            for proc in procs:
                proc.wait(30)


def test_agents_report_origin_and_peer_bytes_per_fetch(group: tuple[Origin, list[str]]) -> None:
    origin, agents = group
    uri = f"{origin.url}/model.bin"
    model_id = {call(f"{a}/v1/models", {"uri": uri})["id"] for a in agents}.pop()

    def all_ready() -> list[dict[str, Any]]:
        views = [call(f"{a}/v1/models/{model_id}") for a in agents]
        assert not [v for v in views if v["state"] == "failed"], views
        return views if all(v["state"] == "ready" for v in views) else []

    views = eventually_sync(all_ready, within=60, what="three agents ready")
    egress = sum(int(r[6:].split("-")[1]) - int(r[6:].split("-")[0]) + 1 for r in origin.gets("/model.bin"))
    assert egress <= 1.05 * 24 * MiB  # agents starting a moment apart see each other at once
    assert sum(v["origin_bytes"] for v in views) == egress
    assert all(v["origin_bytes"] + v["peer_bytes"] == 24 * MiB for v in views)
    assert all(v["peer_bytes"] > 0 and v["peers"] >= 1 for v in views)
    metrics = [call(f"{a}/metrics").decode() for a in agents]
    received = sum(_sample(m, 'model_locality_agent_peer_bytes_total{direction="received"}') for m in metrics)
    sent = sum(_sample(m, 'model_locality_agent_peer_bytes_total{direction="sent"}') for m in metrics)
    assert received == sent == sum(v["peer_bytes"] for v in views)
    assert sum(_sample(m, "model_locality_agent_origin_bytes_total") for m in metrics) == egress


def _sample(text: str, name: str) -> float:
    return next(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name + " "))
