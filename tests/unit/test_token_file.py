"""Bearer token files: read and trimmed; empty and placeholder tokens refused (fail closed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from locality.settings import read_token_file

ROOT = Path(__file__).resolve().parents[2]


def test_token_is_read_and_trimmed(tmp_path: Path) -> None:
    (tmp_path / "t").write_text("  s3cr3t\n")
    assert read_token_file(tmp_path / "t") == "s3cr3t"


def test_no_file_configured_means_no_token() -> None:
    assert read_token_file(None) is None


@pytest.mark.parametrize("content", ["", "\n  \n"], ids=["empty", "blank"])
def test_empty_token_refused(tmp_path: Path, content: str) -> None:
    (tmp_path / "t").write_text(content)
    with pytest.raises(ValueError, match="empty"):
        read_token_file(tmp_path / "t")


def test_the_old_manifests_placeholder_is_refused(tmp_path: Path) -> None:
    """Earlier bases shipped this placeholder Secret; an install that kept it must not serve with it."""
    assert "CHANGE-ME" not in (ROOT / "manifests" / "kustomization.yaml").read_text()
    (tmp_path / "t").write_text("CHANGE-ME-placeholder-token-replace-before-use")
    with pytest.raises(ValueError, match="placeholder"):
        read_token_file(tmp_path / "t")
