"""Revisions: a committed model pins what its origin said; a changed origin shows a new revision."""

from __future__ import annotations

from pathlib import Path

from agent.config import Settings
from agent.fetch.cache import Cache
from agent.fetch.revisions import origin_changed
from agent.fetch.sources import open_source
from locality.identity import model_ref
from tests.fixtures.models import write_safetensors
from tests.fixtures.origin import run_origin
from tests.fixtures.s3server import S3Server

MiB = 2**20


def make_cache(root: Path) -> Cache:
    return Cache(Settings(cache_dir=root, chunk_bytes=MiB, concurrency=2).validate())


async def changed(uri: str, recorded: str | None) -> str | None:
    source = open_source(model_ref(uri))
    try:
        return await origin_changed(source, recorded)
    finally:
        await source.close()


async def test_changed_s3_object_is_a_new_revision(
    s3_server: S3Server, s3_env: dict[str, str], tmp_path: Path
) -> None:
    s3_server.put("revs", "m/config.json", b'{"a": 1}')
    s3_server.put("revs", "m/w.bin", b"v1" * 1000)
    uri = "s3://revs/m"
    record = await make_cache(tmp_path / "cache").fetch(model_ref(uri))
    assert record.revision and await changed(uri, record.revision) is None
    s3_server.put("revs", "m/w.bin", b"v1" * 1000)  # the same bytes uploaded again
    assert await changed(uri, record.revision) is None
    s3_server.put("revs", "m/w.bin", b"v2" * 1000)  # a re-uploaded checkpoint
    new = await changed(uri, record.revision)
    assert new is not None and new != record.revision


async def test_changed_http_file_is_a_new_revision(tmp_path: Path) -> None:
    write_safetensors(tmp_path / "src" / "m.bin", MiB + 3, seed=1)
    with run_origin(tmp_path / "src") as origin:
        uri = f"{origin.url}/m.bin"
        record = await make_cache(tmp_path / "cache").fetch(model_ref(uri))
        assert record.revision and await changed(uri, record.revision) is None
        write_safetensors(tmp_path / "src" / "m.bin", MiB + 5, seed=2)
        new = await changed(uri, record.revision)
    assert new is not None and new != record.revision


async def test_record_without_a_revision_is_not_refetched(tmp_path: Path) -> None:
    write_safetensors(tmp_path / "src" / "m.bin", MiB)
    with run_origin(tmp_path / "src") as origin:
        assert await changed(f"{origin.url}/m.bin", None) is None
