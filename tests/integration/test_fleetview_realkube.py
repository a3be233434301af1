"""``kubectl model-locality`` against the real API server: Nodes carrying the metadata the agent's
own writer (``agent.cluster.labels.desired_metadata``) produces, a pod bound to a node, a
ModelDistribution with the status the extender writes; users with and without RBAC; ``--watch``."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes.client import ApiException

from agent.cluster.labels import desired_metadata
from agent.lifecycle.modelstate import ModelState
from fleetview import cli
from locality.contract import FETCH_RATE_ANNOTATION, MODELS_ANNOTATION, ModelEntry
from locality.identity import model_ref
from tests.fixtures.polling import eventually
from tests.fixtures.realkube import RealKube

GiB = 1 << 30
A = model_ref("s3://models/fleetview/alpha")
B = model_ref("s3://models/fleetview/beta")
N1, N2 = "fv-node-1", "fv-node-2"
NS = "fv-serving"
MERGE = "application/merge-patch+json"
DONE = 9 * GiB // 4  # 75% of A


def agent_metadata(states: list[ModelState], used: int, quota: int) -> tuple[dict[str, str], dict[str, str]]:
    meta = desired_metadata(states, used, quota)
    return dict(meta.labels), dict(meta.annotations)


def with_progress(annotations: dict[str, str], ref: Any, total: int, done: int) -> dict[str, str]:
    """The entry of an in-flight model with ``bytes_done``, as the contract's writer emits it."""
    models = json.loads(annotations[MODELS_ANNOTATION])
    models[ref.id] = ModelEntry(ref.uri, total, "fetching", bytes_done=done).as_json()
    return {**annotations, MODELS_ANNOTATION: json.dumps(models, separators=(",", ":"))}


def state(ref: Any, st: str, size: int, revision: str | None = None) -> ModelState:
    return ModelState(ref.id, ref.uri, ref.label_key, st, size, revision)


CREATED = (  # removed after the module: other tests share this server (a distribution of "all")
    f"/api/v1/nodes/{N1}",
    f"/api/v1/nodes/{N2}",
    f"/api/v1/namespaces/{NS}/pods/server",
    "/api/v1/namespaces/fv-other/pods/other",
    "/apis/model-locality.io/v1alpha1/modeldistributions/fv-alpha",
    "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings/fv-node-reader",
    "/apis/rbac.authorization.k8s.io/v1/clusterroles/fv-node-reader",
)


def remove_all(kube: RealKube) -> None:
    for path in CREATED:
        with contextlib.suppress(ApiException):  # 404: not created (yet)
            kube.request(
                "DELETE", path, {"apiVersion": "v1", "kind": "DeleteOptions", "gracePeriodSeconds": 0}
            )


@pytest.fixture(scope="module")
def fleet(real_kube_crd: RealKube) -> Iterator[RealKube]:
    kube = real_kube_crd
    remove_all(kube)
    try:
        yield populate(kube)
    finally:
        remove_all(kube)


def populate(kube: RealKube) -> RealKube:
    labels, annotations = agent_metadata(
        [state(A, "ready", 3 * GiB, "rev-0123456789abcdef"), state(B, "ready", 5 * GiB)], 8 * GiB, 10 * GiB
    )
    kube.create_gpu_node(N1, labels, {**annotations, FETCH_RATE_ANNOTATION: "730000000"})
    labels, annotations = agent_metadata([state(A, "fetching", 3 * GiB)], GiB, 100 * GiB)
    kube.create_gpu_node(N2, labels, with_progress(annotations, A, 3 * GiB, DONE))
    for ns in (NS, "fv-other"):  # no controller-manager: the pods' ServiceAccount by hand
        kube.create_service_account(ns, "default")
    kube.apply_manifests([bound_pod(NS, "server", N1, B.uri), bound_pod("fv-other", "other", N1, A.uri)])
    kube.apply_manifests([distribution("fv-alpha", A.uri, 2)])
    status = {
        "modelId": A.id,
        "label": A.label_key,
        "targets": [N1, N2],
        "desired": 2,
        "ready": 1,
        "conditions": [
            {
                "type": "Ready",
                "status": "False",
                "reason": "Fetching",
                "message": "1/2 target(s) ready",
                "lastTransitionTime": "2026-12-06T00:00:00Z",
            }
        ],
    }
    path = "/apis/model-locality.io/v1alpha1/modeldistributions/fv-alpha/status"
    kube.request("PATCH", path, {"status": status}, content_type=MERGE)
    return kube


def bound_pod(ns: str, name: str, node: str, uris: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "annotations": {MODELS_ANNOTATION: uris}},
        "spec": {"nodeName": node, "containers": [{"name": "c", "image": "example.invalid/s:1"}]},
    }


def distribution(name: str, uri: str, replicas: int) -> dict[str, Any]:
    return {
        "apiVersion": "model-locality.io/v1alpha1",
        "kind": "ModelDistribution",
        "metadata": {"name": name},
        "spec": {"uri": uri, "replicas": replicas},
    }


def plugin(capsys: pytest.CaptureFixture[str], kubeconfig: Path, *argv: str) -> tuple[int, str, str]:
    code = cli.main([*argv, "--kubeconfig", str(kubeconfig)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def cells(out: str) -> list[list[str]]:
    return [line.split() for line in out.splitlines()]


def test_models_by_node_with_state_size_progress_revision(
    fleet: RealKube, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = plugin(capsys, fleet.kubeconfig, "models", A.uri)
    assert (code, err) == (0, "")
    assert cells(out) == [
        ["MODEL", "NODE", "STATE", "SIZE", "PROGRESS", "REVISION"],
        [A.uri, N1, "ready", "3.0GiB", "100%", "rev-01234567"],
        [A.uri, N2, "fetching", "3.0GiB", "75%", "<none>"],
    ]
    code, out, _ = plugin(capsys, fleet.kubeconfig, "models", A.id[:8], "-o", "wide")
    assert [row[-3:] for row in cells(out)[1:]] == [
        [A.id, "yes", "distribution:fv-alpha,pod:fv-other/other"],
        [A.id, "no", "distribution:fv-alpha"],
    ]


def test_models_as_json_carry_exact_bytes(fleet: RealKube, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = plugin(capsys, fleet.kubeconfig, "models", "-o", "json")
    items = [i for i in json.loads(out)["items"] if i["node"] in (N1, N2)]
    assert code == 0
    assert [(i["uri"], i["node"], i["state"], i["bytes"], i["bytes_done"]) for i in items] == [
        (A.uri, N1, "ready", 3 * GiB, None),
        (A.uri, N2, "fetching", 3 * GiB, DONE),
        (B.uri, N1, "ready", 5 * GiB, None),
    ]


def test_nodes_show_use_against_quota_and_pins(fleet: RealKube, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = plugin(capsys, fleet.kubeconfig, "nodes", N2, N1)
    assert code == 0
    assert cells(out) == [
        ["NODE", "STATUS", "MODELS", "READY", "USED", "QUOTA", "USE", "PINNED", "FETCH-RATE"],
        [N1, "Ready", "2", "2", "8.0GiB", "10GiB", "80%", "2", "696MiB/s"],
        [N2, "Ready", "1", "0", "1.0GiB", "100GiB", "1%", "1", "<none>"],
    ]
    # -n: only that namespace's pods pin (the fv-other pod's pin of A on N1 is not counted)
    code, out, _ = plugin(capsys, fleet.kubeconfig, "nodes", N1, "-n", NS, "-o", "yaml")
    [item] = yaml.safe_load(out)["items"]
    assert (item["pinned"], item["pinned_bytes"]) == (2, 8 * GiB)  # B by its pod, A by the distribution
    code, out, _ = plugin(capsys, fleet.kubeconfig, "nodes", N1, "-n", "fv-nobody", "-o", "json")
    assert json.loads(out)["items"][0]["pinned"] == 1  # the distribution's pin only


def test_distributions_desired_and_ready(fleet: RealKube, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = plugin(capsys, fleet.kubeconfig, "distributions", "fv-alpha", "-o", "wide")
    assert code == 0
    header, row = cells(out)
    assert header[:7] == ["NAME", "MODEL", "REPLICAS", "DESIRED", "READY", "STATUS", "AGE"]
    assert header[7:] == ["ID", "TARGETS", "MESSAGE"]
    assert row[:6] == ["fv-alpha", A.uri, "2", "2", "1", "Fetching"]
    assert row[7:9] == [A.id, f"{N1},{N2}"]


def user_kubeconfig(kube: RealKube, tmp_path: Path, name: str) -> Path:
    cert, key = kube.issue_cert(name, client=True)
    path = tmp_path / f"{name}.kubeconfig"
    path.write_text(kube.kubeconfig_for(cert_file=cert, key_file=key, user=name))
    return path


def test_rbac_a_node_reader_gets_the_view_with_warnings_a_stranger_one_line(
    fleet: RealKube, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    role = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRole",
        "metadata": {"name": "fv-node-reader"},
        "rules": [{"apiGroups": [""], "resources": ["nodes"], "verbs": ["get", "list", "watch"]}],
    }
    binding = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRoleBinding",
        "metadata": {"name": "fv-node-reader"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "fv-node-reader"},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "fv-reader"}],
    }
    fleet.apply_manifests([role, binding])
    code, out, err = plugin(capsys, user_kubeconfig(fleet, tmp_path, "fv-reader"), "nodes", N1)
    assert code == 0
    assert cells(out)[1][:7] == [N1, "Ready", "2", "2", "8.0GiB", "10GiB", "80%"]
    assert cells(out)[1][7] == "0"  # no pins known without pods and distributions
    assert "cannot list pods" in err and "forbidden" in err.lower()
    code, out, err = plugin(capsys, user_kubeconfig(fleet, tmp_path, "fv-stranger"), "models")
    assert code == 1 and out == ""
    assert err.startswith("kubectl model-locality models: cannot list nodes") and len(err.splitlines()) == 1


async def test_watch_prints_rows_as_they_change(fleet: RealKube) -> None:
    args = cli.build_parser().parse_args(["models", A.uri, "-w", "--kubeconfig", str(fleet.kubeconfig)])
    out, err = io.StringIO(), io.StringIO()
    task = asyncio.create_task(cli.run(args, out, err))
    try:
        await eventually(lambda: "75%" in out.getvalue(), what="the first table")
        labels, annotations = agent_metadata([state(A, "ready", 3 * GiB)], 3 * GiB, 100 * GiB)
        body = {"metadata": {"labels": labels, "annotations": annotations}}
        await asyncio.to_thread(fleet.request, "PATCH", f"/api/v1/nodes/{N2}", body, content_type=MERGE)

        def updated() -> bool:
            return [A.uri, N2, "ready", "3.0GiB", "100%", "<none>"] in cells(out.getvalue())

        await eventually(updated, what="the changed row")
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        _, annotations = agent_metadata([state(A, "fetching", 3 * GiB)], GiB, 100 * GiB)
        annotations = with_progress(annotations, A, 3 * GiB, DONE)
        restore = {"metadata": {"labels": {A.label_key: None}, "annotations": annotations}}
        fleet.request("PATCH", f"/api/v1/nodes/{N2}", restore, content_type=MERGE)
    lines = out.getvalue().splitlines()
    assert lines[0].split()[0] == "MODEL" and sum(line.startswith("MODEL") for line in lines) == 1
    assert [line.split()[1] for line in lines[3:]] == [N2]  # only the row that changed, once
    assert not [t for t in threading.enumerate() if t.name.startswith("kube-watch")]


def test_the_console_script_reads_kubeconfig_from_the_environment(fleet: RealKube) -> None:
    """kubectl runs `kubectl-model_locality` from PATH with the user's environment."""
    script = Path(sys.executable).parent / "kubectl-model_locality"
    env = {**os.environ, "KUBECONFIG": str(fleet.kubeconfig)}
    done = subprocess.run(
        [str(script), "distributions", "fv-alpha"], capture_output=True, text=True, env=env, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert cells(done.stdout)[1][:6] == ["fv-alpha", A.uri, "2", "2", "1", "Fetching"]


def test_the_context_flag_picks_a_kubeconfig_context(
    fleet: RealKube, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = plugin(capsys, fleet.kubeconfig, "nodes", N1, "--context", "real")
    assert code == 0 and cells(out)[1][0] == N1
    code, out, err = plugin(capsys, fleet.kubeconfig, "nodes", N1, "--context", "elsewhere")
    assert (code, out) == (1, "")
    assert "cannot use kubeconfig" in err and "elsewhere" in err and len(err.splitlines()) == 1
