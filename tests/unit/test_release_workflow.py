"""The release workflow: schema-valid, pinned, and its shell steps run here as they would on a tag.

GitHub Actions cannot run here. check-jsonschema validates every workflow against the GitHub
workflow schema it vendors (no network); the rest reads release.yml: actions pinned to a full
commit SHA or an exact version, least-privilege permissions, multi-arch images with SBOM,
provenance and keyless signatures, and the two shell steps that need no registry (version check,
render of the install YAML) executed against this checkout.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.fixtures.kustomize import load_all, render

ROOT = Path(__file__).resolve().parents[2]
WORKFLOWS = sorted((ROOT / ".github" / "workflows").glob("*.yml"))
RELEASE = ROOT / ".github" / "workflows" / "release.yml"
MANIFESTS = ROOT / "manifests"
PINNED_USES = re.compile(r"^[\w.-]+/[\w./-]+@([0-9a-f]{40}|v\d+\.\d+\.\d+)$")
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]


def _workflow() -> dict[Any, Any]:
    doc = yaml.safe_load(RELEASE.read_text())
    assert isinstance(doc, dict)
    # PyYAML reads the key `on` as True (YAML 1.1); GitHub reads it as "on".
    if True in doc:
        doc["on"] = doc.pop(True)
    return doc


def _steps(job: str) -> list[dict[str, Any]]:
    steps: list[dict[str, Any]] = _workflow()["jobs"][job]["steps"]
    return steps


def _step(job: str, name: str) -> dict[str, Any]:
    (hit,) = [s for s in _steps(job) if s.get("name") == name]
    return hit


def test_workflows_validate_against_the_github_schema() -> None:
    assert RELEASE in WORKFLOWS
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "check_jsonschema",
            "--builtin-schema",
            "vendor.github-workflows",
            *map(str, WORKFLOWS),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_schema_check_rejects_a_broken_workflow(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yml"
    bad.write_text("on: {push: {tags: [v*]}}\njobs:\n  x:\n    runs-on: ubuntu-24.04\n    step: []\n")
    out = subprocess.run(
        [sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.github-workflows", str(bad)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode != 0


def test_every_action_is_pinned() -> None:
    for path in WORKFLOWS:
        doc = yaml.safe_load(path.read_text())
        for job in doc["jobs"].values():
            for step in job.get("steps", []):
                if "uses" in step:
                    assert PINNED_USES.match(step["uses"]), f"{path.name}: {step['uses']} is not pinned"


def test_release_runs_on_version_tags_with_least_privilege() -> None:
    wf = _workflow()
    assert wf["on"] == {"push": {"tags": ["v*"]}}
    assert wf["permissions"] == {"contents": "read"}
    images, install = wf["jobs"]["images"], wf["jobs"]["install-yaml"]
    assert images["permissions"] == {"contents": "read", "packages": "write", "id-token": "write"}
    assert install["permissions"] == {"contents": "write"} and install["needs"] == "images"
    for job in (images, install):
        checkout = next(s for s in job["steps"] if s.get("uses", "").startswith("actions/checkout@"))
        assert checkout["with"]["persist-credentials"] is False


def test_release_builds_every_image_the_manifests_name() -> None:
    wf = _workflow()
    matrix = wf["jobs"]["images"]["strategy"]["matrix"]["include"]
    built = {(m["image"], m["suffix"], m["variant"]) for m in matrix}
    assert built == {("model-locality", "", "cuda"), ("serving", "", "cuda"), ("serving", "-cpu", "cpu")}
    for m in matrix:
        assert (ROOT / m["dockerfile"]).is_file()
    registry = wf["env"]["REGISTRY"] + "/"
    named = {
        c["image"].removeprefix(registry).split(":")[0]
        for where in (MANIFESTS, MANIFESTS / "examples")
        for obj in render(where)
        if obj["kind"] in {"DaemonSet", "Deployment"}
        for c in obj["spec"]["template"]["spec"]["containers"]
        + obj["spec"]["template"]["spec"].get("initContainers", [])
        if c["image"].startswith(registry)
    }
    assert named == {"model-locality", "serving"}


def test_images_are_multi_arch_attested_and_signed() -> None:
    build = next(s for s in _steps("images") if s.get("id") == "build")
    assert build["uses"].startswith("docker/build-push-action@")
    opts = build["with"]
    assert set(opts["platforms"].split(",")) == {"linux/amd64", "linux/arm64"}
    assert opts["push"] is True and opts["sbom"] is True and opts["provenance"] == "mode=max"
    assert opts["build-args"] == "VARIANT=${{ matrix.variant }}"
    assert "${{ steps.version.outputs.version }}${{ matrix.suffix }}" in opts["tags"]
    uses = [s.get("uses", "").split("@")[0] for s in _steps("images")]
    assert uses.index("docker/setup-qemu-action") < uses.index("docker/build-push-action")
    sign = _step("images", "Sign (keyless)")
    assert "cosign sign --yes" in sign["run"] and "@${DIGEST}" in sign["run"], "sign the digest, not a tag"
    assert sign["env"]["DIGEST"] == "${{ steps.build.outputs.digest }}"
    assert uses.index("sigstore/cosign-installer") < _steps("images").index(sign)


def _run_step(script: str, cwd: Path, ref: str) -> subprocess.CompletedProcess[str]:
    output = cwd / "github_output"
    output.touch()
    env = {"PATH": os.environ["PATH"], "GITHUB_REF_NAME": ref, "GITHUB_OUTPUT": str(output), "HOME": str(cwd)}
    return subprocess.run(
        ["bash", "-eo", "pipefail", "-c", script],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_every_shell_step_is_valid_bash() -> None:
    for job in _workflow()["jobs"]:
        for step in _steps(job):
            if "run" in step:
                script = re.sub(r"\$\{\{[^}]*\}\}", "X", step["run"])
                out = subprocess.run(["bash", "-n", "-c", script], capture_output=True, text=True)
                assert out.returncode == 0, f"{job}/{step.get('name')}: {out.stderr}"


def test_version_step_takes_the_tag_and_refuses_a_mismatch(tmp_path: Path) -> None:
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    script = _step("images", "Version from the tag")["run"]
    ok = _run_step(script, tmp_path, f"v{VERSION}")
    assert ok.returncode == 0, ok.stderr
    assert (tmp_path / "github_output").read_text() == f"version={VERSION}\n"
    bad = _run_step(script, tmp_path, "v9.9.9")
    assert bad.returncode == 1 and "does not match" in bad.stdout


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="needs kubectl (kustomize)")
def test_render_step_writes_the_install_yaml(tmp_path: Path) -> None:
    (tmp_path / "manifests").symlink_to(ROOT / "manifests")
    out = _run_step(_step("install-yaml", "Render the install")["run"], tmp_path, f"v{VERSION}")
    assert out.returncode == 0, out.stdout + out.stderr
    dist = tmp_path / "dist"
    install = load_all((dist / "model-locality-install.yaml").read_text())
    kinds = {o["kind"] for o in install}
    assert {"Namespace", "CustomResourceDefinition", "DaemonSet", "Deployment"} <= kinds
    sums = (dist / "SHA256SUMS").read_text()
    for name in (
        "model-locality-install.yaml",
        "model-locality-node-restriction.yaml",
        "model-locality-examples.yaml",
    ):
        assert name in sums
    wrong = _run_step(_step("install-yaml", "Render the install")["run"], tmp_path, "v9.9.9")
    assert wrong.returncode == 1 and "another version" in wrong.stdout, "the install must name this release"
