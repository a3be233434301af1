"""An agent's peers, put together from its settings: directory, identity, endpoint, chunk movers.

``build`` returns None when peers are off: ``--peers off``, or ``auto`` without a way to find
agents (no cluster, or a manifest without ``POD_NAME``/``POD_IP``): the agent then fetches from
origins only, exactly as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from agent.config import Settings
from agent.fetch.cache import Cache
from agent.peers.auth import KubePeerGate, PeerGate, StaticPeerGate, TokenSource
from agent.peers.directory import StaticDirectory, parse_peer_list
from agent.peers.holdings import Holdings
from agent.peers.kubedir import KubeDirectory
from agent.peers.limits import Uploads
from agent.peers.metrics import PeerMetrics
from agent.peers.podsync import PodSync
from agent.peers.server import peer_app
from agent.peers.swarm import Directory, PeerNet, movers
from locality.records import Layout
from locality.settings import ConfigError, load_token
from locality.tasks import stop, supervised

log = logging.getLogger(__name__)


@dataclass
class Peers:
    net: PeerNet
    gate: PeerGate
    uploads: Uploads
    host: str
    port: int
    podsync: PodSync | None = None

    def cache_factory(self) -> Callable[..., Cache]:
        return functools.partial(Cache, movers=movers(self.net))

    def follow(
        self, held: Callable[[], Iterable[tuple[str, str | None]]], subscribe: Callable[..., None]
    ) -> None:
        """Label our Pod by the committed models ``held`` returns, re-synced on every change."""
        if self.podsync is not None:
            self.podsync.held = held
            subscribe(self.podsync.poke)

    def annotate(self, view: dict[str, Any]) -> dict[str, Any]:
        """A model's view plus where its last fetch (in this agent's life) got its bytes."""
        tally = self.net.tallies.get(str(view.get("id")))
        if tally is None:
            return view
        peers = sum(tally.peer_bytes.values())
        return {
            **view,
            "origin_bytes": tally.origin_bytes,
            "peer_bytes": peers,
            "peers": len(tally.peer_bytes),
        }

    async def serve(self) -> AsyncIterator[None]:
        """Run the peer endpoint (and the Pod's labels) while the agent runs."""
        runner = web.AppRunner(
            peer_app(self.net.holdings, self.gate, self.uploads, self.net.metrics), access_log=None
        )
        await runner.setup()
        await web.TCPSite(runner, self.host, self.port).start()
        log.info("peer endpoint listening on %s:%d", self.host, self.port)
        tasks = [supervised("peer-labels", self.podsync.run)] if self.podsync is not None else []
        try:
            yield
        finally:
            await stop(tasks)
            with contextlib.suppress(asyncio.CancelledError):
                await runner.cleanup()


def build(settings: Settings, kube: Any, metrics: PeerMetrics) -> Peers | None:
    ps = settings.peers
    if ps.mode == "off":
        return None
    holdings = Holdings(Layout(settings.cache_dir))
    directory: Directory
    podsync = None
    if ps.mode.startswith(("http://", "https://")):
        token = load_token(ps.token_file)
        if not token or not ps.url:
            raise ConfigError(
                "--peers URL,... needs --peer-token-file (shared by the group) and --peer-url (ours)"
            )
        directory = StaticDirectory(ps.url.rstrip("/"), parse_peer_list(ps.mode))
        gate: PeerGate = StaticPeerGate(token)
        tokens = TokenSource(token=token)
    elif kube is not None and ps.pod_name and (ps.url or ps.pod_ip) and settings.node_name:
        url = ps.url or f"http://{ps.pod_ip}:{ps.port}"
        podsync = PodSync(
            kube, ps.pod_namespace, ps.pod_name, settings.node_name, url, held=list, holdings=holdings
        )
        directory = KubeDirectory(kube, ps.pod_namespace, ps.pod_name, podsync.poke)
        gate, tokens = KubePeerGate(kube, ps.identity), TokenSource(path=ps.sa_token_file)
    else:
        log.info(
            "peers off: no cluster, or no POD_NAME/POD_IP from the downward API (--peers URLs for standalone)"
        )
        return None
    net = PeerNet(directory, tokens, holdings, metrics, peer_timeout=ps.timeout)
    return Peers(net, gate, Uploads(ps.max_uploads, ps.upload_rate), settings.host, ps.port, podsync)
