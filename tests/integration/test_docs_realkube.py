"""Every command and manifest of the docs, run as written against a real API server.

The docs (README.md, docs/, the other READMEs; tests/fixtures/docblocks.py finds them, so a new
doc is run too) are followed in order, block by block, in a workspace with a copy of manifests/
(tests/fixtures/docshims.py): ``sh`` blocks run in bash with the real kubectl, and YAML blocks are
applied (``--dry-run=server``: objects, overlays beside manifests/, pod fragments in the opted-in
``model-serving`` namespace, which the webhook must mutate). Blocks under an "Uninstall" heading run
last. What needs a kubelet stands in, as a cluster would run it:

- once the install exists, the real ``model-extender serve`` runs as its Deployment would, with its
  ServiceAccount's token and no static token, its admission webhook registered (the install's
  MutatingWebhookConfiguration, pointed at 127.0.0.1) and its REST where the README's port-forward
  would put it;
- once the example Deployment exists, one pod of its template is created (the ReplicaSet
  controller's job), through the webhook: ``POD``/``<pod>`` in the docs is that pod, ``NODE`` a
  Ready GPU node.

A block marked ``<!-- not-a-command -->`` is skipped. Own API server: the install's webhook and
the uninstall must not touch other tests' state.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from scheduler_extender.injection import INJECTED_ANNOTATION, WAIT_CONTAINER
from tests.fixtures import docblocks as db
from tests.fixtures.docshims import Workspace
from tests.fixtures.kustomize import load_all
from tests.fixtures.polling import eventually_sync
from tests.fixtures.ports import free_port
from tests.fixtures.realkube import RealKube
from tests.fixtures.realkube_manifests import kubeconfig_file
from tests.fixtures.realkube_plugin import started_kube

ROOT = db.ROOT
UPSTREAM_CRDS = ROOT.parent / "shared" / "crds"  # Prometheus Operator, KEDA, ... (what docs name)
NODE = "gpu-docs-1"
POD = "minilm-embed-docs"
SERVING_NS = "model-serving"
PROBE_NS = "docs-webhook-probe"
WEBHOOKS = "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations"
WEBHOOK = f"{WEBHOOKS}/model-locality"
TEST_WEBHOOK = "model-locality-docs-test"
PLACEHOLDERS = {r"<pod>|(?<![\w./-])POD(?![\w-])": POD, r"<node>|(?<![\w./-])NODE(?![\w-])": NODE}
# Commands the docs show for the reader's machine, not the cluster: never run here.
NOT_RUN_OK = {"bash", "python3.11", "pip", "python", "ruff", "mypy", "pytest", "setup-envtest", "curl"} | {
    "oras", "modctl", "docker", "buildah", "podman", "skopeo", "crane", "helm",
}  # fmt: skip

pytestmark = [
    pytest.mark.realkube,
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("kubectl") is None, reason="needs kubectl"),
]


class Stand:
    """What the cluster would run by itself: the extender Deployment's process, a ReplicaSet's pod."""

    def __init__(self, kube: RealKube, ws: Workspace, tmp: Path) -> None:
        self.kube, self.ws, self.tmp = kube, ws, tmp
        self.extender: subprocess.Popen[bytes] | None = None
        self.pod: dict[str, Any] | None = None

    def exists(self, path: str) -> bool:
        from kubernetes.client import ApiException

        try:
            self.kube.request("GET", path)
        except ApiException as err:
            if err.status == 404:
                return False
            raise
        return True

    def between_blocks(self) -> None:
        for ns in self.kube.request("GET", "/api/v1/namespaces")["items"]:  # the ServiceAccount controller
            if not ns["metadata"].get("deletionTimestamp"):
                self.kube.create_service_account(ns["metadata"]["name"], "default")
        if self.extender is None and self.exists(
            "/apis/apps/v1/namespaces/model-locality/deployments/model-locality-extender"
        ):
            self.start_extender()
        if self.pod is None and self.extender is not None:
            path = f"/apis/apps/v1/namespaces/{SERVING_NS}/deployments/minilm-embed"
            if self.exists(path):
                self.create_example_pod(self.kube.request("GET", path))

    def start_extender(self) -> None:
        port, hook = free_port(), free_port()
        self.copy_webhook(hook)
        token = self.kube.token_for("model-locality", "model-locality-extender", expiration_seconds=3600)
        kubeconfig = kubeconfig_file(self.kube, self.tmp, token, "extender")
        env = {k: v for k, v in os.environ.items() if not k.startswith(("MODEL_LOCALITY_", "KUBERNETES_"))}
        with (self.tmp / "extender.log").open("wb") as log:
            self.extender = subprocess.Popen(
                [str(ROOT / ".venv" / "bin" / "model-extender"), "serve", "--kubeconfig", str(kubeconfig),
                 "--host", "127.0.0.1", "--port", str(port), "--webhook-port", str(hook),
                 "--webhook-hosts", "127.0.0.1", "--webhook-configuration", TEST_WEBHOOK],
                env=env, stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip
        self.ws.extender_port = port
        eventually_sync(lambda: _status(f"http://127.0.0.1:{port}/readyz") == 200, 60, "extender ready")
        self.kube.create_service_account(PROBE_NS, "default")
        self.kube.create_namespace(PROBE_NS, {"model-locality.io/injection": "enabled"})
        eventually_sync(self._webhook_bites, 30, "the API server calls the install's webhook")

    def copy_webhook(self, port: int) -> None:
        """The install's MutatingWebhookConfiguration names the Service, which this API server cannot
        reach (no kube-proxy): a copy of it (same rules, selector, policy) names 127.0.0.1 instead,
        and the extender may keep the copy's caBundle as it does the original's. The original stays,
        failing open as it is meant to."""
        install = self.kube.request("GET", WEBHOOK)
        url = {"url": f"https://127.0.0.1:{port}/mutate"}
        hooks = [{**w, "clientConfig": url} for w in install["webhooks"]]
        meta = {"name": TEST_WEBHOOK}
        rule = {
            "apiGroups": ["admissionregistration.k8s.io"],
            "resources": ["mutatingwebhookconfigurations"],
            "resourceNames": [TEST_WEBHOOK],
            "verbs": ["get", "patch"],
        }
        subject = {"kind": "ServiceAccount", "name": "model-locality-extender", "namespace": "model-locality"}
        rbac = "rbac.authorization.k8s.io/v1"
        ref = {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": TEST_WEBHOOK}
        self.kube.apply_manifests(
            [
                {**{k: install[k] for k in ("apiVersion", "kind")}, "metadata": meta, "webhooks": hooks},
                {"apiVersion": rbac, "kind": "ClusterRole", "metadata": meta, "rules": [rule]},
                {"apiVersion": rbac, "kind": "ClusterRoleBinding", "metadata": meta, "roleRef": ref,
                 "subjects": [subject]},
            ]
        )  # fmt: skip

    def _webhook_bites(self) -> bool:
        body = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "probe", "annotations": {"model-locality.io/models": "s3://models/a/b"}},
            "spec": {"containers": [{"name": "x", "image": "x"}]},
        }
        pod = self.kube.request("POST", f"/api/v1/namespaces/{PROBE_NS}/pods?dryRun=All", body)
        return INJECTED_ANNOTATION in (pod["metadata"].get("annotations") or {})

    def create_example_pod(self, deploy: dict[str, Any]) -> None:
        template = deploy["spec"]["template"]
        meta = {**template["metadata"], "name": POD}
        body = {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": template["spec"]}
        self.pod = self.kube.request("POST", f"/api/v1/namespaces/{SERVING_NS}/pods", body)
        assert INJECTED_ANNOTATION in self.pod["metadata"]["annotations"], "the example pod was not mutated"
        mine = {**body, "metadata": {**meta, "name": "my-pod"}}
        (self.ws.dir / "pod.yaml").write_text(yaml.safe_dump(mine))  # "pod.yaml": a pod of the reader's

    def stop_extender(self) -> None:
        for path in (
            f"{WEBHOOKS}/{TEST_WEBHOOK}",
            f"/apis/rbac.authorization.k8s.io/v1/clusterroles/{TEST_WEBHOOK}",
            f"/apis/rbac.authorization.k8s.io/v1/clusterrolebindings/{TEST_WEBHOOK}",
        ):
            if self.exists(path):
                self.kube.request("DELETE", path)
        if self.extender is not None and self.extender.poll() is None:
            self.extender.terminate()
            try:
                self.extender.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.extender.kill()
                self.extender.wait()

    def log(self) -> str:
        path = self.tmp / "extender.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""


def _status(url: str) -> int:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as err:
        return int(err.code)
    except OSError:
        return 0


def substitute(text: str) -> str:
    for pattern, value in PLACEHOLDERS.items():
        text = re.sub(pattern, value, text)
    return text


class Run:
    """Follows the docs block by block; collects what failed and what the pod fragments became."""

    def __init__(self, kube: RealKube, ws: Workspace, stand: Stand) -> None:
        self.kube, self.ws, self.stand = kube, ws, stand
        self.failures: list[str] = []
        self.mutated: list[str] = []
        self.count = 0

    def kubectl(self, *args: str) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "KUBECONFIG": str(self.kube.kubeconfig)}
        return subprocess.run(["kubectl", *args], env=env, capture_output=True, text=True, timeout=120)

    def block(self, block: db.Block) -> None:
        self.stand.between_blocks()
        if block.lang in db.COMMAND_LANGS:
            try:
                out = self.ws.run(substitute(block.text))
            except subprocess.TimeoutExpired as exc:
                self.failures.append(f"{block.where}: still running after {exc.timeout} s")
                return
            if out.returncode != 0:
                self.failures.append(f"{block.where}: exit {out.returncode}\n{out.stderr[-1500:]}")
        elif block.lang in db.YAML_LANGS:
            for doc in load_all(block.text):
                self.manifest(block.where, doc)

    def manifest(self, where: str, doc: Any) -> None:
        self.count += 1
        kind = db.yaml_kind(doc)
        path = self.ws.dir / f".doc-{self.count}.yaml"
        if kind == "object":
            path.write_text(yaml.safe_dump(doc))
            self._check(where, self.kubectl("apply", "--dry-run=server", "-f", str(path)))
        elif kind == "kustomization":
            overlay = self.ws.dir / f"overlay-{self.count}"
            overlay.mkdir()
            body = doc if "resources" in doc else {"resources": ["../manifests"], **doc}
            for gen in body.get("secretGenerator") or []:
                for item in gen.get("files") or []:
                    (overlay / item.split("=", 1)[-1]).write_text("0123456789abcdef0123456789abcdef")
            (overlay / "kustomization.yaml").write_text(yaml.safe_dump(body))
            self._check(where, self.kubectl("apply", "--dry-run=server", "-k", str(overlay)))
        elif kind in ("pod", "podspec"):
            self._pod(where, doc if kind == "pod" else {"spec": doc}, path)
        else:
            self.failures.append(
                f"{where}: YAML that is neither an object, an overlay nor a pod: {doc!r:.200}"
            )

    def _pod(self, where: str, doc: dict[str, Any], path: Path) -> None:
        spec = dict(doc.get("spec") or {})
        spec.setdefault("containers", [{"name": "main", "image": "example.invalid/app:1"}])
        meta = {**(doc.get("metadata") or {}), "name": f"doc-pod-{self.count}"}
        path.write_text(yaml.safe_dump({"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec}))
        asks = "model-locality.io/models" in (meta.get("annotations") or {})
        ns = self._namespace_for(str(spec.get("serviceAccountName") or "default")) if asks else "default"
        if ns is None:
            sa = spec.get("serviceAccountName")
            self.failures.append(
                f"{where}: no opted-in namespace has the ServiceAccount {sa} (apply it first)"
            )
            return
        out = self.kubectl("create", "--dry-run=server", "-o", "json", "-n", ns, "-f", str(path))
        if not self._check(where, out) or not asks:
            return
        pod = json.loads(out.stdout)
        inits = [c["name"] for c in pod["spec"].get("initContainers") or []]
        if INJECTED_ANNOTATION not in pod["metadata"].get("annotations", {}) or WAIT_CONTAINER not in inits:
            self.failures.append(f"{where}: the webhook did not mutate the doc's pod: {out.stderr}")
        elif "not injected" in out.stderr:
            self.failures.append(f"{where}: {out.stderr.strip()}")
        else:
            self.mutated.append(where)

    def _namespace_for(self, service_account: str) -> str | None:
        """An opted-in namespace (model-serving first) where the pod's ServiceAccount exists."""
        found = self.kube.request(
            "GET", "/api/v1/namespaces?labelSelector=model-locality.io/injection=enabled"
        )
        names = [
            str(n["metadata"]["name"]) for n in found["items"] if not n["metadata"].get("deletionTimestamp")
        ]
        for ns in sorted(set(names) - {PROBE_NS}, key=lambda n: (n != SERVING_NS, n)):
            if self.stand.exists(f"/api/v1/namespaces/{ns}/serviceaccounts/{service_account}"):
                return ns
        return None

    def _check(self, where: str, out: subprocess.CompletedProcess[str]) -> bool:
        if out.returncode != 0:
            self.failures.append(f"{where}: {' '.join(map(str, out.args[1:4]))}: {out.stderr.strip()[-800:]}")
        return out.returncode == 0


@pytest.fixture(scope="module")
def followed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Run, list[db.Block]]]:
    """Every doc followed once; (the run, the uninstall blocks that ran last)."""
    tmp = tmp_path_factory.mktemp("docs")
    if not (UPSTREAM_CRDS / "SOURCES").is_file():
        pytest.skip(f"the upstream CRDs are not beside the checkout ({UPSTREAM_CRDS})")
    with started_kube() as kube:
        # A cluster as the docs assume it: the operators they name installed, a Ready GPU node.
        kube.apply_manifests(
            [o for p in sorted(UPSTREAM_CRDS.glob("*.yaml")) for o in load_all(p.read_text())]
        )
        kube.create_gpu_node(NODE, {"nvidia.com/gpu.present": "true"})
        ws = Workspace(ROOT, tmp / "ws", kube.kubeconfig)
        stand = Stand(kube, ws, tmp)
        run = Run(kube, ws, stand)
        last: list[db.Block] = []
        try:
            for doc in db.doc_files():
                for block in db.blocks(doc):
                    if block.illustrative or block.lang not in db.COMMAND_LANGS + db.YAML_LANGS:
                        continue
                    if "uninstall" in block.section.lower():
                        last.append(block)
                    else:
                        run.block(block)
            stand.stop_extender()  # deleting the install stops it
            for block in last:
                run.block(block)
            yield run, last
        finally:
            stand.stop_extender()
            if run.failures:
                print("extender log:\n" + stand.log())


def test_every_block_runs_as_written(followed: tuple[Run, list[db.Block]]) -> None:
    run, _ = followed
    assert not run.failures, "\n\n".join(run.failures)
    errors = [r for r in run.ws.records() if r["kind"] == "error"]
    assert not errors, errors
    assert run.stand.extender is not None and run.stand.pod is not None, "the install never came up"


def test_the_extender_answered_the_readme_with_serviceaccount_tokens(
    followed: tuple[Run, list[db.Block]],
) -> None:
    run, _ = followed
    answers = [r for r in run.ws.records() if r["kind"] == "curl"]
    assert answers, "no command reached the extender"
    assert all(200 <= r["status"] < 300 for r in answers), answers
    assert any(r["status"] == 201 and "all-minilm-l6-v2" in r["body"] for r in answers), answers


def test_pod_manifests_in_the_docs_are_mutated_by_the_webhook(followed: tuple[Run, list[db.Block]]) -> None:
    run, _ = followed
    assert len(run.mutated) >= 2, run.mutated
    containers = [c["name"] for c in run.stand.pod["spec"]["initContainers"]]  # type: ignore[index]
    assert containers[0] == WAIT_CONTAINER


def test_commands_not_run_here_are_the_readers_own_tools(followed: tuple[Run, list[db.Block]]) -> None:
    run, _ = followed
    odd = []
    for record in run.ws.records():
        if record["kind"] != "not-run":
            continue
        argv = record["argv"]
        name = argv[0].rsplit("/", 1)[-1]
        if argv[0].startswith("scripts/") or "/scripts/" in argv[0]:
            ok = (ROOT / "scripts" / name).exists()
        elif name == "bash":
            ok = len(argv) > 1 and ((ROOT / argv[1]).exists() or argv[1].startswith("../shared/"))
        else:
            ok = name in NOT_RUN_OK
        if not ok:
            odd.append(argv)
    assert not odd, f"commands the docs show that neither run here nor are known tools: {odd}"


def test_uninstall_ran_last_and_removed_the_install(followed: tuple[Run, list[db.Block]]) -> None:
    run, last = followed
    assert last, "no Uninstall section"
    assert not run.stand.exists(WEBHOOK)
    assert not run.stand.exists(
        "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/modeldistributions.model-locality.io"
    )
