"""``model-agent fetch | ls | verify | rm | gc`` as a user runs them, including kill -9 and resume."""

from __future__ import annotations

import filecmp
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agent.cli import main
from agent.config import Settings
from agent.fetch.cache import Cache
from agent.lifecycle.views import record_view
from locality.identity import model_ref
from locality.records import Layout, load_record
from tests.fixtures.models import write_safetensors
from tests.fixtures.origin import Faults, run_origin

MiB = 2**20


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv), environ={})
    out, err = capsys.readouterr()
    return code, out, err


def test_fetch_ls_verify_rm_gc(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "src"
    write_safetensors(src / "a.safetensors", 2 * MiB, seed=1)
    write_safetensors(src / "b.safetensors", 3 * MiB, seed=2)
    cache_dir = str(tmp_path / "cache")
    flags = ["--cache-dir", cache_dir, "--chunk-size", "1Mi"]
    with run_origin(src) as origin:
        code, out, err = cli(capsys, "fetch", f"{origin.url}/a.safetensors", *flags)
        assert code == 0 and err == ""  # quiet when stderr is not a terminal
        model_dir = Path(out.strip())
        assert filecmp.cmp(model_dir / "a.safetensors", src / "a.safetensors", shallow=False)
        assert cli(capsys, "fetch", f"{origin.url}/b.safetensors", *flags)[0] == 0
        code, out, err = cli(capsys, "fetch", f"{origin.url}/missing.safetensors", *flags)
        assert code != 0 and "404" in err and len(err.strip().splitlines()) == 1
    code, out, _ = cli(capsys, "ls", "--json", *flags)
    listed = json.loads(out)
    cache = Cache(Settings(cache_dir=Path(cache_dir)))
    assert listed == [record_view(r, cache.model_path(r.id)) for r in cache.records()]
    assert {v["uri"] for v in listed} == {f"{origin.url}/a.safetensors", f"{origin.url}/b.safetensors"}
    a_id = model_ref(f"{origin.url}/a.safetensors").id
    b_id = model_ref(f"{origin.url}/b.safetensors").id
    assert cli(capsys, "verify", a_id, *flags)[0] == 0
    with (model_dir / "a.safetensors").open("r+b") as f:
        f.seek(MiB + 100)
        f.write(b"\xff\x00")
    code, _, err = cli(capsys, "verify", a_id, *flags)
    assert code != 0 and "a.safetensors" in err
    cache.pin(b_id, "pod/ns/p")
    code, _, err = cli(capsys, "rm", b_id, *flags)
    assert code != 0 and "pinned" in err
    assert cli(capsys, "rm", b_id, "--force", *flags)[0] == 0
    code, out, _ = cli(capsys, "gc", *flags, "--quota", "2Mi")  # 2 MiB > 0.9 * 2 MiB: a goes
    assert code == 0 and f"evicted {a_id}" in out
    code, out, _ = cli(capsys, "ls", *flags)
    assert code == 0 and out == ""  # no models, no table
    code, _, err = cli(capsys, "verify", a_id, *flags)
    assert code != 0 and "no model" in err


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        pytest.param(["fetch", "ftp://x/y"], "unsupported scheme", id="bad-scheme"),
        pytest.param(["fetch", "s3://Bad_Bucket!/x"], "bucket", id="bad-bucket"),
        pytest.param(["rm", "0123456789abcdef"], "no model", id="unknown-id"),
        pytest.param(
            ["fetch", "http://127.0.0.1:1/x.bin", "--chunk-size", "1k"], "chunk size", id="bad-flag"
        ),
    ],
)
def test_user_errors_are_one_line(
    argv: list[str], needle: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = cli(capsys, *argv, "--cache-dir", str(tmp_path / "cache"))
    assert code != 0 and needle in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_kill_9_then_fetch_again_resumes(tmp_path: Path) -> None:
    src = write_safetensors(tmp_path / "src" / "w.safetensors", 12 * MiB, seed=7)
    root = tmp_path / "cache"
    argv = [
        sys.executable,
        "-m",
        "agent",
        "fetch",
        "--cache-dir",
        str(root),
        "--chunk-size",
        "1Mi",
        "--concurrency",
        "2",
    ]
    with run_origin(src.parent, faults=Faults(throttle_bps=6 * MiB)) as origin:
        uri = f"{origin.url}/w.safetensors"
        ref = model_ref(uri)
        journal = root / "staging" / ref.id / "journal"
        proc = subprocess.Popen([*argv, uri], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and (
                not journal.exists() or len(journal.read_text().splitlines()) < 4
            ):
                assert proc.poll() is None, proc.communicate()
                time.sleep(0.05)
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.communicate()
        finished = {json.loads(line)[1] for line in journal.read_text().splitlines() if line.endswith("]")}
        assert 4 <= len(finished) < 12
        assert not (root / "models" / ref.id).exists()
        assert load_record(Layout(root), ref.id) is None
        before = len(origin.gets())
        origin.faults.throttle_bps = 0
        done = subprocess.run([*argv, uri], capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        again = origin.gets()[before:]
    starts = {int(r.split("=")[1].split("-")[0]) // MiB for r in again}
    assert starts and not starts & finished, (starts, finished)
    assert filecmp.cmp(Path(done.stdout.strip()) / "w.safetensors", src, shallow=False)
    assert sorted(os.listdir(root / "staging")) in ([], [f"{ref.id}.lock"])


def test_fetch_shows_a_progress_bar_on_a_terminal(tmp_path: Path) -> None:
    import fcntl
    import pty
    import struct
    import termios

    src = write_safetensors(tmp_path / "src" / "w.safetensors", 2 * MiB, seed=5)
    with run_origin(src.parent) as origin:
        leader, follower = pty.openpty()
        fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # a real size
        try:
            argv = [
                sys.executable,
                "-m",
                "agent",
                "fetch",
                "--cache-dir",
                str(tmp_path / "c"),
                "--chunk-size",
                "1Mi",
            ]
            proc = subprocess.run(
                [*argv, f"{origin.url}/w.safetensors"], stdout=subprocess.PIPE, stderr=follower, timeout=60
            )
            os.close(follower)
            chunks = []
            while True:
                try:
                    data = os.read(leader, 65536)
                except OSError:  # EIO: the terminal's other end is closed and drained
                    break
                if not data:
                    break
                chunks.append(data)
        finally:
            os.close(leader)
    shown = b"".join(chunks).decode(errors="replace")
    assert proc.returncode == 0
    assert "100%" in shown and "2.00M" in shown and "B/s" in shown


def test_a_disk_error_in_a_verb_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """An OSError inside a verb (here: the model directory is immutable, so even root cannot rename it
    into the trash) is one stderr line and exit 1, never a traceback."""
    src = tmp_path / "src"
    write_safetensors(src / "a.safetensors", MiB, seed=3)
    flags = ["--cache-dir", str(tmp_path / "cache"), "--chunk-size", "1Mi"]
    with run_origin(src) as origin:
        code, out, _ = cli(capsys, "fetch", f"{origin.url}/a.safetensors", *flags)
    assert code == 0
    model_dir = Path(out.strip())
    if subprocess.run(["chattr", "+i", str(model_dir)], capture_output=True).returncode != 0:
        pytest.skip("chattr +i is not supported on this file system")
    try:
        code, _, err = cli(capsys, "rm", model_dir.name, *flags)
    finally:
        subprocess.run(["chattr", "-i", str(model_dir)], check=True)
    assert code == 1
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert err.startswith("model-agent rm: rm failed in ") and "Operation not permitted" in err
