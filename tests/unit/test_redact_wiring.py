"""Redaction where URIs leave the agent: free text (logs, errors), REST views, Node annotations."""

from __future__ import annotations

import json

import pytest

from agent.cluster.labels import desired_metadata
from agent.lifecycle.modelstate import ModelState
from agent.lifecycle.views import public
from locality.contract import MODELS_ANNOTATION
from locality.identity import redact_text
from locality.settings import redact

SIGNED = "https://h/m.bin?X-Amz-Credential=AKIAXXXXXXXXXXXXXXXX%2F2026&X-Amz-Signature=abc123"
CLEAN = "https://h/m.bin?X-Amz-Credential=REDACTED&X-Amz-Signature=REDACTED"

TEXT = {
    "no uri": ("fetch failed: disk full", "fetch failed: disk full"),
    "uri in a sentence": (f"fetch of {SIGNED} failed: 403", f"fetch of {CLEAN} failed: 403"),
    "quoted uri": (f"bad uri '{SIGNED}'", f"bad uri '{CLEAN}'"),
    "two uris": (f"{SIGNED} and s3://b/k", f"{CLEAN} and s3://b/k"),
    "userinfo": ("from http://u:pw@h/x now", "from http://REDACTED@h/x now"),
    "plain uri untouched": ("fetching s3://models/a for pod:ns/p", "fetching s3://models/a for pod:ns/p"),
}


@pytest.mark.parametrize(("text", "expected"), list(TEXT.values()), ids=list(TEXT))
def test_redact_text(text: str, expected: str) -> None:
    assert redact_text(text) == expected


@pytest.mark.parametrize(("text", "expected"), list(TEXT.values()), ids=list(TEXT))
def test_log_filter_redacts_uris_too(text: str, expected: str) -> None:
    assert "abc123" not in redact(text) and "pw@" not in redact(text)


VIEWS = {
    "fetching": ({"id": "1", "uri": SIGNED, "state": "fetching", "error": None}, CLEAN, None),
    "failed": (
        {"id": "1", "uri": SIGNED, "state": "failed", "error": f"{SIGNED}: origin answered HTTP 403"},
        CLEAN,
        f"{CLEAN}: origin answered HTTP 403",
    ),
    "refresh failed": (
        {"id": "1", "uri": SIGNED, "state": "ready", "error": None, "refresh": f"failed: {SIGNED}: 403"},
        CLEAN,
        None,
    ),
    "quarantined, no uri": (
        {"id": "1", "uri": None, "state": "quarantined", "error": "bad json"},
        None,
        "bad json",
    ),
}


@pytest.mark.parametrize(("view", "uri", "error"), list(VIEWS.values()), ids=list(VIEWS))
def test_public_view(view: dict[str, object], uri: str | None, error: str | None) -> None:
    before = dict(view)
    out = public(view)
    assert (out["uri"], out["error"]) == (uri, error)
    assert "abc123" not in json.dumps(out), "no signature anywhere in the view (refresh included)"
    assert view == before, "the manager's own view is not changed"


def test_node_annotation_carries_the_redacted_uri() -> None:
    meta = desired_metadata([ModelState(id="1", uri=SIGNED, label_key="k", state="ready", bytes=3)], 3, 10)
    entry = json.loads(str(meta.annotations[MODELS_ANNOTATION]))["1"]
    assert entry["uri"] == CLEAN
