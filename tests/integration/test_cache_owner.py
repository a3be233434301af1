"""One writer per cache: CLI verbs against a running daemon, and kill -9 of a daemon mid-commit.

The daemon is a real ``model-agent serve`` subprocess; the CLI runs in-process (``agent.cli.main``)
so that its output can be compared with the daemon's REST view and with the disk.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from agent.cli import main
from locality.identity import model_ref
from locality.records import Layout, load_record
from tests.fixtures.origin import run_origin
from tests.fixtures.ports import free_port

TOKEN = "owner-test-token"


@contextmanager
def daemon(root: Path, tmp: Path) -> Iterator[str]:
    """``model-agent serve`` on ``root``; yields its base URL once /healthz answers."""
    token = tmp / "token"
    token.write_text(TOKEN)
    port = free_port()
    argv = [sys.executable, "-m", "agent", "serve", "--cache-dir", str(root), "--host", "127.0.0.1"]
    argv += ["--port", str(port), "--token-file", str(token), "--chunk-size", "1Mi", "--grace-seconds", "2"]
    log = (tmp / "daemon.log").open("ab")  # a file, not a pipe: a full pipe would stall the daemon
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=log)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, (tmp / "daemon.log").read_text()[-2000:]
            assert time.monotonic() < deadline, "daemon did not start"
            try:
                urllib.request.urlopen(f"{url}/healthz", timeout=1).close()
                break
            except OSError:
                time.sleep(0.05)
        yield url
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
        proc.wait()
        log.close()


def call(url: str, method: str = "GET", body: dict[str, Any] | None = None) -> Any:
    data = json.dumps(body).encode() if body is not None else None
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    request = urllib.request.Request(url, data=data, method=method, headers=headers)
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def ready_views(url: str) -> dict[str, dict[str, Any]]:
    return {v["id"]: v for v in call(f"{url}/v1/models") if v["state"] == "ready"}


def on_disk(root: Path) -> set[str]:
    """Committed models as the disk says: a record that parses and a directory with its files."""
    layout, found = Layout(root), set()
    for path in (root / "models").iterdir():
        record = load_record(layout, path.name)
        assert record is not None, f"models/{path.name} without a readable record"
        for f in record.files:
            assert (path / f.path).stat().st_size == f.size, f"{path.name}/{f.path} partial"
        found.add(path.name)
    return found


def cli_ls(capsys: pytest.CaptureFixture[str], root: Path) -> list[dict[str, Any]]:
    code = main(["ls", "--json", "--cache-dir", str(root)], environ={})
    out, err = capsys.readouterr()
    assert code == 0, err
    views: list[dict[str, Any]] = json.loads(out)
    return views


def small_models(src: Path, count: int, size: int = 4096) -> list[str]:
    src.mkdir(parents=True, exist_ok=True)
    names = []
    for i in range(count):
        (src / f"m{i:03d}.bin").write_bytes(os.urandom(size))
        names.append(f"m{i:03d}.bin")
    return names


def test_cli_verbs_in_a_loop_against_a_committing_daemon(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "cache"
    names = small_models(tmp_path / "src", 120)
    with run_origin(tmp_path / "src") as origin, daemon(root, tmp_path) as url:
        uris = [f"{origin.url}/{n}" for n in names]
        errors: list[BaseException] = []

        def post_all() -> None:
            try:
                for uri in uris:
                    call(f"{url}/v1/models", "POST", {"uri": uri})
            except BaseException as exc:  # reported by the main thread
                errors.append(exc)

        poster = threading.Thread(target=post_all)
        poster.start()
        removed: set[str] = set()
        rounds, deadline = 0, time.monotonic() + 40
        while time.monotonic() < deadline:  # ls (and now and then rm) while the daemon commits
            rounds += 1
            views = cli_ls(capsys, root)
            ready = sorted(v["id"] for v in views if v["state"] == "ready")
            if not poster.is_alive() and len(ready) + len(removed) == len(uris):
                break
            if ready and rounds % 8 == 0:
                victim = ready[len(ready) // 2]
                assert main(["rm", victim, "--cache-dir", str(root)], environ={}) == 0, capsys.readouterr()
                removed.add(victim)
        poster.join()
        assert not errors, errors
        wanted = {model_ref(u).id for u in uris} - removed
        daemon_view = ready_views(url)
        cli_view = {v["id"] for v in cli_ls(capsys, root) if v["state"] == "ready"}
        assert len(removed) >= 3, (rounds, len(daemon_view))
        assert set(daemon_view) == wanted == cli_view == on_disk(root)
        assert all(Path(v["path"]).is_dir() for v in daemon_view.values())
        for victim in removed:  # the daemon forgot what the CLI removed
            with pytest.raises(urllib.error.HTTPError) as err:
                call(f"{url}/v1/models/{victim}")
            err.value.close()
            assert err.value.code == 404


def test_read_only_verbs_create_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "never-used"
    assert main(["ls", "--cache-dir", str(root)], environ={}) != 0
    assert main(["verify", "0123456789abcdef", "--cache-dir", str(root)], environ={}) != 0
    assert not root.exists()  # no layout, no lock file
    root.mkdir()
    assert cli_ls(capsys, root) == []
    assert os.listdir(root) == []


def test_kill_9_during_commits_loses_nothing_reported_ready(tmp_path: Path) -> None:
    root = tmp_path / "cache"
    names = small_models(tmp_path / "src", 200, size=2048)
    rng = random.Random(13)
    seen_ready: set[str] = set()
    accepted: set[str] = set()
    with run_origin(tmp_path / "src") as origin:
        uris = [f"{origin.url}/{n}" for n in names]
        for point in range(20):
            with daemon(root, tmp_path) as url:
                ready = ready_views(url)
                assert seen_ready <= set(ready), f"kill {point}: lost {seen_ready - set(ready)}"
                for uri in uris[point * 10 : point * 10 + 10]:
                    accepted.add(call(f"{url}/v1/models", "POST", {"uri": uri})["id"])
                time.sleep(rng.uniform(0.0, 0.25))  # a random point among the commits
                seen_ready |= set(ready_views(url))
            on_disk(root)  # after the kill -9: nothing partial visible in models/
        with daemon(root, tmp_path) as url:  # accepted fetches are resumed after the restarts
            deadline = time.monotonic() + 30
            while not accepted <= set(ready_views(url)) and time.monotonic() < deadline:
                time.sleep(0.1)
            assert accepted == set(ready_views(url)) == on_disk(root)
    assert seen_ready and len(seen_ready) < len(accepted) + 1
