"""Install, use, and uninstall as the docs say, on a real API server: nothing of ours is left but
what manifests/README.md ("Uninstall") says stays.

The install is README.md's block; then, as the cluster would run them, the real ``model-agent
serve`` on a Ready GPU node (its ServiceAccount token bound to its pod, no static token) and the
real ``model-extender serve`` (webhook on: it creates its CA Secret and publishes the caBundle).
The agent's S3 credentials are files that do not exist when it starts (the optional Secret volume,
empty): a fetch fails for want of credentials, the files appear (the kubelet updating the volume
after ``kubectl create secret``), and the next request fetches from the moto S3 server with the
same process. The agent labels and annotates its Node as it does. Then both processes stop (the
uninstall deletes their workloads) and the README's Uninstall block runs as written; every object
of every listable resource is searched for our names, labels and annotations.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from locality.identity import model_ref
from tests.fixtures import docblocks as db
from tests.fixtures.docshims import Workspace
from tests.fixtures.polling import eventually
from tests.fixtures.ports import free_port
from tests.fixtures.realkube import RealKube
from tests.fixtures.realkube_manifests import agent_token, kubeconfig_file
from tests.fixtures.realkube_plugin import started_kube
from tests.fixtures.s3server import run_s3_server

ROOT = db.ROOT
NODE = "gpu-uninstall-1"
TEAM = "team-a"
URI = "s3://models/org/uninstall-model"
REF = model_ref(URI)
OPT_IN = "node.model-locality.io/cache"  # the operator's own node label: README says it stays
USER_ROLES = ("model-locality-user", "model-locality-admin")  # bindings users made to them stay, inert

pytestmark = [
    pytest.mark.realkube,
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("kubectl") is None, reason="needs kubectl"),
]


def section_blocks(doc: Path, heading: str) -> list[db.Block]:
    found = [b for b in db.command_blocks(doc) if b.section.lower().startswith(heading.lower())]
    assert found, f"{doc} has no command block under a heading {heading!r}"
    return found


def wait(check: Callable[[], bool], within: float, what: str) -> None:
    asyncio.run(eventually(check, within, what, interval=0.2))


def http(method: str, url: str, token: str, body: Any = None) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    request = urllib.request.Request(url, data=data, headers=headers, method=method)
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"null")


def ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return bool(resp.status == 200)
    except OSError:
        return False


def clean_env(**extra: str) -> dict[str, str]:
    drop = ("MODEL_LOCALITY_", "KUBERNETES_", "AWS_", "HF_")
    return {**{k: v for k, v in os.environ.items() if not k.startswith(drop)}, **extra}


@dataclass
class Story:
    """What happened on the way; read by the tests."""

    kube: RealKube
    first_error: str = ""
    agent_pids: list[int] = field(default_factory=list)
    node_before: dict[str, Any] = field(default_factory=dict)
    uninstall: list[str] = field(default_factory=list)
    leftovers: list[tuple[str, str, str, str]] = field(default_factory=list)  # kind, ns, name, why
    namespace_terminating: bool = False


class Processes:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str, argv: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        with (self.tmp / f"{name}.log").open("wb") as log:
            proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT)
        self.procs[name] = proc
        return proc

    def stop(self, name: str) -> None:
        proc = self.procs.pop(name, None)
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=40)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def log(self, name: str) -> str:
        path = self.tmp / f"{name}.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""


def install(ws: Workspace) -> None:
    for block in section_blocks(ROOT / "README.md", "Install on a cluster")[:1]:
        out = ws.run(block.text)
        assert out.returncode == 0, f"{block.where}: {out.stderr}"


def start_extender(kube: RealKube, procs: Processes, tmp: Path) -> None:
    token = kube.token_for("model-locality", "model-locality-extender", expiration_seconds=3600)
    kubeconfig = kubeconfig_file(kube, tmp, token, "extender")
    port = free_port()
    procs.start(
        "extender",
        [str(ROOT / ".venv/bin/model-extender"), "serve", "--kubeconfig", str(kubeconfig), "--host",
         "127.0.0.1", "--port", str(port), "--webhook-port", str(free_port())],
        clean_env(),
    )  # fmt: skip
    wait(lambda: ready(f"http://127.0.0.1:{port}/readyz"), 60, "extender ready")


def start_agent(kube: RealKube, procs: Processes, tmp: Path, creds: Path) -> str:
    kubeconfig = kubeconfig_file(kube, tmp, agent_token(kube, NODE), "agent")
    port = free_port()
    env = clean_env(
        AWS_SHARED_CREDENTIALS_FILE=str(creds / "credentials"),  # as in agent-daemonset.yaml
        AWS_CONFIG_FILE=str(creds / "config"),
        HF_TOKEN_PATH=str(creds / "hf-token"),
        AWS_EC2_METADATA_DISABLED="true",  # no instance profile to ask on this machine
    )
    procs.start(
        "agent",
        [str(ROOT / ".venv/bin/model-agent"), "serve", "--kubeconfig", str(kubeconfig), "--node-name", NODE,
         "--cache-dir", str(tmp / "cache"), "--host", "127.0.0.1", "--port", str(port)],
        env,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    wait(lambda: ready(f"{url}/readyz"), 60, "agent ready")
    return url


def a_user(kube: RealKube) -> str:
    """A ServiceAccount of an opted-in namespace, bound to model-locality-user (examples/rbac.yaml)."""
    kube.create_service_account(TEAM, "app")
    patch = {"metadata": {"labels": {"model-locality.io/injection": "enabled"}}}
    kube.request("PATCH", f"/api/v1/namespaces/{TEAM}", patch, content_type="application/merge-patch+json")
    binding = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": {"name": "app-model-locality-user", "namespace": TEAM},
        "roleRef": {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "ClusterRole",
            "name": "model-locality-user",
        },
        "subjects": [{"kind": "ServiceAccount", "name": "app", "namespace": TEAM}],
    }
    kube.apply_manifests([binding])
    return kube.token_for(TEAM, "app", audiences=["model-locality"], expiration_seconds=3600)


def fetch(url: str, token: str) -> dict[str, Any]:
    """POST the model and poll until it is ready or failed; its last view."""
    status, answer = http("POST", f"{url}/v1/models", token, {"uri": URI})
    assert status in (200, 202), answer
    view: dict[str, Any] = {}

    def settled() -> bool:
        nonlocal view
        _, view = http("GET", f"{url}/v1/models/{REF.id}", token)
        return isinstance(view, dict) and view.get("state") in ("ready", "failed")

    wait(settled, 60, f"{URI} ready or failed")
    return view


def node(kube: RealKube) -> dict[str, Any]:
    found: dict[str, Any] = kube.request("GET", f"/api/v1/nodes/{NODE}")
    return found


def ours(obj: dict[str, Any]) -> str:
    """Why ``obj`` is ours ("" when it is not): its name, a label or an annotation."""
    meta = obj.get("metadata") or {}
    role = (obj.get("roleRef") or {}).get("name")
    if role in USER_ROLES:
        return f"binds {role}"
    if "model-locality" in meta.get("name", ""):
        return "name"
    for where in ("labels", "annotations"):
        for key, value in (meta.get(where) or {}).items():
            if "model-locality" in key or (where == "labels" and value == "model-locality"):
                return f"{where[:-1]} {key}"
    return ""


def leftovers(kube: RealKube) -> list[tuple[str, str, str, str]]:
    env = {**os.environ, "KUBECONFIG": str(kube.kubeconfig)}
    names = subprocess.run(
        ["kubectl", "api-resources", "--verbs=list", "-o", "name"], env=env, capture_output=True, text=True
    ).stdout.split()
    found = []
    for resource in names:
        out = subprocess.run(
            ["kubectl", "get", resource, "-A", "-o", "json"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        if out.returncode != 0:
            continue
        for obj in json.loads(out.stdout).get("items", []):
            why = ours(obj)
            if why:
                meta = obj["metadata"]
                found.append((obj.get("kind", resource), meta.get("namespace", ""), meta["name"], why))
    return found


@pytest.fixture(scope="module")
def story(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Story]:
    tmp = tmp_path_factory.mktemp("uninstall")
    creds = tmp / "s3"
    creds.mkdir()  # the optional Secret volume before the Secret exists: an empty directory
    procs = Processes(tmp)
    with run_s3_server() as s3, started_kube() as kube:
        try:
            s3.put("models", "org/uninstall-model/weights.bin", os.urandom(4096))
            ws = Workspace(ROOT, tmp / "ws", kube.kubeconfig)
            install(ws)
            kube.create_gpu_node(NODE, {"nvidia.com/gpu.present": "true", OPT_IN: "enabled"})
            start_extender(kube, procs, tmp)
            url = start_agent(kube, procs, tmp, creds)
            story = Story(kube)
            token = a_user(kube)
            story.agent_pids.append(procs.procs["agent"].pid)
            first = fetch(url, token)
            assert first["state"] == "failed", first
            story.first_error = str(first.get("error"))
            # `kubectl create secret generic model-locality-s3 --from-file=credentials --from-file=config`,
            # as the kubelet then writes the files into the agent's volume:
            (creds / "credentials").write_text(
                "[default]\naws_access_key_id = testing\naws_secret_access_key = testing\n"
            )
            (creds / "config").write_text(f"[default]\nregion = us-east-1\nendpoint_url = {s3.endpoint}\n")
            second = fetch(url, token)
            assert second["state"] == "ready", second
            story.agent_pids.append(procs.procs["agent"].pid)
            assert procs.procs["agent"].poll() is None

            def labelled() -> bool:
                meta = node(kube)["metadata"]
                return meta["labels"].get(REF.label_key) == "ready" and REF.id in meta["annotations"].get(
                    "model-locality.io/models", ""
                )

            wait(labelled, 30, "the agent labelled and annotated its Node")
            story.node_before = node(kube)["metadata"]
            procs.stop("agent")  # the uninstall deletes the DaemonSet and the Deployment
            procs.stop("extender")
            for block in section_blocks(ROOT / "manifests" / "README.md", "Uninstall"):
                out = ws.run(block.text)
                assert out.returncode == 0, f"{block.where}: {out.stderr}"
                story.uninstall.append(block.text)
            ns = kube.request("GET", "/api/v1/namespaces/model-locality")
            story.namespace_terminating = bool(ns["metadata"].get("deletionTimestamp"))
            story.leftovers = leftovers(kube)
            yield story
        finally:
            for name in list(procs.procs):
                if name in procs.procs and procs.procs[name].poll() is not None:
                    print(f"--- {name} log\n{procs.log(name)}")
                procs.stop(name)


def test_s3_credentials_created_after_the_agent_started_are_used_without_restart(story: Story) -> None:
    assert "no AWS credentials" in story.first_error, story.first_error
    assert story.agent_pids[0] == story.agent_pids[1]


def test_agents_had_written_their_node_labels_and_annotations(story: Story) -> None:
    keys = [
        k
        for k in {**story.node_before["labels"], **story.node_before["annotations"]}
        if k.startswith("model-locality.io/")
    ]
    assert REF.label_key in keys and "model-locality.io/models" in keys and "model-locality.io/cache" in keys


def test_uninstall_leaves_only_what_the_readme_says_stays(story: Story) -> None:
    """Stays: the namespace model-locality while it terminates (a controller-manager would finish
    it; this API server has none) with what is in it, the operator's node opt-in label, and the
    users' own bindings to model-locality-user/-admin (their RoleBinding here)."""
    assert story.namespace_terminating
    unexpected = []
    for kind, ns, name, why in story.leftovers:
        if ns == "model-locality" or (kind == "Namespace" and name == "model-locality"):
            continue  # goes with the namespace
        if (kind == "Node" and why == f"label {OPT_IN}") or why.startswith("binds "):
            continue
        unexpected.append((kind, ns, name, why))
    assert not unexpected, unexpected
    meta = node(story.kube)["metadata"]
    keys = {**(meta.get("labels") or {}), **(meta.get("annotations") or {})}
    assert not [k for k in keys if k.startswith("model-locality.io/")], keys
    assert meta["labels"][OPT_IN] == "enabled"
    team = story.kube.request("GET", f"/api/v1/namespaces/{TEAM}")["metadata"]
    assert "model-locality.io/injection" not in (team.get("labels") or {})


def test_the_readme_says_what_stays() -> None:
    text = (ROOT / "manifests" / "README.md").read_text()
    section = text[text.index("### Uninstall") :]
    for stays in ("/var/lib/model-locality", OPT_IN, "model-locality.io/injected", *USER_ROLES):
        assert stays in section, stays
