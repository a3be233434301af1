"""constraints.txt (made by scripts/lock.sh) matches pyproject.toml, checked offline.

- every requirement of pyproject (dependencies and every extra) is satisfied by a pinned version;
- the lock is complete: the closure of those requirements, walked through the metadata of the
  installed distributions (markers evaluated here, extras followed), is pinned, and every edge of
  it is satisfied by the pinned versions;
- nothing is pinned that pyproject does not need: a pin outside that closure must come only
  through torch (PyPI's torch is the CUDA build, whose nvidia-*/triton/cuda-* wheels a CPU torch
  lacks, so they cannot be seen offline here);
- the installers use it: scripts/setup.sh and both Dockerfiles pass ``-c constraints.txt``.
"""

from __future__ import annotations

import importlib.metadata
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]
PROJECT = "model-locality"
LINE = re.compile(r"^(?P<name>[A-Za-z0-9._-]+)==(?P<version>\S+)\s*(#\s*via\s+(?P<via>.*))?$")


@dataclass(frozen=True)
class Pin:
    version: Version
    via: frozenset[str]


def read_lock(text: str) -> dict[str, Pin]:
    pins: dict[str, Pin] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        match = LINE.match(line)
        assert match, f"not a `name==version  # via ...` line: {raw!r}"
        name = canonicalize_name(match["name"])
        assert name not in pins, f"{name} pinned twice"
        via = frozenset(v.strip() for v in (match["via"] or "").split(",") if v.strip())
        pins[name] = Pin(Version(match["version"]), via)
    return pins


def project_requirements() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    lines = list(project["dependencies"])
    for extra in project.get("optional-dependencies", {}).values():
        lines += extra
    return [Requirement(line) for line in lines]


def active(req: Requirement, extras: frozenset[str]) -> bool:
    return req.marker is None or any(req.marker.evaluate({"extra": e}) for e in {"", *extras})


def closure(roots: list[Requirement]) -> tuple[dict[str, set[str]], list[tuple[str, Requirement]]]:
    """Installed distributions needed by ``roots`` (name -> extras asked) and every edge walked."""
    needed: dict[str, set[str]] = {}
    edges: list[tuple[str, Requirement]] = [(PROJECT, r) for r in roots if active(r, frozenset())]
    todo = list(edges)
    while todo:
        _parent, req = todo.pop()
        name = canonicalize_name(req.name)
        new = set(req.extras) - needed.get(name, set())
        if name in needed and not new:
            continue
        needed.setdefault(name, set()).update(new)
        dist = importlib.metadata.distribution(name)
        for line in dist.requires or []:
            child = Requirement(line)
            if active(child, frozenset(needed[name])):
                edges.append((name, child))
                todo.append((name, child))
    return needed, edges


LOCK = read_lock((ROOT / "constraints.txt").read_text())


def test_every_pyproject_requirement_is_satisfied_by_a_pin() -> None:
    for req in project_requirements():
        pin = LOCK.get(canonicalize_name(req.name))
        assert pin is not None, f"{req} is not pinned: run scripts/lock.sh"
        assert req.specifier.contains(pin.version, prereleases=True), f"{req} excludes the pin {pin.version}"


def test_the_lock_is_complete_and_consistent() -> None:
    needed, edges = closure(project_requirements())
    missing = sorted(set(needed) - set(LOCK))
    assert not missing, f"needed but not pinned: {missing}; run scripts/lock.sh"
    for parent, req in edges:
        pin = LOCK[canonicalize_name(req.name)]
        assert req.specifier.contains(pin.version, prereleases=True), (
            f"{parent} needs {req}, the lock pins {pin.version}"
        )


def test_nothing_is_pinned_that_pyproject_does_not_need() -> None:
    needed, _ = closure(project_requirements())
    extra = {name: pin for name, pin in LOCK.items() if name not in needed}
    cuda_only = {"torch", *extra}  # reached only through PyPI's (CUDA) torch build
    unexplained = sorted(name for name, pin in extra.items() if not pin.via or not pin.via <= cuda_only)
    assert not unexplained, f"pinned but not needed by pyproject: {unexplained}; run scripts/lock.sh"


def test_every_via_names_a_pin_or_the_project() -> None:
    for name, pin in LOCK.items():
        assert pin.via, f"{name} has no `# via`"
        assert pin.via <= {*LOCK, PROJECT}, f"{name} via {sorted(pin.via - {*LOCK, PROJECT})}"


def test_torch_stays_at_the_tested_release() -> None:
    assert LOCK["torch"].version == Version("2.13.0")


@pytest.mark.parametrize("path", ["scripts/setup.sh", "docker/agent.Dockerfile", "docker/serving.Dockerfile"])
def test_installers_use_the_lock(path: str) -> None:
    text = (ROOT / path).read_text()
    installs = [
        line for line in text.splitlines() if re.search(r"pip(_install| install| wheel)\b.*-r |-e ", line)
    ]
    assert installs, f"{path}: no pip install of requirements found"
    for line in installs:
        assert "constraints.txt" in line, f"{path}: installs without the lock: {line.strip()}"


@pytest.mark.parametrize(
    ("name", "text", "problem"),
    [
        ("two pins of one package", "a==1  # via b\nA==2  # via b\n", "pinned twice"),
        ("a range is not a pin", "a>=1\n", "not a `name==version"),
    ],
)
def test_the_reader_refuses_a_malformed_lock(name: str, text: str, problem: str) -> None:
    with pytest.raises(AssertionError, match=problem):
        read_lock(text)
