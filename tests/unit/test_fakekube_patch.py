"""Patch formats of the fake API server: merge, strategic merge, JSON patch."""

from __future__ import annotations

from typing import Any

import pytest

from tests.fixtures.fakekube.patch import JSON_PATCH, MERGE, STRATEGIC, PatchError, apply_patch

BASE: dict[str, Any] = {"metadata": {"labels": {"a": "1", "b": "2"}}, "spec": {"list": [1, 2]}}


@pytest.mark.parametrize("content_type", [MERGE, STRATEGIC])
@pytest.mark.parametrize(
    ("patch", "expected"),
    [
        pytest.param({"metadata": {"labels": {"c": "3"}}}, {"a": "1", "b": "2", "c": "3"}, id="add-label"),
        pytest.param({"metadata": {"labels": {"a": None}}}, {"b": "2"}, id="null-removes"),
        pytest.param({"metadata": {"labels": {"a": "9"}}}, {"a": "9", "b": "2"}, id="replace"),
        pytest.param({"metadata": {"labels": None}}, None, id="null-map-removes-map"),
    ],
)
def test_merge_patches_on_labels(content_type: str, patch: dict[str, Any], expected: Any) -> None:
    result = apply_patch(content_type, BASE, patch)
    assert result["metadata"].get("labels") == expected
    assert result["spec"] == BASE["spec"]
    assert BASE["metadata"]["labels"] == {"a": "1", "b": "2"}  # input untouched


def test_merge_patch_replaces_lists_whole() -> None:
    assert apply_patch(MERGE, BASE, {"spec": {"list": [3]}})["spec"]["list"] == [3]


def test_strategic_merge_refuses_directives() -> None:
    with pytest.raises(PatchError):
        apply_patch(STRATEGIC, BASE, {"metadata": {"labels": {"$patch": "replace"}}})


@pytest.mark.parametrize(
    ("ops", "expected_labels"),
    [
        pytest.param(
            [{"op": "add", "path": "/metadata/labels/c", "value": "3"}],
            {"a": "1", "b": "2", "c": "3"},
            id="add",
        ),
        pytest.param([{"op": "remove", "path": "/metadata/labels/a"}], {"b": "2"}, id="remove"),
        pytest.param(
            [{"op": "replace", "path": "/metadata/labels/a", "value": "x"}],
            {"a": "x", "b": "2"},
            id="replace",
        ),
        pytest.param(
            [{"op": "add", "path": "/metadata/labels/x~1y", "value": "z"}],
            {"a": "1", "b": "2", "x/y": "z"},
            id="escaped-slash",
        ),
        pytest.param(
            [{"op": "test", "path": "/metadata/labels/a", "value": "1"}],
            {"a": "1", "b": "2"},
            id="test-passes",
        ),
    ],
)
def test_json_patch(ops: list[dict[str, Any]], expected_labels: dict[str, str]) -> None:
    assert apply_patch(JSON_PATCH, BASE, ops)["metadata"]["labels"] == expected_labels


@pytest.mark.parametrize(
    "ops",
    [
        pytest.param([{"op": "remove", "path": "/metadata/labels/zz"}], id="remove-missing"),
        pytest.param([{"op": "test", "path": "/metadata/labels/a", "value": "2"}], id="test-fails"),
        pytest.param([{"op": "move", "path": "/a", "from": "/b"}], id="unsupported-op"),
        pytest.param({"op": "add"}, id="not-a-list"),
    ],
)
def test_bad_json_patch(ops: Any) -> None:
    with pytest.raises(PatchError):
        apply_patch(JSON_PATCH, BASE, ops)


def test_unknown_content_type() -> None:
    with pytest.raises(PatchError):
        apply_patch("application/apply-patch+yaml", BASE, {})
