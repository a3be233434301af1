"""The agent as a real process (``python -m agent serve``) against the S3 fixture and the fake
Kubernetes API: node labels, start-up reconcile, pod and distribution watches, faults, SIGTERM, wait."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from agent.config import Settings
from agent.fetch.cache import Cache
from locality.contract import CACHE_ANNOTATION, MODELS_ANNOTATION
from locality.identity import model_ref
from tests.fixtures.fakekube.server import FakeKube
from tests.fixtures.models import synthetic_model
from tests.fixtures.polling import eventually_sync
from tests.fixtures.ports import free_port
from tests.fixtures.s3server import S3Server

NODE = "node-a"
TOKEN = "node-test-token"
FOREIGN = {"kubernetes.io/hostname": NODE, "model-locality.io/agent": "enabled"}
GRACE = 5.0


@dataclass
class Agent:
    proc: subprocess.Popen[bytes]
    url: str
    cache_dir: Path
    log: Path

    def call(self, method: str, path: str, body: Any = None, token: str | None = TOKEN) -> tuple[int, Any]:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.url + path, data=data, method=method)
        req.add_header("Content-Type", "application/json")
        if token:
            req.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return resp.status, json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as err:
            with err:
                return err.code, json.loads(err.read() or b"null")

    def logs(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]


def until(check: Callable[[], Any], what: str, agent: Agent | None = None, within: float = 30.0) -> Any:
    """Poll ``check`` until it returns something truthy; fail with ``what`` (and the agent log)."""

    def alive_and(check: Callable[[], Any] = check) -> Any:
        if agent is not None and agent.proc.poll() is not None:
            raise AssertionError(
                f"agent exited ({agent.proc.returncode}) while waiting for {what}\n{agent.logs()}"
            )
        return check()

    return eventually_sync(alive_and, within, lambda: f"{what}\n{agent.logs() if agent else ''}")


@pytest.fixture()
def start_agent(fake_kube: FakeKube, s3_server: S3Server, tmp_path: Path) -> Iterator[Callable[..., Agent]]:
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    agents: list[Agent] = []

    def start(cache_dir: Path | None = None, wait_ready: bool = True) -> Agent:
        port = free_port()
        cache = cache_dir or tmp_path / "cache"
        log = tmp_path / f"agent-{len(agents)}.log"
        args = [sys.executable, "-m", "agent", "serve", "--host", "127.0.0.1", "--port", str(port)]
        args += [
            "--cache-dir",
            str(cache),
            "--node-name",
            NODE,
            "--kubeconfig",
            str(fake_kube.kubeconfig_path),
        ]
        args += ["--token-file", str(token_file), "--grace-seconds", str(GRACE), "--quota", "1Gi"]
        with log.open("wb") as out:
            proc = subprocess.Popen(args, env={**os.environ, **s3_server.env}, stdout=out, stderr=out)
        agent = Agent(proc, f"http://127.0.0.1:{port}", cache, log)
        agents.append(agent)
        if wait_ready:
            until(lambda: _status(agent, "/readyz") == 200, "readyz", agent)
        return agent

    yield start
    for agent in agents:
        if agent.proc.poll() is None:
            agent.proc.terminate()
            try:
                agent.proc.wait(timeout=GRACE + 5)
            except subprocess.TimeoutExpired:
                agent.proc.kill()
                agent.proc.wait()


def _status(agent: Agent, path: str) -> int:
    try:
        return agent.call("GET", path)[0]
    except OSError:
        return 0


@pytest.fixture()
def small_uri(s3_server: S3Server, tmp_path: Path) -> str:
    local = synthetic_model(tmp_path / "src", shards=2, shard_bytes=256 << 10)
    prefix = f"node/{uuid.uuid4().hex[:8]}/small-model"
    s3_server.upload_dir(local, "models", prefix)
    return f"s3://models/{prefix}"


def node_meta(kube: FakeKube) -> tuple[dict[str, str], dict[str, str]]:
    meta = kube.get("node", NODE)["metadata"]
    return dict(meta.get("labels") or {}), dict(meta.get("annotations") or {})


def models_annotation(kube: FakeKube) -> dict[str, Any]:
    text = node_meta(kube)[1].get(MODELS_ANNOTATION)
    return dict(json.loads(text)) if text else {}


def node_patches(kube: FakeKube) -> list[dict[str, Any]]:
    return [
        json.loads(r.body) for r in kube.writes() if r.method == "PATCH" and r.path.endswith(f"/nodes/{NODE}")
    ]


def test_label_only_after_commit_and_removed_on_delete(
    fake_kube: FakeKube, start_agent: Callable[..., Agent], minilm_s3: str
) -> None:
    fake_kube.add_node(NODE, labels=FOREIGN)
    agent = start_agent()
    ref = model_ref(minilm_s3)
    status, body = agent.call("POST", "/v1/models", {"uri": minilm_s3})
    assert status == 202 and body["id"] == ref.id
    committed = agent.cache_dir / "models" / ref.id / "config.json"

    def labelled() -> bool:
        labels, _ = node_meta(fake_kube)
        if labels.get(ref.label_key) == "ready":
            assert committed.is_file(), "label set before the model was committed"
            return True
        return False

    until(labelled, "the model label", agent, within=60)
    assert agent.call("GET", f"/v1/models/{ref.id}")[1]["state"] == "ready"
    assert models_annotation(fake_kube)[ref.id] == {
        "uri": ref.uri,
        "bytes": agent.call("GET", f"/v1/models/{ref.id}")[1]["bytes_total"],
        "state": "ready",
        "revision": agent.call("GET", f"/v1/models/{ref.id}")[1]["revision"],  # what is served
    }
    cache_note = json.loads(node_meta(fake_kube)[1][CACHE_ANNOTATION])
    assert cache_note["quota_bytes"] == 1 << 30 and cache_note["used_bytes"] > 0
    # Every patch that advertised a non-ready state left the label alone; writes were per state.
    patches = node_patches(fake_kube)
    in_flight = 0
    for patch in patches:
        note = patch["metadata"].get("annotations", {}).get(MODELS_ANNOTATION)
        if note and json.loads(note).get(ref.id, {}).get("state") in {"queued", "fetching"}:
            in_flight += 1
            assert ref.label_key not in patch["metadata"].get("labels", {})
    assert in_flight >= 1, patches  # the fetching state was published, without the label
    assert len(patches) <= 5, patches

    status, body = agent.call("DELETE", f"/v1/models/{ref.id}")
    assert status == 202, body
    until(lambda: ref.label_key not in node_meta(fake_kube)[0], "the label to go", agent)
    until(lambda: ref.id not in models_annotation(fake_kube), "the annotation entry to go", agent)
    assert not committed.exists()
    labels, _ = node_meta(fake_kube)
    assert {k: labels.get(k) for k in FOREIGN} == FOREIGN


def test_startup_reconcile_fixes_stale_labels_despite_api_500s(
    fake_kube: FakeKube, start_agent: Callable[..., Agent], small_uri: str, tmp_path: Path
) -> None:
    ref = model_ref(small_uri)
    stale = "model-locality.io/old-model.deadbeef"
    fake_kube.add_node(NODE, labels={**FOREIGN, stale: "ready"}, annotations={"other/x": "1"})
    # First run: fetch, then stop; the labels it wrote are wiped to simulate a fresh Node object.
    first = start_agent()
    assert first.call("POST", "/v1/models", {"uri": small_uri})[0] == 202
    until(lambda: ref.label_key in node_meta(fake_kube)[0], "first fetch", first)
    first.proc.send_signal(signal.SIGTERM)
    assert first.proc.wait(timeout=GRACE + 5) == 0
    node = fake_kube.get("node", NODE)
    node["metadata"]["labels"] = {**FOREIGN, stale: "ready"}
    node["metadata"]["annotations"] = {"other/x": "1"}
    fake_kube.update("node", node)
    # Pins left on disk: one by a pod that is gone, one by hand; a live pod now uses the model.
    cache = Cache(Settings(cache_dir=first.cache_dir))
    cache.scan()
    cache.pin(ref.id, "pod:ml/gone")
    cache.pin(ref.id, "manual:keep")
    fake_kube.add_pod("ml", "live", NODE, {MODELS_ANNOTATION: small_uri}, phase="Running")
    fake_kube.fail_next(1, method="PATCH", path=f"/nodes/{NODE}", status=500)
    fake_kube.fail_next(1, method="GET", path=f"/nodes/{NODE}", status=503)

    second = start_agent()  # returns once /readyz is 200: the labels must be right already
    labels, annotations = node_meta(fake_kube)
    assert labels.get(ref.label_key) == "ready"
    assert stale not in labels
    assert {k: labels.get(k) for k in FOREIGN} == FOREIGN
    assert annotations["other/x"] == "1"
    assert models_annotation(fake_kube)[ref.id]["state"] == "ready"
    metrics = urllib.request.urlopen(second.url + "/metrics", timeout=5).read().decode()
    assert 'model_locality_agent_kube_api_errors_total{op="node_patch"} 1.0' in metrics
    assert 'model_locality_agent_kube_api_errors_total{op="node_get"} 1.0' in metrics
    until(
        lambda: second.call("GET", f"/v1/models/{ref.id}")[1]["pins"] == ["manual:keep", "pod:ml/live"],
        "stale pod pin dropped, live pod pinned",
        second,
    )


def test_pod_bound_to_node_triggers_fetch_and_pins(
    fake_kube: FakeKube, start_agent: Callable[..., Agent], small_uri: str
) -> None:
    fake_kube.add_node(NODE)
    agent = start_agent()
    ref = model_ref(small_uri)
    fake_kube.add_pod("ml", "embed-0", annotations={MODELS_ANNOTATION: f"{small_uri}, nope://bad"})
    fake_kube.bind_pod("ml", "embed-0", NODE)
    until(lambda: node_meta(fake_kube)[0].get(ref.label_key) == "ready", "pod-triggered fetch", agent)
    status, body = agent.call("DELETE", f"/v1/models/{ref.id}")
    assert status == 409 and "pod:ml/embed-0" in body["error"]
    fake_kube.set_pod_phase("ml", "embed-0", "Succeeded")
    until(lambda: agent.call("DELETE", f"/v1/models/{ref.id}")[0] == 202, "unpin after pod ended", agent)
    until(lambda: ref.label_key not in node_meta(fake_kube)[0], "label removal", agent)
    assert "skipping invalid model URI 'nope://bad'" in agent.logs()


def test_distribution_targeting_node_triggers_fetch_after_dropped_watch(
    fake_kube: FakeKube, start_agent: Callable[..., Agent], small_uri: str
) -> None:
    fake_kube.add_node(NODE)
    agent = start_agent()
    ref = model_ref(small_uri)
    until(lambda: fake_kube.open_watches("modeldistributions") >= 1, "distribution watch", agent)
    assert fake_kube.drop_watches() >= 1
    fake_kube.fail_next(1, method="GET", path="modeldistributions", status=500)
    other = {"spec": {"uri": "s3://models/elsewhere"}, "status": {"targets": ["node-b"]}}
    fake_kube.create("distribution", {"metadata": {"name": "not-here"}, **other})
    dist = {"metadata": {"name": "pre-dist"}, "spec": {"uri": small_uri}, "status": {"targets": [NODE]}}
    fake_kube.create("distribution", dist)
    until(lambda: node_meta(fake_kube)[0].get(ref.label_key) == "ready", "distribution fetch", agent)
    assert agent.call("DELETE", f"/v1/models/{ref.id}")[0] == 409
    assert [m["id"] for m in agent.call("GET", "/v1/models")[1]] == [ref.id]
    fake_kube.delete("distribution", "pre-dist")
    until(lambda: agent.call("DELETE", f"/v1/models/{ref.id}")[0] == 202, "unpin after delete", agent)


def test_sigterm_exits_within_grace_during_fetch(
    fake_kube: FakeKube, start_agent: Callable[..., Agent], minilm_s3: str
) -> None:
    fake_kube.add_node(NODE)
    agent = start_agent()
    assert agent.call("POST", "/v1/models", {"uri": minilm_s3})[0] == 202
    until(
        lambda: agent.call("GET", f"/v1/models/{model_ref(minilm_s3).id}")[1]["state"] != "queued",
        "fetch start",
    )
    agent.proc.send_signal(signal.SIGTERM)
    assert agent.proc.wait(timeout=GRACE + 5) == 0, agent.logs()
    assert "Traceback" not in agent.logs()


def test_wait_verb_prints_path_and_fails_clearly(
    fake_kube: FakeKube, start_agent: Callable[..., Agent], small_uri: str, tmp_path: Path
) -> None:
    fake_kube.add_node(NODE)
    agent = start_agent()
    env = {**os.environ, "MODEL_LOCALITY_AGENT_URL": agent.url}
    token_file = tmp_path / "token"

    def wait(uri: str, *extra: str, url_env: dict[str, str] = env) -> subprocess.CompletedProcess[str]:
        args = [sys.executable, "-m", "agent", "wait", uri, "--token-file", str(token_file), *extra]
        return subprocess.run(args, env=url_env, capture_output=True, text=True, timeout=60)

    done = wait(small_uri, "--timeout", "30")
    assert done.returncode == 0, done.stderr
    path = Path(done.stdout.strip())
    assert done.stdout.count("\n") == 1 and path == agent.cache_dir / "models" / model_ref(small_uri).id
    assert (path / "config.json").is_file()
    failed = wait("s3://models/node/absent-model", "--timeout", "30")
    assert failed.returncode == 1 and "failed" in failed.stderr and failed.stdout == ""
    bad = wait("ftp://nope", "--timeout", "5")
    assert bad.returncode == 1 and "scheme" in bad.stderr
    nobody = {**os.environ, "MODEL_LOCALITY_AGENT_URL": f"http://127.0.0.1:{free_port()}"}
    late = wait(small_uri, "--timeout", "0.5", url_env=nobody)
    assert late.returncode == 124 and "timed out" in late.stderr


def test_distribution_revision_wrong_fails_clearly_then_matching_is_fetched(
    fake_kube: FakeKube, start_agent: Callable[..., Agent], small_uri: str
) -> None:
    fake_kube.add_node(NODE)
    agent = start_agent()
    ref = model_ref(small_uri)
    spec = {"uri": small_uri, "revision": "0000000deadbeef"}
    dist = {"metadata": {"name": "pinned"}, "spec": spec, "status": {"targets": [NODE]}}
    fake_kube.create("distribution", dist)

    def failed() -> Any:
        status, view = agent.call("GET", f"/v1/models/{ref.id}")
        return view if status == 200 and view["state"] == "failed" else None

    view = until(failed, "the fetch of a revision the origin does not hold fails", agent)
    assert "not the requested 0000000deadbeef" in view["error"], view
    until(lambda: models_annotation(fake_kube).get(ref.id, {}).get("state") == "failed", "annotation")
    assert ref.label_key not in node_meta(fake_kube)[0]
    held = view["error"].split("the origin holds revision ", 1)[1].split(",")[0].split()[0]
    obj = fake_kube.get("distribution", "pinned")
    obj["spec"]["revision"] = held[:12]  # a prefix names it too
    fake_kube.update("distribution", obj)
    until(lambda: node_meta(fake_kube)[0].get(ref.label_key) == "ready", "the pinned revision", agent)
    status, view = agent.call("GET", f"/v1/models/{ref.id}")
    assert status == 200 and view["revision"] == held and view["error"] is None
    assert models_annotation(fake_kube)[ref.id]["revision"] == held
