"""Model sources: list a model URI's files and say how to GET their bytes (S3, HTTP, Hugging Face, OCI)."""

from __future__ import annotations

from agent.fetch.sources.base import HttpTarget, Source, SourceError, checked_files
from agent.fetch.sources.oci_client import RegistryOptions
from agent.fetch.sources.timeouts import Timeouts
from agent.store.files import RemoteFile
from locality.identity import ModelRef


def open_source(
    ref: ModelRef,
    timeouts: Timeouts | None = None,
    registries: RegistryOptions | None = None,
    hf_endpoint: str | None = None,
) -> Source:
    """The source for ``ref``'s scheme; the S3 one is imported lazily (it loads boto3)."""
    if ref.scheme == "s3":
        from agent.fetch.sources.s3 import S3Source

        return S3Source(ref, timeouts)
    if ref.scheme == "hf":
        from agent.fetch.sources.hf import DEFAULT_ENDPOINT, HfSource

        return HfSource(ref, timeouts, hf_endpoint or DEFAULT_ENDPOINT)
    if ref.scheme == "oci":
        from agent.fetch.sources.oci import OciSource

        return OciSource(ref, timeouts, registries)
    from agent.fetch.sources.http import HttpSource

    return HttpSource(ref, timeouts)


__all__ = [
    "HttpTarget",
    "RegistryOptions",
    "RemoteFile",
    "Source",
    "SourceError",
    "Timeouts",
    "checked_files",
    "open_source",
]
