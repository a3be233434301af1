"""The layers are a test: import-linter's contracts in ``.importlinter`` hold on our code, and a
planted violation of each kind of contract is caught (the checker is not blind).

The contracts: the services never import each other and the shared kernel imports none of them;
one door per outside system (``kubernetes``, ``boto3``/``botocore``, ``huggingface_hub``); the
agent's rooms are layered (cli > face > cluster > lifecycle > fetch > store: the store never
imports the fetch path); pure cores reach no I/O, not even through another module; no import
cycles between sibling modules or packages, ``if TYPE_CHECKING:`` imports included.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / ".importlinter"
PACKAGES = ("locality", "agent", "scheduler_extender", "serving", "fleetview")
LINT = Path(sys.executable).with_name("lint-imports")


def lint(root: Path) -> subprocess.CompletedProcess[str]:
    """Run lint-imports over the packages under ``root`` with our contracts (no cache: fresh graph)."""
    return subprocess.run(
        [str(LINT), str(CONFIG), "--no-cache"],
        cwd=root,
        env={"PYTHONPATH": str(root), "PATH": str(LINT.parent)},
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )


def test_our_code_keeps_every_contract() -> None:
    run = lint(ROOT)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    assert "BROKEN" not in run.stdout
    assert run.stdout.count(" KEPT") >= 8, run.stdout  # every contract was checked, none skipped


@pytest.fixture(scope="module")
def copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tree")
    for pkg in PACKAGES:
        shutil.copytree(ROOT / pkg, root / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    return root


PLANTED = [
    ("store imports the fetch path", "agent/store/durable.py", "import agent.fetch.run\n", "layered"),
    ("a service imports another", "serving/naming.py", "import agent.config\n", "never import each other"),
    ("the kernel imports a service", "locality/units.py", "import scheduler_extender.wire\n", "kernel"),
    ("a second kubernetes door", "agent/config.py", "import kubernetes\n", "Only locality.kube"),
    ("boto3 outside the S3 source", "agent/fetch/run.py", "import boto3\n", "boto3 and botocore"),
    ("a core does I/O", "locality/identity.py", "import os\n", "Pure cores"),
    ("a core reaches I/O via another", "agent/store/eviction.py", "import agent.store.lock\n", "Pure cores"),
    (
        "a cycle hidden behind TYPE_CHECKING",
        "locality/kube.py",
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import locality.informer\n",
        "No import cycles",
    ),
]


@pytest.mark.parametrize(("name", "path", "line", "contract"), PLANTED, ids=[p[0] for p in PLANTED])
def test_a_planted_violation_breaks_its_contract(
    copy: Path, name: str, path: str, line: str, contract: str
) -> None:
    target = copy / path
    original = target.read_text()
    # after ``from __future__``: the planted import must be a real module-level import
    head, sep, rest = original.partition("from __future__ import annotations\n")
    target.write_text(head + sep + line + rest if sep else line + original)
    try:
        run = lint(copy)
    finally:
        target.write_text(original)
    assert run.returncode != 0, f"{name}: not caught\n{run.stdout[-3000:]}"
    broken = run.stdout.split("Broken contracts", 1)[-1]
    assert contract in broken, f"{name}: broke something else\n{run.stdout[-3000:]}"
