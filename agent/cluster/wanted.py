"""What this node should hold and pin (pure): pods bound here and ModelDistributions that target it.

``wanted_models`` maps pods + distributions to models with their pin reasons (``pod:<ns>/<name>``,
``distribution:<name>``); ``wanted_revisions`` the revisions distributions pin.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from agent.lifecycle.modelstate import Wanted
from locality.contract import mapping, pod_models
from locality.identity import InvalidURI, ModelRef, model_ref

ACTIVE_PHASES = frozenset({"Pending", "Running"})


def pod_model_refs(pod: Mapping[str, Any]) -> tuple[list[ModelRef], list[str]]:
    """The models a pod asks for in its annotation, and one error line per URI that is not valid."""
    meta = mapping(pod.get("metadata"))
    request = pod_models(mapping(meta.get("annotations")))
    errors = [f"pod {_pod_key(meta)}: skipping {line}" for line in request.invalid]
    if request.problem and not request.invalid:
        errors.append(f"pod {_pod_key(meta)}: {request.problem}")
    return list(request.refs), errors


def wanted_models(
    pods: Iterable[Mapping[str, Any]], distributions: Iterable[Mapping[str, Any]], node_name: str
) -> Wanted:
    """Models this node should hold, each with the reasons that pin it.

    A pod pins its models with ``pod:<ns>/<name>`` while it is bound to ``node_name`` and in
    phase Pending or Running (no phase yet counts as Pending). A ModelDistribution pins its
    ``spec.uri`` with ``distribution:<name>`` while ``status.targets`` lists ``node_name``.
    Invalid URIs are skipped (``pod_model_refs`` reports them).
    """
    reasons: dict[str, set[str]] = {}
    refs: dict[str, ModelRef] = {}

    def want(ref: ModelRef, reason: str) -> None:
        refs[ref.id] = ref
        reasons.setdefault(ref.id, set()).add(reason)

    for pod in pods:
        spec, status = mapping(pod.get("spec")), mapping(pod.get("status"))
        meta = mapping(pod.get("metadata"))
        if spec.get("nodeName") != node_name or (status.get("phase") or "Pending") not in ACTIVE_PHASES:
            continue
        for ref in pod_model_refs(pod)[0]:
            want(ref, f"pod:{_pod_key(meta)}")
    for dist in distributions:
        dref = distribution_ref(dist)
        targets = mapping(dist.get("status")).get("targets")
        if dref is None or not isinstance(targets, list) or node_name not in targets:
            continue
        want(dref, f"distribution:{mapping(dist.get('metadata')).get('name', '')}")
    return {mid: (refs[mid], frozenset(r)) for mid, r in sorted(reasons.items())}


def wanted_revisions(distributions: Iterable[Mapping[str, Any]], node_name: str) -> dict[str, str]:
    """Model id -> ``spec.revision`` of the ModelDistributions that target ``node_name`` and name
    one (the agent fetches such a model only at that revision). Two distributions of one model
    naming different revisions: the first by name wins (the other cannot be served beside it)."""
    out: dict[str, str] = {}
    ordered = sorted(distributions, key=lambda d: str(mapping(d.get("metadata")).get("name", "")))
    for dist in ordered:
        dref, spec = distribution_ref(dist), mapping(dist.get("spec"))
        targets = mapping(dist.get("status")).get("targets")
        revision = spec.get("revision")
        if dref is None or not isinstance(targets, list) or node_name not in targets:
            continue
        if isinstance(revision, str) and revision and dref.id not in out:
            out[dref.id] = revision
    return out


def distribution_ref(dist: Mapping[str, Any]) -> ModelRef | None:
    """The model of a ModelDistribution, or None when ``spec.uri`` is missing or invalid."""
    uri = mapping(dist.get("spec")).get("uri")
    if not isinstance(uri, str):
        return None
    try:
        return model_ref(uri)
    except InvalidURI:
        return None


def _pod_key(meta: Mapping[str, Any]) -> str:
    return f"{meta.get('namespace', 'default')}/{meta.get('name', '?')}"
