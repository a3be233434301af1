"""`kubectl apply -k` of the install, twice, against a real kube-apiserver: the second is a no-op.

The install is what an operator applies: the bare base (README.md), then an overlay with the
examples and the node-restriction, hostport-snat and static-token components. The second apply must report
`unchanged` for every object, with one known exception: kubectl's client-side apply always
re-sends a PodDisruptionBudget's selector (its patch strategy is "replace") and prints
`configured`. For that one the test checks what matters: the API server stored nothing new (same
resourceVersion and generation, for every object).

Its own API server (not the session one): the admission policy it installs would deny other
tests' agent-identity Node writes, and deleted namespaces never finish without a
controller-manager.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fixtures.realkube import RealKube
from tests.fixtures.realkube_plugin import started_kube

ROOT = Path(__file__).resolve().parents[2]
MANIFESTS = ROOT / "manifests"
CRDS = ("modeldistributions.model-locality.io", "modelaccesspolicies.model-locality.io")
# kubectl's client-side apply reports these "configured" on every run though nothing changes.
ALWAYS_PATCHED = {"poddisruptionbudget.policy/model-locality-extender"}

pytestmark = [
    pytest.mark.realkube,
    pytest.mark.skipif(shutil.which("kubectl") is None, reason="needs kubectl"),
]


@pytest.fixture(scope="module")
def own_kube() -> Iterator[RealKube]:
    with started_kube() as kube:
        yield kube


def _overlay(tmp: Path) -> Path:
    """The base (which needs no secret), the examples, and the optional components, the
    static token with the Secret its README section has the operator generate."""
    rel = os.path.relpath(MANIFESTS, tmp)
    (tmp / "token.txt").write_text("0123456789abcdef0123456789abcdef")
    components = ("node-restriction", "hostport-snat", "static-token")
    (tmp / "kustomization.yaml").write_text(
        f"resources: [{rel}, {rel}/examples]\n"
        f"components: [{', '.join(f'{rel}/components/{c}' for c in components)}]\n"
        "secretGenerator:\n"
        "  - {name: model-locality-token, namespace: model-locality, files: [token=token.txt],\n"
        "     options: {disableNameSuffixHash: true}}\n"
    )
    return tmp


def test_the_bare_base_applies_twice_with_nothing_to_make_up(own_kube: RealKube) -> None:
    """`kubectl apply -k manifests/` as README.md says, with no overlay: no Secret in it, and the
    second apply changes nothing (runs first: the overlay below is a superset of it)."""
    _crds(own_kube)
    first = _kubectl(own_kube, "apply", "-k", str(MANIFESTS))
    assert first.returncode == 0, first.stderr
    created = _results(first.stdout)
    assert not [ref for ref in created if ref.startswith("secret/")], created
    second = _kubectl(own_kube, "apply", "-k", str(MANIFESTS))
    assert second.returncode == 0, second.stderr
    changed = {ref: verb for ref, verb in _results(second.stdout).items() if verb != "unchanged"}
    assert set(changed) <= ALWAYS_PATCHED, f"re-apply rewrote {changed}"


def _kubectl(kube: RealKube, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "KUBECONFIG": str(kube.kubeconfig)}
    return subprocess.run(["kubectl", *args], env=env, capture_output=True, text=True, timeout=180)


def _results(stdout: str) -> dict[str, str]:
    """`kind.group/name verb` lines of `kubectl apply` -> {kind.group/name: verb}."""
    out: dict[str, str] = {}
    for line in stdout.splitlines():
        ref, _, verb = line.rpartition(" ")
        out[ref] = verb
    return out


def _versions(kube: RealKube, overlay: Path) -> dict[str, tuple[str, int | None]]:
    got = _kubectl(kube, "get", "-k", str(overlay), "-o", "json")
    assert got.returncode == 0, got.stderr
    items = json.loads(got.stdout)["items"]
    return {
        f"{o['kind']}/{o['metadata'].get('namespace', '')}/{o['metadata']['name']}": (
            o["metadata"]["resourceVersion"],
            o["metadata"].get("generation"),
        )
        for o in items
    }


def _crds(kube: RealKube) -> None:
    """The CRDs first (manifests/README.md): the examples' ModelDistributions and the base's
    default ModelAccessPolicy need them established."""
    files = [arg for name in CRDS for arg in ("-f", str(MANIFESTS / f"crd-{name.split('.')[0]}.yaml"))]
    crd = _kubectl(kube, "apply", *files)
    assert crd.returncode == 0, crd.stderr
    waits = [f"crd/{name}" for name in CRDS]
    established = _kubectl(kube, "wait", "--for=condition=Established", *waits, "--timeout=60s")
    assert established.returncode == 0, established.stderr


def test_second_apply_changes_nothing(own_kube: RealKube, tmp_path: Path) -> None:
    overlay = _overlay(tmp_path)
    _crds(own_kube)
    first = _kubectl(own_kube, "apply", "-k", str(overlay))
    assert first.returncode == 0, first.stderr
    created = _results(first.stdout)
    assert len(created) >= 30 and set(created.values()) <= {"created", "unchanged", "configured"}, created
    assert created["secret/model-locality-token"] == "created"
    before = _versions(own_kube, overlay)

    second = _kubectl(own_kube, "apply", "-k", str(overlay))
    assert second.returncode == 0, second.stderr
    verbs = _results(second.stdout)
    assert verbs.keys() == created.keys()
    changed = {ref: verb for ref, verb in verbs.items() if verb != "unchanged"}
    assert set(changed) <= ALWAYS_PATCHED, f"re-apply rewrote {changed}"
    assert _versions(own_kube, overlay) == before, "the API server stored a new version of something"

    diff = _kubectl(own_kube, "diff", "-k", str(overlay))
    assert diff.returncode == 0 and not diff.stdout, diff.stdout + diff.stderr
