"""Where peers are found. ``StaticDirectory``: a fixed list (standalone agents, the benchmark).
``agent.peers.kubedir.KubeDirectory``: agent Pods labelled by the models they fetch or hold."""

from __future__ import annotations

from collections.abc import Mapping


class StaticDirectory:
    """Every agent in ``urls`` (name -> base URL of its peer endpoint) may hold any model; ``me``
    is this agent's own name in that list (it is never its own peer)."""

    def __init__(self, me: str, urls: Mapping[str, str]) -> None:
        self.me = me
        self._urls = {name: url.rstrip("/") for name, url in urls.items() if name != me}

    async def peers(self, model_id: str, revision: str) -> dict[str, str]:
        return dict(self._urls)

    async def joined(self, model_id: str, revision: str) -> dict[str, str]:
        """Nothing to announce (peers learn of this fetch from its chunk map); the list itself: any
        of them may be fetching, so only an empty list means alone."""
        return dict(self._urls)


def parse_peer_list(text: str) -> dict[str, str]:
    """``URL,URL,...`` (each agent's peer endpoint) -> {URL: URL}: a URL names its agent."""
    urls = [u.strip().rstrip("/") for u in text.split(",") if u.strip()]
    for url in urls:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"a peer is an http(s) URL, not {url[:80]!r}")
    return {u: u for u in urls}
