"""The demo's last words are the install that works: README's, pasted as it stands."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

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
    assert "my-cluster" not in out and "token.txt" not in out, "no overlay or token to make up"


def test_the_install_needs_no_secret_to_make_up() -> None:
    """The base is applied as it stands: no token file, no overlay, no placeholder to replace."""
    assert CLUSTER_INSTALL.splitlines()[-1].startswith("kubectl apply -k manifests/")
    for word in ("token.txt", "secretGenerator", "openssl", "placeholder"):
        assert word not in CLUSTER_INSTALL
