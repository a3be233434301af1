"""Peer discovery through Kubernetes: agents label their own Pod by the models they fetch or hold,
and a fetcher LISTs agent Pods by that label from the API server's watch cache (docs/peers.md).

Label ``peer.model-locality.io/<model id>``: ``f.<rev8>`` while fetching, ``h<bb>.<rev8>`` once
committed (``bb``: a bucket of the node, 256 of them, so a fetcher can ask for a slice of the
holders). Annotation ``peer.model-locality.io/url``: the agent's peer endpoint.
"""

from __future__ import annotations

import asyncio
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
    that keeps this Pod's labels equal to what the agent fetches and holds, and waits to be listed."""

    def __init__(
        self,
        api: PodApi,
        namespace: str,
        pod: str,
        poke: Callable[[], None],
        *,
        visible_within: float = 3.0,
    ) -> None:
        self.api, self.namespace, self.me, self._poke = api, namespace, pod, poke
        self.visible_within = visible_within  # seconds ``joined`` waits to see our own fetching label

    async def peers(self, model_id: str, revision: str) -> dict[str, str]:
        return (await self._discover(model_id, revision))[0]

    async def _discover(
        self, model_id: str, revision: str, *, need_me: bool = False
    ) -> tuple[dict[str, str], bool]:
        """The peers of the revision, and whether our own Pod was listed as fetching it (with
        ``need_me``, nothing more is asked when it was not)."""
        pods = await self._list(selector(model_id, revision, self.me))
        me = lists_me_fetching(pods, self.me, model_id, revision)
        found, holders = peers_of(pods, model_id, self.me)
        if holders < FEW_HOLDERS and (me or not need_me):
            more = await self._list(selector(model_id, revision, self.me, all_holders=True))
            found.update(peers_of(more, model_id, self.me)[0])
        return found, me

    async def _list(self, label_selector: str) -> list[dict[str, Any]]:
        pods, _ = await self.api.list(
            "pods", label_selector=label_selector, namespace=self.namespace, resource_version="0"
        )
        return pods

    async def joined(self, model_id: str, revision: str) -> dict[str, str] | None:
        """Announce the fetch (our Pod's label), then the revision's peers as the first LIST that
        shows our own label sees them; None when it does not show it within ``visible_within``.

        A LIST that shows our label comes from a cache at least as new as our write, so of two
        agents that label themselves at the same moment, the later writer sees the earlier one:
        an empty answer means nobody else fetches or holds the revision (docs/peers.md).
        """
        self._poke()
        loop = asyncio.get_running_loop()
        deadline, delay = loop.time() + self.visible_within, 0.05
        while True:
            found, seen = await self._discover(model_id, revision, need_me=True)
            if seen:
                return found
            if loop.time() + delay > deadline:
                log.info("model %s: our Pod's peer label is not listed yet; assuming others fetch", model_id)
                return None
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.8)


def lists_me_fetching(pods: Iterable[Mapping[str, Any]], me: str, model_id: str, revision: str) -> bool:
    """Our own Pod is among ``pods`` with the label of a fetch of ``revision``."""
    want = fetching_value(revision)
    for pod in pods:
        meta = pod.get("metadata") or {}
        if meta.get("name") == me and (meta.get("labels") or {}).get(f"{PREFIX}{model_id}") == want:
            return True
    return False


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
