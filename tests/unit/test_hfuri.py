"""hf:// URIs: normalisation, identity (revision and globs are part of it), and refusals."""

from __future__ import annotations

import pytest

from locality.hfuri import parse_hf
from locality.identity import InvalidURI, model_ref


@pytest.mark.parametrize(
    ("uri", "normalized"),
    [
        pytest.param("hf://Org/Repo", "hf://Org/Repo", id="plain"),
        pytest.param("hf://org/repo/", "hf://org/repo", id="trailing-slash"),
        pytest.param("hf://org/repo@main", "hf://org/repo@main", id="branch"),
        pytest.param("hf://org/repo@refs/pr/1", "hf://org/repo@refs/pr/1", id="pr-ref"),
        pytest.param(
            "hf://org/repo?include=config.json,*.safetensors&include=config.json",
            "hf://org/repo?include=*.safetensors,config.json",
            id="globs-sorted-deduplicated",
        ),
        pytest.param(
            "hf://org/repo@v1?exclude=*.bin&include=*.json",
            "hf://org/repo@v1?include=*.json&exclude=*.bin",
            id="include-before-exclude",
        ),
    ],
)
def test_normalized(uri: str, normalized: str) -> None:
    ref = model_ref(uri)
    assert ref.uri == normalized and ref.scheme == "hf"
    assert model_ref(normalized).id == ref.id
    assert ref.label_key.startswith("model-locality.io/repo.")


def test_revision_and_globs_are_identity() -> None:
    ids = {
        model_ref(u).id
        for u in ("hf://o/r", "hf://o/r@main", "hf://o/r?include=*.json", "hf://o/r?exclude=*.json")
    }
    assert len(ids) == 4
    got = parse_hf(
        model_ref("hf://o/r@abc?include=b,a").authority, model_ref("hf://o/r@abc?include=b,a").path
    )
    assert (got.repo_id, got.revision, got.include, got.exclude) == ("o/r", "abc", ("a", "b"), ())


@pytest.mark.parametrize(
    ("uri", "why"),
    [
        pytest.param("hf://org", "invalid Hugging Face repo", id="no-repo"),
        pytest.param("hf://org/a/b", "invalid Hugging Face repo", id="nested"),
        pytest.param("hf://-org/repo", "invalid Hugging Face org", id="bad-org"),
        pytest.param("hf://org/repo@", "invalid Hugging Face revision", id="empty-revision"),
        pytest.param("hf://org/repo@a/../b", "invalid Hugging Face revision", id="dotdot-revision"),
        pytest.param("hf://org/repo?token=x", "only include= and exclude=", id="unknown-param"),
        pytest.param("hf://org/repo?include=", "invalid include glob", id="empty-glob"),
        pytest.param("hf://org/repo?include=a%20b", "invalid include glob", id="space-glob"),
    ],
)
def test_refused(uri: str, why: str) -> None:
    with pytest.raises(InvalidURI, match=why):
        model_ref(uri)
