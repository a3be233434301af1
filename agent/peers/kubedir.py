"""Peer discovery through Kubernetes: agents label their own Pod by the models they fetch or hold,
and a fetcher LISTs agent Pods by that label from the API server's watch cache (docs/peers.md).

Label ``peer.model-locality.io/<model id>``: ``f.<rev8>`` while fetching, ``h<bb>.<rev8>`` once
committed (``bb``: a bucket of the node, 256 of them, so a fetcher can ask for a slice of the
holders). Annotation ``peer.model-locality.io/url``: the agent's peer endpoint.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol

from agent.peers.plan import score

log = logging.getLogger(__name__)
PREFIX = "peer.model-locality.io/"
URL_ANNOTATION = f"{PREFIX}url"
BUCKETS = 256
ASK_BUCKETS = 8  # holders' buckets one LIST asks for (1/32 of the holders)
FEW_HOLDERS = 4  # fewer found: ask once for all holders


class PodApi(Protocol):
    async def list(
        self,
        kind: Any,
        *,
        label_selector: str | None = ...,
        namespace: str | None = ...,
        resource_version: str | None = ...,
    ) -> tuple[list[dict[str, Any]], str]: ...

    async def patch_pod_metadata(
        self,
        namespace: str,
        name: str,
        *,
        labels: Mapping[str, str | None] = ...,
        annotations: Mapping[str, str | None] = ...,
    ) -> dict[str, Any]: ...


def rev8(revision: str) -> str:
    """The revision in a label value: its first 8 letters or digits."""
    return "".join(c for c in revision.lower() if c.isalnum())[:8] or "0"


def bucket(name: str) -> str:
    return f"{score('bucket', name) % BUCKETS:02x}"


def fetching_value(revision: str) -> str:
    return f"f.{rev8(revision)}"


def holding_value(node: str, revision: str) -> str:
    return f"h{bucket(node)}.{rev8(revision)}"


def selector(model_id: str, revision: str, me: str, *, all_holders: bool = False) -> str:
    """The label selector of one LIST: the revision's fetchers plus a slice (or all) of its holders."""
    if all_holders:
        values = [fetching_value(revision), *(f"h{b:02x}.{rev8(revision)}" for b in range(BUCKETS))]
    else:
        first = score("ask", me) % BUCKETS
        picks = [(first + i * (BUCKETS // ASK_BUCKETS)) % BUCKETS for i in range(ASK_BUCKETS)]
        values = [fetching_value(revision), *(f"h{b:02x}.{rev8(revision)}" for b in picks)]
    return f"{PREFIX}{model_id} in ({','.join(values)})"


def peers_of(pods: Iterable[Mapping[str, Any]], model_id: str, me: str) -> tuple[dict[str, str], int]:
    """Pods -> {pod name: peer URL} (running, annotated, not ourselves), and how many hold it."""
    out: dict[str, str] = {}
    holders = 0
    for pod in pods:
        meta = pod.get("metadata") or {}
        name, url = meta.get("name"), (meta.get("annotations") or {}).get(URL_ANNOTATION)
        if not name or name == me or not isinstance(url, str) or not url.startswith("http"):
            continue
        if (pod.get("status") or {}).get("phase") not in (None, "Running"):
            continue
        out[str(name)] = url
        holders += str((meta.get("labels") or {}).get(f"{PREFIX}{model_id}", "")).startswith("h")
    return out, holders


class KubeDirectory:
    """Agent Pods in ``namespace`` by label; this agent is ``pod``. ``joined`` pokes the ``PodSync``
    that keeps this Pod's labels equal to what the agent fetches and holds."""

    def __init__(self, api: PodApi, namespace: str, pod: str, poke: Callable[[], None]) -> None:
        self.api, self.namespace, self.me, self._poke = api, namespace, pod, poke

    async def peers(self, model_id: str, revision: str) -> dict[str, str]:
        found, holders = await self._list(model_id, selector(model_id, revision, self.me))
        if holders < FEW_HOLDERS:
            more, _ = await self._list(model_id, selector(model_id, revision, self.me, all_holders=True))
            found.update(more)
        return found

    async def _list(self, model_id: str, label_selector: str) -> tuple[dict[str, str], int]:
        pods, _ = await self.api.list(
            "pods", label_selector=label_selector, namespace=self.namespace, resource_version="0"
        )
        return peers_of(pods, model_id, self.me)

    async def joined(self, model_id: str, revision: str) -> None:
        self._poke()


def desired_labels(
    held: Iterable[tuple[str, str | None]], fetching: Iterable[tuple[str, str]], node: str
) -> dict[str, str]:
    """This Pod's peer labels: ``(model id, revision)`` of committed models and of live fetches."""
    labels = {f"{PREFIX}{mid}": holding_value(node, rev) for mid, rev in held if rev}
    labels.update({f"{PREFIX}{mid}": fetching_value(rev) for mid, rev in fetching})
    return labels


def label_patch(current: Mapping[str, str], desired: Mapping[str, str]) -> dict[str, str | None]:
    """The merge patch from ``current`` (only our keys count) to ``desired``; {} when equal."""
    ours = {k: v for k, v in current.items() if k.startswith(PREFIX) and k != URL_ANNOTATION}
    patch: dict[str, str | None] = {k: v for k, v in desired.items() if ours.get(k) != v}
    patch.update({k: None for k in ours if k not in desired})
    return patch
