"""``model-agent refresh URI``: on the cache directly, and through a running daemon's socket."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from agent.cli import main
from agent.config import Settings
from agent.face.app import create_app
from tests.fixtures.models import write_safetensors
from tests.fixtures.origin import run_origin

MiB = 2**20


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv), environ={})
    out, err = capsys.readouterr()
    return code, out.strip(), err


def test_refresh_switches_to_a_new_revision(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_safetensors(tmp_path / "src" / "m.bin", MiB, seed=1)
    flags = ("--cache-dir", str(tmp_path / "cache"), "--chunk-size", "1Mi")
    with run_origin(tmp_path / "src") as origin:
        uri = f"{origin.url}/m.bin"
        code, first, err = cli(capsys, "refresh", uri, *flags)  # not cached yet: a plain fetch
        assert code == 0 and "switched from nothing" in err, err
        code, same, err = cli(capsys, "refresh", uri, *flags)
        assert code == 0 and same == first and "unchanged" in err
        write_safetensors(tmp_path / "src" / "m.bin", MiB + 7, seed=2)
        code, new, err = cli(capsys, "refresh", uri, *flags)
        assert code == 0 and new != first and "switched from" in err, err
        assert Path(new, "m.bin").stat().st_size == MiB + 7 and Path(first, "m.bin").is_file()
        code, _, err = cli(capsys, "refresh", uri, "--revision", "0000000000", *flags)
        assert code != 0 and "not the requested 0000000000" in err and "Traceback" not in err
        code, _, err = cli(capsys, "refresh", uri, "--revision", "a b", *flags)
        assert code != 0 and "revision must be" in err


async def test_refresh_through_the_daemon(
    aiohttp_client: Callable[..., Awaitable[TestClient[Any, Any]]],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    write_safetensors(tmp_path / "src" / "m.bin", MiB, seed=1)
    settings = Settings(cache_dir=tmp_path / "cache", token="t0ken", chunk_bytes=MiB).validate()
    await aiohttp_client(create_app(settings))  # the daemon: owns the cache, serves agent.sock
    flags = ("--cache-dir", str(tmp_path / "cache"))
    with run_origin(tmp_path / "src") as origin:
        uri = f"{origin.url}/m.bin"
        assert await asyncio.to_thread(main, ["refresh", uri, *flags], {}) == 0
        first = capsys.readouterr().out.strip()
        write_safetensors(tmp_path / "src" / "m.bin", MiB + 9, seed=2)
        assert await asyncio.to_thread(main, ["refresh", uri, *flags], {}) == 0
        out, err = capsys.readouterr()
    assert out.strip() != first and "switched from" in err, err
    assert await asyncio.to_thread(size_of, Path(out.strip(), "m.bin")) == MiB + 9


def size_of(path: Path) -> int:
    return path.stat().st_size
