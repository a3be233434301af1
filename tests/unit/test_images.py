"""The images and the install as a platform team adopts them.

- Dockerfiles, parsed: pinned bases, a numeric non-root USER, dependencies installed in their own
  layer from pyproject.toml + constraints.txt before any source is copied, pip cache mounts, one
  CUDA in the serving image and a CPU variant; every COPY survives .dockerignore.
- docker/requirements.py (what the dependency layer installs) and scripts/build-images.sh.
- The rendered install: byte-identical when rendered twice, and every field the API server would
  default inside an atomic list written out (else each `kubectl apply` re-sends the list and
  reports "configured"). tests/integration/test_install_reapply.py applies it twice for real.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.kustomize import Obj, load_all

ROOT = Path(__file__).resolve().parents[2]
MANIFESTS = ROOT / "manifests"
DOCKERFILES = {
    "agent": ROOT / "docker" / "agent.Dockerfile",
    "serving": ROOT / "docker" / "serving.Dockerfile",
}
BUILD_SCRIPT = ROOT / "scripts" / "build-images.sh"
# What the dependency layer may see: nothing else, or a source edit would reinstall torch.
DEPENDENCY_INPUTS = {"pyproject.toml", "constraints.txt", "docker/requirements.py"}
PINNED_TAG = re.compile(r"^[^@]+:[A-Za-z0-9_.-]*\d+\.\d+\.\d+[A-Za-z0-9_.-]*$")
PINNED_DIGEST = re.compile(r"^[^@]+@sha256:[0-9a-f]{64}$")
UID_UID = re.compile(r"^(\d+)(:(\d+))?$")
PIP_CACHE = "--mount=type=cache,target=/root/.cache/pip"


# ---------------------------------------------------------------- a small Dockerfile parser


@dataclass(frozen=True)
class Instruction:
    keyword: str  # upper case
    args: str
    line: int


@dataclass(frozen=True)
class Stage:
    base: str
    name: str | None
    instructions: tuple[Instruction, ...]


def parse(text: str) -> list[Stage]:
    """Stages of a Dockerfile: comments dropped, continuation lines joined (no heredocs here)."""
    joined: list[tuple[int, str]] = []
    pending: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue  # a comment inside a continued instruction
        if not pending:
            start = number
        if line.endswith("\\"):
            pending.append(line[:-1].strip())
            continue
        pending.append(line)
        joined.append((start, " ".join(p for p in pending if p)))
        pending = []
    assert not pending, "the file ends inside a continued instruction"
    stages: list[tuple[str, str | None, list[Instruction]]] = []
    for number, line in joined:
        keyword, _, args = line.partition(" ")
        ins = Instruction(keyword.upper(), args.strip(), number)
        if ins.keyword == "FROM":
            words = ins.args.split()
            words = [w for w in words if not w.startswith("--platform")]
            name = words[2] if len(words) == 3 and words[1].lower() == "as" else None
            stages.append((words[0], name, []))
        else:
            assert stages or ins.keyword == "ARG", f"{ins.keyword} before the first FROM"
            if stages:
                stages[-1][2].append(ins)
    return [Stage(base, name, tuple(ins)) for base, name, ins in stages]


def copy_sources(ins: Instruction) -> list[str]:
    """The context paths of a COPY without --from (flags dropped, destination dropped)."""
    if ins.keyword != "COPY" or "--from=" in ins.args:
        return []
    words = [w for w in ins.args.split() if not w.startswith("--")]
    return [w.rstrip("/") for w in words[:-1]]


def bind_from(ins: Instruction) -> set[str]:
    return set(re.findall(r"--mount=type=bind,from=([\w.-]+)", ins.args))


def installs_dependencies(ins: Instruction) -> bool:
    """A pip step that installs or builds wheels of requirements (not the project itself)."""
    return ins.keyword == "RUN" and "pip " in ins.args and " -r " in ins.args


def layering_problems(stages: list[Stage]) -> list[str]:
    """Why a source edit would re-run the dependency install; empty when it would not."""
    problems: list[str] = []
    dep_stages = [s for s in stages if any(installs_dependencies(i) for i in s.instructions)]
    if not dep_stages:
        return ["no step installs the dependencies from a requirements list (-r)"]
    for stage in dep_stages:
        first_install = next(i for i in stage.instructions if installs_dependencies(i))
        for ins in stage.instructions:
            if ins.line > first_install.line:
                break
            extra = set(copy_sources(ins)) - DEPENDENCY_INPUTS
            if extra:
                problems.append(f"line {ins.line}: {sorted(extra)} copied before the dependencies install")
            mounted = bind_from(ins)
            if mounted & {s.name for s in stages if s.name and s not in dep_stages}:
                problems.append(f"line {ins.line}: the dependency install mounts a stage with sources")
    runtime = stages[-1]
    dep_names = {s.name for s in dep_stages}
    order = [("deps" if bind_from(i) & dep_names else "other", i.line) for i in runtime.instructions]
    dep_lines = [line for kind, line in order if kind == "deps"]
    wheel_lines = [i.line for i in runtime.instructions if i.keyword == "RUN" and bind_from(i) - dep_names]
    if runtime not in dep_stages and not dep_lines:
        problems.append("the runtime stage never installs the dependency wheels")
    if dep_lines and wheel_lines and min(wheel_lines) < max(dep_lines):
        problems.append("the runtime stage installs the project before its dependencies")
    for ins in runtime.instructions:
        if copy_sources(ins):
            problems.append(f"line {ins.line}: the runtime stage copies sources {copy_sources(ins)}")
    return problems


@pytest.fixture(scope="module", params=list(DOCKERFILES), ids=list(DOCKERFILES))
def dockerfile(request: pytest.FixtureRequest) -> tuple[str, list[Stage]]:
    name = request.param
    return name, parse(DOCKERFILES[name].read_text())


# ---------------------------------------------------------------- Dockerfiles


def test_base_images_are_pinned_and_shared(dockerfile: tuple[str, list[Stage]]) -> None:
    _, stages = dockerfile
    names = {s.name for s in stages if s.name}
    bases = {s.base for s in stages if s.base not in names}
    for base in bases:
        assert PINNED_DIGEST.match(base) or PINNED_TAG.match(base), f"{base}: not an exact tag or digest"
        assert not base.endswith(":latest")
    assert len(bases) == 1, f"one base for every stage, not {sorted(bases)}"


def test_runtime_runs_as_numeric_non_root(dockerfile: tuple[str, list[Stage]]) -> None:
    _, stages = dockerfile
    users = [i.args for i in stages[-1].instructions if i.keyword == "USER"]
    assert users, "the runtime stage must set USER"
    match = UID_UID.match(users[-1])
    assert match, f"USER {users[-1]!r}: numeric uid[:gid] (runAsNonRoot can only check numbers)"
    assert int(match[1]) == 10001 and match[3] in (None, "10001"), "the manifests run uid/gid 10001"
    cmd = [i for i in stages[-1].instructions if i.keyword == "CMD"]
    assert cmd and cmd[-1].args.startswith("["), "exec-form CMD (signals reach the process)"


def test_dependencies_are_installed_before_the_sources_are_copied(
    dockerfile: tuple[str, list[Stage]],
) -> None:
    _, stages = dockerfile
    assert layering_problems(stages) == []


def test_layering_check_catches_sources_before_dependencies() -> None:
    """The check fails on the old shape: sources copied, then one install of everything."""
    old = parse(
        "FROM python:3.11.11-slim-bookworm AS builder\n"
        "COPY pyproject.toml README.md ./\nCOPY agent ./agent\n"
        "RUN pip wheel --wheel-dir /wheels -r requirements.txt .\n"
        "FROM python:3.11.11-slim-bookworm\n"
        "RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels pip install /wheels/*.whl\n"
        "USER 10001:10001\n"
    )
    problems = layering_problems(old)
    assert any("README.md" in p for p in problems) and any("'agent'" in p for p in problems), problems
    assert layering_problems(parse("FROM python:3.11.11-slim-bookworm\nRUN pip install .\n")) == [
        "no step installs the dependencies from a requirements list (-r)"
    ]


def test_pip_steps_use_a_cache_mount(dockerfile: tuple[str, list[Stage]]) -> None:
    _, stages = dockerfile
    for stage in stages[:-1]:
        for ins in stage.instructions:
            if ins.keyword == "RUN" and "pip wheel" in ins.args:
                assert PIP_CACHE in ins.args, f"line {ins.line}: pip wheel without the pip cache mount"
    for ins in stages[-1].instructions:
        if ins.keyword == "RUN" and "pip install" in ins.args:
            assert "--no-index" in ins.args, f"line {ins.line}: the runtime installs only built wheels"


def test_every_package_of_the_project_is_in_the_image(dockerfile: tuple[str, list[Stage]]) -> None:
    """The project wheel holds every package pyproject.toml ships (issue 11 added `locality`)."""
    _, stages = dockerfile
    include = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    packages = {p.rstrip("*") for p in include["include"]}
    copied = {src for s in stages for i in s.instructions for src in copy_sources(i)}
    assert packages <= copied, f"not copied: {sorted(packages - copied)}"
    assert "README.md" in copied, "pyproject.toml's readme is needed to build the wheel"


def _kept_by_dockerignore(path: str) -> bool:
    """.dockerignore here is `*` then `!path` exceptions: a path is sent if it or a parent is kept."""
    kept = {
        line[1:].rstrip("/")
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.startswith("!")
    }
    parts = Path(path).parts
    return any("/".join(parts[:n]) in kept for n in range(1, len(parts) + 1))


def test_copied_paths_exist_and_reach_the_build_context(dockerfile: tuple[str, list[Stage]]) -> None:
    _, stages = dockerfile
    for stage in stages:
        for ins in stage.instructions:
            for src in copy_sources(ins):
                assert (ROOT / src).exists(), f"line {ins.line}: COPY of missing {src}"
                assert _kept_by_dockerignore(src), f"line {ins.line}: {src} is excluded by .dockerignore"
    assert not _kept_by_dockerignore("tests/unit"), "the matcher must be able to say no"


def test_serving_image_has_one_cuda_and_a_cpu_variant() -> None:
    text = DOCKERFILES["serving"].read_text()
    stages = parse(text)
    assert not any("nvidia/cuda" in s.base for s in stages), "torch's wheels bring CUDA; no CUDA base"
    assert "uv python install" not in text, "the base has Python; nothing downloads a CPython"
    deps = next(s for s in stages if any(installs_dependencies(i) for i in s.instructions))
    args = {i.args.split("=")[0]: i.args for i in deps.instructions if i.keyword == "ARG"}
    assert args.get("VARIANT") == "VARIANT=cuda", "CUDA by default, VARIANT=cpu for CPU-only clusters"
    install = next(i for i in deps.instructions if installs_dependencies(i))
    assert "cpu)" in install.args and "download.pytorch.org/whl/cpu" in install.args
    assert "python docker/requirements.py serving" in install.args
    env = " ".join(i.args for i in stages[-1].instructions if i.keyword == "ENV")
    assert "NVIDIA_VISIBLE_DEVICES=all" in env, "the container toolkit injects the node's driver"


# ---------------------------------------------------------------- docker/requirements.py


def _requirements(*extras: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(ROOT / "docker" / "requirements.py"), *extras],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_requirements_script_lists_pyproject_dependencies() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    base = _requirements()
    assert base.returncode == 0 and base.stdout.splitlines() == project["dependencies"]
    serving = _requirements("serving")
    wanted = project["dependencies"] + project["optional-dependencies"]["serving"]
    assert serving.returncode == 0 and serving.stdout.splitlines() == wanted
    assert any(line.startswith("torch") for line in serving.stdout.splitlines())


def test_requirements_script_refuses_an_unknown_extra() -> None:
    out = _requirements("gpu")
    assert out.returncode != 0 and "no extra 'gpu'" in out.stderr
    assert "Traceback" not in out.stderr


# ---------------------------------------------------------------- scripts/build-images.sh


def _fake_tool(bin_dir: Path, name: str, script: str) -> None:
    path = bin_dir / name
    path.write_text("#!/bin/sh\n" + script)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


SCRIPT_TOOLS = ("sed", "head", "dirname")  # the commands build-images.sh runs besides the builders


def _script_tools(bin_dir: Path) -> Path:
    """A directory with links to just the tools the script needs: a PATH of our own, so that a real
    ``docker`` or ``buildah`` on the host (often beside ``sed`` in /usr/bin) is never found."""
    tools = bin_dir / "script-tools"  # a sub-directory: not searched through bin_dir's PATH entry
    tools.mkdir(exist_ok=True)
    for name in SCRIPT_TOOLS:
        found = shutil.which(name)
        assert found, f"{name} is not installed"
        if not (tools / name).exists():
            (tools / name).symlink_to(found)
    return tools


def _build(args: list[str], bin_dir: Path, **env: str) -> subprocess.CompletedProcess[str]:
    bash = shutil.which("bash")
    assert bash
    tools = _script_tools(bin_dir)
    return subprocess.run(
        [bash, str(BUILD_SCRIPT), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": f"{bin_dir}{os.pathsep}{tools}", "HOME": str(bin_dir), **env},
    )


def test_build_script_is_valid_bash() -> None:
    assert subprocess.run(["bash", "-n", str(BUILD_SCRIPT)], capture_output=True).returncode == 0


def test_build_script_prefers_docker_buildx(tmp_path: Path) -> None:
    _fake_tool(
        tmp_path, "docker", '[ "$1 $2" = "buildx version" ] && echo "buildx v0.19 (test)" && exit 0\nexit 1\n'
    )
    _fake_tool(tmp_path, "buildah", 'echo "buildah 1.38 (test)"\n')
    out = _build(["--dry-run"], tmp_path)
    assert out.returncode == 0, out.stderr
    assert "using docker buildx (buildx v0.19 (test))" in out.stderr
    commands = [line for line in out.stdout.splitlines() if line.startswith("+ ")]
    assert len(commands) == 2
    assert (
        "docker buildx build -f docker/agent.Dockerfile -t ghcr.io/model-locality/model-locality:0.1.0"
        in (commands[0])
    )
    assert "--build-arg VARIANT=cuda" in commands[1] and "serving:0.1.0 " in commands[1]
    assert all("--load" in c for c in commands)


def test_build_script_falls_back_to_buildah_and_builds_the_cpu_variant(tmp_path: Path) -> None:
    _fake_tool(tmp_path, "buildah", 'echo "buildah version 1.38 (test)"\n')
    out = _build(["--dry-run", "--variant", "cpu", "--tag", "dev", "serving"], tmp_path)
    assert out.returncode == 0, out.stderr
    assert "using buildah" in out.stderr
    (command,) = [line for line in out.stdout.splitlines() if line.startswith("+ ")]
    assert command.startswith("+ buildah build --layers -f docker/serving.Dockerfile")
    assert "-t ghcr.io/model-locality/serving:dev-cpu" in command and "VARIANT=cpu" in command


@pytest.mark.parametrize(
    ("args", "message"),
    [
        pytest.param(["--dry-run"], "neither 'docker buildx' nor 'buildah' is installed", id="no-builder"),
        pytest.param(["--variant", "gpu"], "--variant must be cpu or cuda", id="bad-variant"),
        pytest.param(["web"], "unknown argument 'web'", id="bad-image"),
        pytest.param(["--platform", "linux/amd64,linux/arm64"], "one --platform at a time", id="multi-arch"),
    ],
)
def test_build_script_refuses_with_one_line(tmp_path: Path, args: list[str], message: str) -> None:
    out = _build(args, tmp_path)
    assert out.returncode == 2
    assert message in out.stderr and len(out.stderr.strip().splitlines()) == 1, out.stderr


# ---------------------------------------------------------------- the rendered install


def _overlay(tmp: Path, components: list[str]) -> Path:
    rel = os.path.relpath(MANIFESTS, tmp)
    comps = ", ".join(f"{rel}/components/{c}" for c in components)
    (tmp / "kustomization.yaml").write_text(f"resources: [{rel}, {rel}/examples]\ncomponents: [{comps}]\n")
    return tmp


def _kustomize(path: Path) -> str:
    kubectl = shutil.which("kubectl")
    assert kubectl
    out = subprocess.run([kubectl, "kustomize", str(path)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout


needs_kubectl = pytest.mark.skipif(shutil.which("kubectl") is None, reason="needs kubectl (kustomize)")


@needs_kubectl
def test_install_renders_identically_twice(tmp_path: Path) -> None:
    overlay = _overlay(tmp_path, ["node-restriction", "hostport-snat", "servicemonitor"])
    for path in (MANIFESTS, overlay):
        first, second = _kustomize(path), _kustomize(path)
        assert first == second and first.strip()
    assert not re.search(r"^\s*creationTimestamp:", _kustomize(overlay), re.M), "no generated metadata"


def _atomic_default_gaps(obj: Obj) -> list[str]:
    """Server-defaulted fields inside atomic lists (no merge key) that the object leaves out."""
    gaps: list[str] = []
    kind, spec = obj["kind"], obj.get("spec", {})
    name = f"{kind}/{obj['metadata']['name']}"
    rule_lists: list[tuple[str, list[Any]]] = []
    if kind in {"ValidatingAdmissionPolicy", "MutatingAdmissionPolicy"}:
        rule_lists.append(("matchConstraints.resourceRules", spec["matchConstraints"]["resourceRules"]))
        for key in ("matchPolicy", "namespaceSelector", "objectSelector"):
            if key not in spec["matchConstraints"]:
                gaps.append(f"{name}: matchConstraints.{key}")
    if kind in {"ValidatingWebhookConfiguration", "MutatingWebhookConfiguration"}:
        for hook in obj.get("webhooks", []):
            rule_lists.append((f"webhooks[{hook['name']}].rules", hook.get("rules", [])))
    for where, rules in rule_lists:
        gaps.extend(f"{name}: {where}[{i}].scope" for i, r in enumerate(rules) if "scope" not in r)
    if kind == "NetworkPolicy":
        for direction in ("ingress", "egress"):
            for i, rule in enumerate(spec.get(direction, [])):
                for j, port in enumerate(rule.get("ports", [])):
                    if "protocol" not in port:
                        gaps.append(f"{name}: {direction}[{i}].ports[{j}].protocol")
    return gaps


@needs_kubectl
def test_server_defaults_in_atomic_lists_are_written(tmp_path: Path) -> None:
    objs = load_all(_kustomize(_overlay(tmp_path, ["node-restriction", "hostport-snat"])))
    assert {"ValidatingAdmissionPolicy", "NetworkPolicy"} <= {o["kind"] for o in objs}
    assert [gap for o in objs for gap in _atomic_default_gaps(o)] == []
    vap = next(o for o in objs if o["kind"] == "ValidatingAdmissionPolicy")
    assert all(r["scope"] == "*" for r in vap["spec"]["matchConstraints"]["resourceRules"])
    bare = {"kind": "ValidatingAdmissionPolicy", "metadata": {"name": "p"}, "spec": {}}
    bare["spec"]["matchConstraints"] = {"resourceRules": [{"resources": ["nodes"]}]}
    assert len(_atomic_default_gaps(bare)) == 4, "the check must see what the server would add"


@needs_kubectl
def test_hostport_snat_component_admits_the_overlays_node_cidr(tmp_path: Path) -> None:
    def agent_peers(text: str) -> list[Obj]:
        policy = next(
            o
            for o in load_all(text)
            if o["kind"] == "NetworkPolicy" and o["metadata"]["name"] == "model-locality-agent"
        )
        peers: list[Obj] = policy["spec"]["ingress"][0]["from"]
        return peers

    base_peers = agent_peers(_kustomize(MANIFESTS))
    assert not any("ipBlock" in p for p in base_peers), "the base admits no address range"
    alone = agent_peers(_kustomize(_overlay(tmp_path, ["hostport-snat"])))
    assert alone[0] == {"ipBlock": {"cidr": "192.0.2.0/24"}} and alone[1:] == base_peers
    knob = tmp_path / "knob"
    knob.mkdir()
    rel = os.path.relpath(MANIFESTS, knob)
    (knob / "kustomization.yaml").write_text(
        f"resources: [{rel}]\ncomponents: [{rel}/components/hostport-snat]\n"
        "patches:\n  - target: {kind: NetworkPolicy, name: model-locality-agent}\n"
        "    patch: |-\n"
        "      - {op: replace, path: /spec/ingress/0/from/0/ipBlock/cidr, value: 10.244.0.1/32}\n"
    )
    tuned = agent_peers(_kustomize(knob))
    assert tuned[0] == {"ipBlock": {"cidr": "10.244.0.1/32"}} and tuned[1:] == base_peers
