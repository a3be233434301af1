"""Chunk-source conformance: the origin's source and a peer run the same rows through one data path
(``RangeReader``): the right bytes and digest for every chunk; bytes the source no longer has (the
object deleted at the origin, a revision the peer does not hold) and a range past the end are
refused permanently."""

from __future__ import annotations

import os
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
import xxhash
from aiohttp import web

from agent.config import Settings
from agent.fetch.cache import Cache
from agent.fetch.sources import open_source
from agent.fetch.sources.base import SourceError
from agent.fetch.sources.transfer import ChunkJob, RangeReader
from agent.peers.auth import StaticPeerGate
from agent.peers.holdings import Holdings
from agent.peers.limits import Uploads
from agent.peers.metrics import PeerMetrics
from agent.peers.server import peer_app
from agent.peers.source import PeerSource
from agent.store.files import RemoteFile
from locality.identity import model_ref
from tests.fixtures.origin import run_origin
from tests.fixtures.ports import free_port

MiB = 2**20
SIZE = 3 * MiB + 12345


@dataclass
class Subject:
    source: Any
    file: RemoteFile
    data: bytes
    gone: Any  # a source for the same file whose bytes are no longer there


@pytest.fixture(params=["origin", "peer"])
async def subject(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Subject]:
    data = os.urandom(SIZE)
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "w.bin").write_bytes(data)
    with run_origin(tmp_path / "src") as origin:
        ref = model_ref(f"{origin.url}/w.bin")
        source = open_source(ref)
        (file,) = await source.list_files()
        if request.param == "origin":
            gone_dir = tmp_path / "gone"
            gone_dir.mkdir()
            with run_origin(gone_dir) as empty:
                yield Subject(source, file, data, open_source(model_ref(f"{empty.url}/w.bin")))
            return
        cache = Cache(Settings(cache_dir=tmp_path / "cache", chunk_bytes=MiB).validate())
        record = await cache.fetch(ref)
    runner = web.AppRunner(
        peer_app(Holdings(cache.layout), StaticPeerGate("t"), Uploads(4, 0), PeerMetrics())
    )
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        peer = PeerSource(f"http://127.0.0.1:{port}", record.id, record.revision or "", lambda: "t")
        other = PeerSource(f"http://127.0.0.1:{port}", record.id, "another-revision", lambda: "t")
        yield Subject(peer, file, data, other)
    finally:
        await runner.cleanup()


def fetch(subject: Subject, file: RemoteFile, offset: int, length: int, tmp_path: Path) -> tuple[bytes, str]:
    path = tmp_path / "out.bin"
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.ftruncate(fd, file.size)
        job = ChunkJob(fd=fd, offset=offset, length=length, file_size=file.size)
        reader = RangeReader(threading.Event(), timeout=5, connect_timeout=2)
        try:
            reader.fetch(subject.source.target(file), job, None, lambda n: None)
        finally:
            reader.close()
        return os.pread(fd, length, offset), job.hasher.hexdigest()
    finally:
        os.close(fd)


@pytest.mark.parametrize("index", [0, 1, 3])  # first, middle, the short last chunk
async def test_every_chunk_arrives_exact_with_its_digest(
    subject: Subject, index: int, tmp_path: Path
) -> None:
    offset = index * MiB
    length = min(MiB, SIZE - offset)
    got, digest = await _in_thread(fetch, subject, subject.file, offset, length, tmp_path)
    assert got == subject.data[offset : offset + length]
    assert digest == xxhash.xxh3_128(subject.data[offset : offset + length]).hexdigest()


async def test_bytes_no_longer_there_are_refused_permanently(subject: Subject, tmp_path: Path) -> None:
    with pytest.raises(SourceError) as err:
        await _in_thread(fetch, replace(subject, source=subject.gone), subject.file, 0, MiB, tmp_path)
    assert err.value.permanent


async def test_a_range_past_the_end_is_refused_permanently(subject: Subject, tmp_path: Path) -> None:
    bigger = replace(subject.file, size=SIZE + 4 * MiB)
    with pytest.raises(SourceError) as err:
        await _in_thread(fetch, subject, bigger, SIZE + MiB, MiB, tmp_path)
    assert err.value.permanent


async def _in_thread(fn: Any, *args: Any) -> Any:
    import asyncio

    return await asyncio.to_thread(fn, *args)
