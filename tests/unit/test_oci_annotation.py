"""An oci:// URI in a pod's annotation: the webhook injects the wait container and the read-only
mount of exactly that model, as for any other scheme (docs/oci.md, "Push a model, use it from a pod")."""

from __future__ import annotations

import json
from typing import Any

import jsonpatch

from locality.identity import model_ref
from scheduler_extender.injection import WAIT_CONTAINER, Install, inject

URI = "oci://Harbor.Corp/models/minilm"  # normalised to oci://harbor.corp/models/minilm:latest


def test_webhook_injects_an_oci_model() -> None:
    ref = model_ref(URI)
    pod: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "p", "namespace": "ns", "annotations": {"model-locality.io/models": URI}},
        "spec": {"containers": [{"name": "server", "image": "srv:1"}]},
    }
    outcome = inject(pod, Install(mode="scheduler"), {ref.id: 100})
    out = jsonpatch.apply_patch(pod, list(outcome.patch))
    wait = next(c for c in out["spec"]["initContainers"] if c["name"] == WAIT_CONTAINER)
    assert ref.uri == "oci://harbor.corp/models/minilm:latest" and ref.uri in json.dumps(wait)
    mounts = [m for c in out["spec"]["containers"] for m in c.get("volumeMounts", [])]
    assert any(ref.id in json.dumps(m) and m.get("readOnly") for m in mounts), mounts
