"""The demo's last words are the install that works: README's token overlay, not the bare base."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import yaml

from agent.cli.demo import CLUSTER_INSTALL, URI, _summary

ROOT = Path(__file__).resolve().parents[2]


def readme_install() -> str:
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Install on a cluster") :]
    match = re.search(r"```sh\n(.*?)\n```", section, re.S)
    assert match, "README has no install block"
    return match.group(1)


def test_the_demo_prints_the_readme_install(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert readme_install() == CLUSTER_INSTALL
    _summary(tmp_path, "http://a", "http://s", "label", "/m")
    out = capsys.readouterr().out
    assert CLUSTER_INSTALL in out and URI in out
    assert "kubectl apply -k manifests/" not in out


def test_the_overlay_it_writes_replaces_the_placeholder_token(tmp_path: Path) -> None:
    """Run the block's shell lines up to kubectl; the overlay points at the base and brings a token."""
    shell = CLUSTER_INSTALL.split("\nkubectl", 1)[0]
    subprocess.run(["bash", "-euc", shell], cwd=tmp_path, check=True, timeout=30)
    overlay = yaml.safe_load((tmp_path / "my-cluster" / "kustomization.yaml").read_text())
    assert overlay["resources"] == ["../manifests"]
    [secret] = overlay["secretGenerator"]
    assert (secret["name"], secret["behavior"], secret["files"]) == (
        "model-locality-token",
        "replace",
        ["token=token.txt"],
    )
    assert len((tmp_path / "my-cluster" / "token.txt").read_text().strip()) == 64
