"""Keeps this agent's own Pod labelled by the models it holds and fetches (``agent.peers.kubedir``).

Like ``NodeSync`` for the Node: a change pokes an event, the loop waits ``debounce`` seconds and
sends the minimal merge patch of our labels (nothing when equal), retrying with back-off.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable

from agent.peers.holdings import Holdings
from agent.peers.kubedir import URL_ANNOTATION, PodApi, desired_labels, label_patch
from locality.backoff import backoff_delay

log = logging.getLogger(__name__)


class PodSync:
    def __init__(
        self,
        api: PodApi,
        namespace: str,
        pod: str,
        node: str,
        url: str,
        *,
        held: Callable[[], Iterable[tuple[str, str | None]]],
        holdings: Holdings,
        debounce: float = 0.2,
    ) -> None:
        self.api, self.namespace, self.pod, self.node, self.url = api, namespace, pod, node, url
        self.held, self._holdings, self.debounce = held, holdings, debounce
        self._dirty = asyncio.Event()
        self._current: dict[str, str] = {}
        self._annotated = False
        self.writes = 0

    def poke(self) -> None:
        self._dirty.set()

    async def run(self) -> None:
        attempt = 0
        self._dirty.set()
        while True:
            await self._dirty.wait()
            await asyncio.sleep(self.debounce)
            self._dirty.clear()
            try:
                await self.sync_once()
                attempt = 0
            except Exception as exc:  # the API is down or refuses: retry, never crash the agent
                attempt += 1
                delay = backoff_delay(attempt, 0.5, 30.0)
                log.warning("cannot label pod %s for peers (%s); retrying in %.1fs", self.pod, exc, delay)
                self._dirty.set()
                await asyncio.sleep(delay)

    async def sync_once(self) -> None:
        desired = desired_labels(self.held(), self._holdings.live_revisions(), self.node)
        patch = label_patch(self._current, desired)
        if not patch and self._annotated:
            return
        pod = await self.api.patch_pod_metadata(
            self.namespace, self.pod, labels=patch, annotations={URL_ANNOTATION: self.url}
        )
        self.writes += 1
        self._annotated = True
        self._current = dict((pod.get("metadata") or {}).get("labels") or {})
