"""Hugging Face Hub source (the only module importing ``huggingface_hub``): ``hf://ORG/REPO[@REV]``.

Listing and metadata through ``huggingface_hub`` (``model_info(files_metadata=True)``: each file's
size, LFS sha256 or git blob id, and the commit sha, which is the record's revision); the bytes
through our own ranged data path, one ``resolve/<commit>/<path>`` GET per chunk, so every chunk
follows the Hub's redirect to its CDN afresh (a signed URL that expired mid-fetch is replaced on
the next try; staged bytes are kept). Endpoint and token come from the Hub's own variables, as
the S3 source takes boto3's chain: ``HF_TOKEN`` or the token file (``HF_TOKEN_PATH``, default
``~/.cache/huggingface/token``) for gated and private repos. The endpoint (a mirror) is a setting
of the agent (``--hf-endpoint``, env ``HF_ENDPOINT``), handed in like the timeouts.
"""

from __future__ import annotations

import asyncio
import fnmatch
from typing import Any
from urllib.parse import quote

from agent.fetch.sources.base import HttpTarget, SourceError, checked_files
from agent.fetch.sources.network import environ_proxy
from agent.fetch.sources.timeouts import Timeouts
from agent.store.files import RemoteFile
from locality.hfuri import HfModel, parse_hf
from locality.identity import ModelRef

DEFAULT_ENDPOINT = "https://huggingface.co"


class HfSource:
    """One Hub model repo at one revision, filtered by the URI's include/exclude globs."""

    def __init__(
        self, ref: ModelRef, timeouts: Timeouts | None = None, endpoint: str = DEFAULT_ENDPOINT
    ) -> None:
        self.uri = ref.uri
        self.model: HfModel = parse_hf(ref.authority, ref.path)
        self._endpoint = endpoint.rstrip("/")
        self._timeouts = timeouts or Timeouts()
        self._token: str | None = None
        self._commit: str | None = None

    async def list_files(self) -> list[RemoteFile]:
        info = await asyncio.to_thread(self._info)
        commit = str(info.sha)
        self._commit = commit
        files = [f for s in info.siblings or [] if (f := _remote(s, commit)) is not None]
        chosen = [f for f in files if selected(f.path, self.model)]
        if files and not chosen:
            raise SourceError(
                f"{self.uri}: no file of {self.model.repo_id} matches the globs", permanent=True
            )
        return checked_files(self.uri, chosen)

    def target(self, file: RemoteFile) -> HttpTarget:
        url = f"{self._endpoint}/{self.model.repo_id}/resolve/{file.version}/{quote(file.key)}"
        headers = (("Authorization", f"Bearer {self._token}"),) if self._token else ()
        return HttpTarget(url=url, headers=headers, proxy=environ_proxy(url), ca_setting="SSL_CERT_FILE")

    async def close(self) -> None:
        return None

    def _info(self) -> Any:
        from huggingface_hub import HfApi, get_token
        from huggingface_hub.errors import HfHubHTTPError

        self._token = get_token()  # HF_TOKEN, else the token file
        api = HfApi(endpoint=self._endpoint, token=self._token or False)
        try:
            return api.model_info(
                self.model.repo_id,
                revision=self.model.revision,
                files_metadata=True,
                timeout=self._timeouts.read,
            )
        except HfHubHTTPError as exc:
            status = exc.response.status_code if exc.response is not None else 0
            raise self._http_error(status) from exc
        except Exception as exc:  # httpx transport errors: connection refused, reset, timeouts
            raise SourceError(
                f"{self.uri}: Hub not reachable: {type(exc).__name__}", permanent=False
            ) from exc

    def _http_error(self, status: int) -> SourceError:
        repo = self.model.repo_id
        if status == 401:
            why = (
                "the token was refused"
                if self._token
                else "a gated or private repo needs a token: set HF_TOKEN (or a token file, HF_TOKEN_PATH)"
            )
            return SourceError(f"{self.uri}: the Hub answered 401 for {repo}: {why}", permanent=True)
        if status == 403:
            return SourceError(
                f"{self.uri}: the Hub answered 403 for {repo}: this HF_TOKEN has no access "
                "(gated repo: accept its conditions on the Hub)",
                permanent=True,
            )
        if status == 404:
            what = f"revision {self.model.revision!r} of " if self.model.revision else ""
            return SourceError(f"{self.uri}: no {what}repo {repo} on {self._endpoint}", permanent=True)
        return SourceError(
            f"{self.uri}: the Hub answered HTTP {status}", permanent=400 <= status < 500 and status != 429
        )


def selected(path: str, model: HfModel) -> bool:
    """Kept when it matches an include glob (or there are none) and no exclude glob."""
    if model.include and not any(fnmatch.fnmatchcase(path, g) for g in model.include):
        return False
    return not any(fnmatch.fnmatchcase(path, g) for g in model.exclude)


def _remote(sibling: Any, commit: str) -> RemoteFile | None:
    """A sibling as a file to fetch: LFS files are checked against their sha256, others against
    their git blob id; a sibling without a size (no ``files_metadata``) cannot be fetched."""
    lfs = getattr(sibling, "lfs", None)
    size = lfs.size if lfs is not None else sibling.size
    if size is None:
        return None
    if lfs is not None and getattr(lfs, "sha256", None):
        checksum: str | None = f"sha256:{lfs.sha256}"
    else:
        checksum = f"git-sha1:{sibling.blob_id}" if getattr(sibling, "blob_id", None) else None
    path = str(sibling.rfilename)
    return RemoteFile(path=path, size=int(size), etag=None, key=path, checksum=checksum, version=commit)
