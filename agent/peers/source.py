"""A peer as a chunk source: the same ``target(file) -> HttpTarget`` face as the origin's sources
(``agent.fetch.sources``), so one data path (``RangeReader``) moves bytes from either."""

from __future__ import annotations

from collections.abc import Callable
from urllib.parse import quote

from agent.fetch.sources.base import HttpTarget
from agent.store.files import RemoteFile


class PeerSource:
    """Ranged GETs of one model revision's files from one agent's peer endpoint."""

    def __init__(self, base_url: str, model_id: str, revision: str, token: Callable[[], str]) -> None:
        self.uri = base_url.rstrip("/")
        self.model_id, self.revision, self._token = model_id, revision, token

    def target(self, file: RemoteFile) -> HttpTarget:
        url = (
            f"{self.uri}/v1/peer/models/{self.model_id}/files/{quote(file.path)}"
            f"?revision={quote(self.revision)}"
        )
        return HttpTarget(url=url, headers=(("Authorization", f"Bearer {self._token()}"),))

    async def close(self) -> None:
        """Nothing held: connections belong to the fetch threads' readers."""
