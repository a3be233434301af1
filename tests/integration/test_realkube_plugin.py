"""The real-kube plugin's guard: with ``MODEL_LOCALITY_REQUIRE_KUBE=1`` a skipped real-kube test
fails the run (CI must not pass while skipping them); without it the same test only skips. Runs a
pytest of its own over a generated test file, with no kit (``KUBEBUILDER_ASSETS`` empty)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TESTS = """
import pytest

def test_uses_real_kube(real_kube):
    pass

@pytest.mark.realkube
def test_marked_and_skips():
    pytest.skip("no kubectl")

@pytest.mark.realkube
@pytest.mark.xfail(reason="known")
def test_marked_and_xfails():
    assert False

def test_other_skip():
    pytest.skip("not about kube")
"""


def _run(tmp_path: Path, require: str) -> tuple[int, dict[str, int], str]:
    (tmp_path / "test_generated.py").write_text(TESTS)
    env = {
        **os.environ,
        "KUBEBUILDER_ASSETS": "",
        "MODEL_LOCALITY_REQUIRE_KUBE": require,
        "PYTHONPATH": str(ROOT),
    }
    args = ["-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "tests.fixtures.realkube_plugin"]
    args += ["--rootdir", str(tmp_path), "-c", os.devnull, str(tmp_path)]
    done = subprocess.run(
        [sys.executable, *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    summary = done.stdout.strip().splitlines()[-1]
    counts = {word: int(n) for n, word in re.findall(r"(\d+) (\w+)", summary)}
    return done.returncode, counts, done.stdout


@pytest.mark.parametrize(
    ("require", "code", "counts"),
    [
        pytest.param("1", 1, {"failed": 1, "error": 1, "skipped": 1, "xfailed": 1}, id="required-fails"),
        pytest.param("", 0, {"skipped": 3, "xfailed": 1}, id="not-required-skips"),
        pytest.param("0", 0, {"skipped": 3, "xfailed": 1}, id="zero-skips"),
    ],
)
def test_a_skipped_real_kube_test_fails_only_when_required(
    tmp_path: Path, require: str, code: int, counts: dict[str, int]
) -> None:
    returncode, seen, out = _run(tmp_path, require)
    assert (returncode, seen) == (code, counts), out
    if require == "1":
        # once per test in its section (and again in the short summary, untruncated under CI=true)
        for section in ("ERROR at setup of test_uses_real_kube", "_ test_marked_and_skips _"):
            after = out.split(section, 1)[1].lstrip("_ \n")
            assert after.startswith("MODEL_LOCALITY_REQUIRE_KUBE=1 but this real-kube test skipped"), out
