"""The agent's ModelAccessPolicy gate: may this namespace make this agent fetch this URI?

Checked before anything is fetched: in ``POST /v1/models`` for the caller's namespace (from its
ServiceAccount token), and for models that pods ask for in their annotation (the pod's
namespace). Policies come from an informer; namespace labels from ``get namespace``, cached
30 s. Until the first list of policies, requests are refused with 503 (fail closed).
Distributions are not filtered: creating one already needs ``create modeldistributions``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from agent.lifecycle.modelstate import Wanted
from locality import errors
from locality.access_policy import AccessPolicy, Decision, InvalidPolicy, decide, parse_policy
from locality.auth import TtlCache
from locality.identity import ModelRef, redact_uri
from locality.informer import Informer
from locality.kube import Kube, KubeError, NotFound

log = logging.getLogger(__name__)

POD_REASON = "pod:"


def pod_namespace(reason: str) -> str | None:
    """The namespace of a ``pod:<ns>/<name>`` reason; None for any other reason."""
    return reason[len(POD_REASON) :].split("/", 1)[0] if reason.startswith(POD_REASON) else None


def filter_wanted(wanted: Wanted, allowed: Callable[[str, ModelRef], bool]) -> tuple[Wanted, list[str]]:
    """Drop the ``pod:<ns>/<name>`` reasons whose namespace may not fetch the model; a model with
    no reason left is dropped. Returns the kept set and one line per refusal."""
    kept: dict[str, Any] = {}
    refused: list[str] = []
    for model_id, (ref, reasons) in wanted.items():
        keep = set()
        for reason in reasons:
            namespace = pod_namespace(reason)
            if namespace is None or allowed(namespace, ref):
                keep.add(reason)
            else:
                refused.append(
                    f"{reason} may not fetch {redact_uri(ref.uri)}: no ModelAccessPolicy allows it"
                )
        if keep:
            kept[model_id] = (ref, frozenset(keep))
    return kept, refused


def without_credentials(decision: Decision) -> Decision:
    """Fail closed on ``spec.credentialsSecretRef``: this agent cannot fetch with a policy's own
    credentials yet, and fetching with its own instead (its IRSA role, often wider) would be the
    confused deputy the policy exists to prevent. So such a policy allows nothing, and says why."""
    if not decision.allowed or decision.credentials_secret is None:
        return decision
    return Decision(
        False,
        f"ModelAccessPolicy {decision.policy} names credentialsSecretRef "
        f"{decision.credentials_secret!r}, which this agent does not support yet; it refuses "
        "rather than fetch with its own credentials",
        decision.policy,
        decision.credentials_secret,
    )


class AccessGate:
    """Policies by informer, namespace labels by cached ``get``; ``check`` raises when refused."""

    def __init__(
        self, kube: Kube, *, resync_seconds: float = 300.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._kube = kube
        self.informer = Informer(
            kube, "modelaccesspolicies", on_event=self._on_event, resync_seconds=resync_seconds
        )
        self.on_change: Callable[[], None] | None = None  # the watchers recompute pods' models
        self._labels: TtlCache[dict[str, str]] = TtlCache(1024, clock)
        self._bad: set[str] = set()
        self._parsed: list[AccessPolicy] | None = None  # parsed once per change, not per request

    async def run(self) -> None:
        await self.informer.run()

    def _on_event(self, kind: str, obj: dict[str, Any]) -> None:
        self._parsed = None  # every change of the informer's items comes through here
        if self.on_change is not None:
            self.on_change()

    def policies(self) -> list[AccessPolicy]:
        if self._parsed is not None:
            return self._parsed
        out = []
        for obj in self.informer.items.values():
            try:
                out.append(parse_policy(obj))
            except InvalidPolicy as exc:
                if str(exc) not in self._bad:  # once per distinct problem, not per request
                    self._bad.add(str(exc))
                    log.warning("ignoring ModelAccessPolicy: %s", exc)
        self._parsed = out
        return out

    async def labels_of(self, namespace: str) -> dict[str, str]:
        hit = self._labels.get(namespace)
        if hit is None:
            try:
                obj = await self._kube.get_namespace(namespace)
                hit = dict((obj.get("metadata") or {}).get("labels") or {})
            except NotFound:
                hit = {}  # a namespace that is gone matches only policies selecting every namespace
            except KubeError as exc:
                raise errors.Unavailable(
                    f"cannot read namespace {namespace!r} for the access check: {exc}"
                ) from exc
            self._labels.put(namespace, hit, 30.0)
        return hit

    async def decide(self, namespace: str, ref: ModelRef) -> Decision:
        if not self.informer.synced.is_set():
            raise errors.Unavailable("ModelAccessPolicies not loaded yet; try again shortly")
        return without_credentials(
            decide(self.policies(), namespace, await self.labels_of(namespace), ref.uri)
        )

    async def check(self, namespace: str, ref: ModelRef) -> Decision:
        """The decision that allows ``namespace`` to fetch ``ref``, or ``Forbidden``."""
        decision = await self.decide(namespace, ref)
        if not decision.allowed:
            raise errors.Forbidden(decision.reason)
        return decision

    async def filter(self, wanted: Wanted) -> Wanted:
        """``filter_wanted`` with the live policies; without them yet, pods' models wait. Each
        (namespace, model) that a pod asks for is decided once."""
        asked = {
            (namespace, ref.id): ref
            for ref, reasons in wanted.values()
            for reason in reasons
            if (namespace := pod_namespace(reason)) is not None
        }
        answers: dict[tuple[str, str], bool] = {}
        for (namespace, model_id), ref in asked.items():
            try:
                answers[(namespace, model_id)] = (await self.decide(namespace, ref)).allowed
            except errors.Unavailable as exc:
                log.warning("pods' models held back: %s", exc.message)
                answers[(namespace, model_id)] = False
        kept, refused = filter_wanted(wanted, lambda ns, ref: answers.get((ns, ref.id), False))
        for line in refused:
            log.warning("%s", line)
        return kept
