"""Label and field selector parsing of the fake API server."""

from __future__ import annotations

from typing import Any

import pytest

from tests.fixtures.fakekube.selectors import SelectorError, field_selector, label_selector


def node(labels: dict[str, str] | None = None, **spec: Any) -> dict[str, Any]:
    return {"metadata": {"name": "n1", "labels": labels or {}}, "spec": spec}


@pytest.mark.parametrize(
    ("selector", "labels", "expected"),
    [
        pytest.param("", {}, True, id="empty-matches-all"),
        pytest.param("a=1", {"a": "1"}, True, id="equals"),
        pytest.param("a==1", {"a": "1"}, True, id="double-equals"),
        pytest.param("a=1", {"a": "2"}, False, id="equals-other-value"),
        pytest.param("a!=1", {}, True, id="not-equals-missing-key"),
        pytest.param("a!=1", {"a": "1"}, False, id="not-equals-same"),
        pytest.param("a", {"a": ""}, True, id="exists"),
        pytest.param("!a", {"a": ""}, False, id="not-exists"),
        pytest.param("a in (1, 2)", {"a": "2"}, True, id="in"),
        pytest.param("a in (1,2)", {}, False, id="in-missing"),
        pytest.param("a notin (1,2)", {}, True, id="notin-missing"),
        pytest.param("a notin (1,2)", {"a": "1"}, False, id="notin-listed"),
        pytest.param("a=1,b in (x,y),!c", {"a": "1", "b": "y"}, True, id="and-with-set-commas"),
        pytest.param("a=1,b", {"a": "1"}, False, id="and-fails"),
        pytest.param(
            "model-locality.io/m.1234abcd=ready", {"model-locality.io/m.1234abcd": "ready"}, True, id="prefix"
        ),
    ],
)
def test_label_selector(selector: str, labels: dict[str, str], expected: bool) -> None:
    assert label_selector(selector)(node(labels)) is expected


@pytest.mark.parametrize(
    ("selector", "spec", "expected"),
    [
        pytest.param("metadata.name=n1", {}, True, id="name"),
        pytest.param("metadata.name!=n1", {}, False, id="name-not"),
        pytest.param("spec.nodeName=", {}, True, id="empty-means-unset"),
        pytest.param("spec.nodeName=w1", {"nodeName": "w1"}, True, id="node-name"),
        pytest.param("spec.nodeName!=w1,metadata.name=n1", {"nodeName": "w2"}, True, id="and"),
        pytest.param("spec.unschedulable=true", {"unschedulable": True}, True, id="bool-as-text"),
    ],
)
def test_field_selector(selector: str, spec: dict[str, Any], expected: bool) -> None:
    assert field_selector(selector)(node(**spec)) is expected


@pytest.mark.parametrize(
    ("parse", "selector"),
    [
        pytest.param(field_selector, "spec.bogus=1", id="unknown-field"),
        pytest.param(field_selector, "metadata.name", id="field-without-value"),
        pytest.param(label_selector, "a in 1", id="set-without-parens"),
        pytest.param(label_selector, "a=b=c", id="two-equals"),
    ],
)
def test_bad_selectors_raise(parse: Any, selector: str) -> None:
    with pytest.raises(SelectorError):
        parse(selector)
