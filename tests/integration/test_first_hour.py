"""A new user's first hour, as they meet it: bounded waits, one-line errors, flags, names, output.

Every test runs the real CLI (``main(argv)`` or a subprocess) and asserts what the user reads.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.cli import main as agent_main
from tests.fixtures.polling import eventually


@contextlib.contextmanager
def loopback_server(on_connection: Callable[[socket.socket], None]) -> Iterator[int]:
    """A loopback TCP server: each accepted connection is held open (closed at the end) and handed
    to ``on_connection`` on the accept thread. Yields the port."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    server.settimeout(0.1)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                conn = server.accept()[0]
            except (TimeoutError, OSError):
                continue
            held.append(conn)
            with contextlib.suppress(OSError):
                on_connection(conn)

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield int(server.getsockname()[1])
    finally:
        stop.set()
        thread.join()
        for conn in held:
            conn.close()
        server.close()


def black_hole() -> contextlib.AbstractContextManager[int]:
    """A loopback server that accepts connections and never answers a byte."""
    return loopback_server(lambda _conn: None)


def run_cli(
    *argv: str, env: dict[str, str] | None = None, timeout: float = 60
) -> tuple[int, str, str, float]:
    """``python -m agent ARGV`` as a user runs it: exit code, stdout, stderr, seconds."""
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "agent", *argv],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )
    return proc.returncode, proc.stdout, proc.stderr, time.monotonic() - start


def last_line(err: str) -> str:
    return err.strip().splitlines()[-1]


@pytest.mark.parametrize("scheme", ["http", "s3"])
def test_fetch_from_a_silent_origin_fails_within_its_timeouts(scheme: str, tmp_path: Path) -> None:
    env = {
        "AWS_ACCESS_KEY_ID": "AKIAIOSFODNN7EXAMPLE",
        "AWS_SECRET_ACCESS_KEY": "secret",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    with black_hole() as port:
        uri = f"http://127.0.0.1:{port}/model.bin" if scheme == "http" else "s3://bucket/model"
        env["AWS_ENDPOINT_URL"] = f"http://127.0.0.1:{port}"
        code, out, err, seconds = run_cli(
            "fetch", uri, "--cache-dir", str(tmp_path), "--read-timeout", "0.5", "--retries", "1", env=env
        )
    assert code == 1 and out == ""
    assert seconds < 20  # two tries of 0.5 s plus a back-off and start-up; was ~30 minutes for S3
    lines = err.strip().splitlines()
    retry = [line for line in lines if "WARNING" in line and "retrying" in line]
    assert len(retry) == 1 and "1/2" in retry[0], err
    assert last_line(err).startswith("model-agent fetch: "), err
    assert "timeout" in last_line(err).lower() or "timed out" in last_line(err).lower(), err
    assert "Traceback" not in err and "AKIA" not in err


def agent(
    capsys: pytest.CaptureFixture[str], *argv: str, environ: dict[str, str] | None = None
) -> tuple[int, str, str]:
    code = agent_main(list(argv), environ=environ or {})
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("prog", ["agent", "scheduler_extender", "serving"])
def test_version_prints_the_installed_version(prog: str) -> None:
    import importlib.metadata

    proc = subprocess.run(
        [sys.executable, "-m", prog, "--version"], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0
    assert proc.stdout.split()[-1] == importlib.metadata.version("model-locality")


def test_log_flags_work_before_and_after_the_verb(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "records").mkdir()
    for argv in (["ls", "-v"], ["-v", "ls"], ["ls", "-q"], ["ls", "--quiet", "--debug-libs"]):
        code, _, err = agent(capsys, *argv, "--cache-dir", str(tmp_path))
        assert code == 0 and "usage" not in err, argv


@pytest.mark.parametrize(
    ("environ", "named"),
    [
        pytest.param({"MODEL_LOCALITY_AGENT_PORT": "abc"}, "MODEL_LOCALITY_AGENT_PORT='abc'", id="new name"),
        pytest.param({"MODEL_LOCALITY_PORT": "abc"}, "MODEL_LOCALITY_PORT='abc'", id="old name"),
        pytest.param(
            {"MODEL_LOCALITY_READ_TIMEOUT": "soon"}, "MODEL_LOCALITY_READ_TIMEOUT='soon'", id="timeout"
        ),
    ],
)
def test_a_bad_variable_is_named(
    environ: dict[str, str], named: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = agent(capsys, "serve", "--cache-dir", str(tmp_path), environ=environ)
    assert code == 2 and out == ""
    assert last_line(err) == f"model-agent serve: {named} is not an integer".replace(
        "'soon' is not an integer", "'soon' is not a number"
    )


def test_old_variable_names_still_work_with_one_warning(tmp_path: Path) -> None:
    from agent.cli import build_parser
    from agent.config import settings_from_args
    from scheduler_extender.cli import build_parser as extender_parser
    from scheduler_extender.config import settings_from_args as extender_settings

    old = {"MODEL_LOCALITY_PORT": "9001", "MODEL_LOCALITY_HOST": "127.0.0.2"}
    args = build_parser().parse_args(["serve"])
    assert (settings_from_args(args, old).port, settings_from_args(args, old).host) == (9001, "127.0.0.2")
    both = {**old, "MODEL_LOCALITY_AGENT_PORT": "9100", "MODEL_LOCALITY_EXTENDER_PORT": "9200"}
    assert settings_from_args(args, both).port == 9100
    assert extender_settings(extender_parser().parse_args(["serve"]), both).port == 9200
    _, _, err, _ = run_cli(
        "serve", "--cache-dir", str(tmp_path / "c"), "--port", "0", env={"MODEL_LOCALITY_HOST": "::bad::"}
    )
    warnings = [line for line in err.splitlines() if "deprecated" in line]
    assert warnings and "use MODEL_LOCALITY_AGENT_HOST" in warnings[0], err


def test_library_loggers_stay_quiet_and_secrets_are_redacted(capsys: pytest.CaptureFixture[str]) -> None:
    import logging

    from locality.settings import redact, setup_logging

    setup_logging(1)
    assert logging.getLogger("botocore").getEffectiveLevel() == logging.WARNING
    assert logging.getLogger("agent").getEffectiveLevel() == logging.DEBUG
    setup_logging(1, debug_libs=True)
    assert logging.getLogger("botocore").getEffectiveLevel() == logging.DEBUG
    logging.getLogger("botocore.test").debug("key AKIAIOSFODNN7EXAMPLE; Authorization: Bearer s3cr3t-t0ken")
    setup_logging(0)
    err = capsys.readouterr().err
    assert "AKIAIOSFODNN7EXAMPLE" not in err and "s3cr3t" not in err and "Bearer ***" in err
    assert redact("X-Amz-Credential=AKIAIOSFODNN7EXAMPLE%2F2026") == "X-Amz-Credential=***"


@contextlib.contextmanager
def busy_port() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(1)
        yield int(sock.getsockname()[1])


@pytest.mark.parametrize("module", ["agent", "scheduler_extender", "serving"])
def test_serve_on_a_port_in_use_is_one_line(module: str, tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("t0k3n-for-tests")
    flags = {
        "agent": ["serve", "--cache-dir", str(tmp_path / "cache"), "--token-file", str(token)],
        "scheduler_extender": ["serve", "--token-file", str(token)],
        "serving": ["--model-dir", str(tmp_path)],
    }[module]
    with busy_port() as port:
        proc = subprocess.run(
            [sys.executable, "-m", module, *flags, "--host", "127.0.0.1", "--port", str(port)],
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, "KUBECONFIG": "", "KUBERNETES_SERVICE_HOST": ""},
        )
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert last_line(proc.stderr).endswith(f"cannot listen on 127.0.0.1:{port}: Address already in use")


@pytest.mark.parametrize("kind", ["a file", "below a file"])
def test_agent_serve_with_an_unusable_cache_dir_is_one_line(
    kind: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "f").write_text("not a directory")
    cache = tmp_path / "f" if kind == "a file" else tmp_path / "f" / "cache"
    token = tmp_path / "token"
    token.write_text("t0k3n-for-tests")
    code, out, err = agent(capsys, "serve", "--cache-dir", str(cache), "--token-file", str(token))
    assert code == 1 and out == ""
    why = "is not a directory" if kind == "a file" else "Not a directory"
    assert err.strip().splitlines() == [f"model-agent serve: cannot use cache directory {cache}: {why}"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes anywhere")
def test_agent_serve_with_a_read_only_cache_dir_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cache = tmp_path / "ro"
    cache.mkdir(mode=0o555)
    token = tmp_path / "token"
    token.write_text("t0k3n-for-tests")
    code, _, err = agent(capsys, "serve", "--cache-dir", str(cache), "--token-file", str(token))
    assert (
        code == 1
        and last_line(err) == f"model-agent serve: cannot use cache directory {cache}: Permission denied"
    )


@pytest.mark.parametrize("verb", [["ls"], ["verify", "0123456789abcdef"]])
def test_read_only_verbs_create_nothing(
    verb: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "mistyped"
    code, out, err = agent(capsys, *verb, "--cache-dir", str(missing))
    assert code == 1 and out == ""
    expected = f"model-agent {verb[0]}: no cache at {missing}: it does not exist"
    assert last_line(err) == f"{expected} (--cache-dir or MODEL_LOCALITY_CACHE_DIR)"
    assert not missing.exists()


def test_wait_says_what_it_waits_for_and_keeps_its_timeout(capsys: pytest.CaptureFixture[str]) -> None:
    with black_hole() as port:  # an agent that accepts and never answers: each request would hang
        start = time.monotonic()
        code, out, err = agent(
            capsys, "wait", "s3://models/m", "--agent-url", f"http://127.0.0.1:{port}", "--timeout", "11"
        )
        seconds = time.monotonic() - start
    assert code == 124 and out == ""
    # The POST hangs for its 10 s limit; the next request, at ~10.5 s, gets only the ~0.5 s left.
    # Unclipped it would hang another 10 s (~20.5 s in all); the margin is for a loaded CI machine.
    assert 11.0 <= seconds < 14.0
    waiting = [line for line in err.splitlines() if "waiting for s3://models/m since" in line]
    assert len(waiting) == 1, err
    assert last_line(err).startswith("model-agent wait: timed out after 11s waiting for s3://models/m")


async def test_a_second_fetch_says_who_holds_the_model(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import asyncio

    from agent.store.staging import staging_lock
    from locality.records import Layout

    layout = Layout(tmp_path)

    async def fetch_again() -> None:
        async with staging_lock(layout, "0123456789abcdef"):
            pass

    def said_waiting() -> bool:
        return any("waiting for another fetch" in r.getMessage() for r in caplog.records)

    async with staging_lock(layout, "0123456789abcdef"):
        second = asyncio.ensure_future(fetch_again())
        await eventually(said_waiting, what="the second fetch waiting")
        assert not second.done()
    await asyncio.wait_for(second, 5)
    waits = [r.getMessage() for r in caplog.records if "waiting for another fetch" in r.getMessage()]
    assert waits == [
        f"waiting for another fetch of model 0123456789abcdef (pid {os.getpid()} since " + waits[0][-9:]
    ]


def test_ls_prints_a_table_people_read_and_json_keeps_bytes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    from tests.fixtures.models import write_safetensors
    from tests.fixtures.origin import run_origin

    src = tmp_path / "src"
    write_safetensors(src / "w.safetensors", 3 * 2**20, seed=3)
    flags = ["--cache-dir", str(tmp_path / "cache"), "--chunk-size", "1Mi"]
    with run_origin(src) as origin:
        uri = f"{origin.url}/w.safetensors"
        assert agent(capsys, "fetch", uri, *flags)[0] == 0
    code, out, _ = agent(capsys, "ls", *flags)
    header, row = out.splitlines()
    assert code == 0 and header.split() == ["ID", "STATE", "SIZE", "REVISION", "PINS", "URI"]
    assert " ready " in row and " MiB " in row and row.endswith(uri)
    code, out, _ = agent(capsys, "ls", "--json", *flags)
    [view] = json.loads(out)
    assert view["bytes_total"] == (src / "w.safetensors").stat().st_size  # exact bytes, not units
    assert view["revision"] and f" {view['revision'][:12]} " in row  # the table shows it short


async def test_post_and_get_of_a_model_answer_the_same_object(
    aiohttp_client: Any, tmp_path: Path, s3_env: dict[str, str], s3_server: Any
) -> None:
    import uuid

    from agent.config import Settings
    from agent.face.app import create_app
    from locality.identity import model_ref
    from tests.fixtures.models import synthetic_model

    local = synthetic_model(tmp_path / "src", shards=1, shard_bytes=64 << 10)
    prefix = f"first-hour/{uuid.uuid4().hex[:8]}/tiny"
    s3_server.upload_dir(local, "models", prefix)
    uri = f"s3://models/{prefix}"
    settings = Settings(cache_dir=tmp_path / "cache", token="t0k3n", quota_bytes=1 << 30).validate()
    client = await aiohttp_client(create_app(settings))
    auth = {"Authorization": "Bearer t0k3n"}
    posted = await client.post("/v1/models", json={"uri": uri}, headers=auth)
    got = await client.get(f"/v1/models/{model_ref(uri).id}")
    assert posted.status == 202 and got.status == 200
    assert set((await posted.json()).keys()) == set((await got.json()).keys())
    async def ready() -> bool:
        return bool((await (await client.get(f"/v1/models/{model_ref(uri).id}")).json())["state"] == "ready")

    await eventually(ready, 30, "the model ready", interval=0.05)
    again = await (await client.post("/v1/models", json={"uri": uri}, headers=auth)).json()
    assert again == await (await client.get(f"/v1/models/{model_ref(uri).id}")).json()


def answers_head_then_goes_silent(size: int) -> contextlib.AbstractContextManager[int]:
    """An origin that answers HEAD (size, ranges) and then never answers a GET."""

    def answer(conn: socket.socket) -> None:
        conn.settimeout(5)
        if conn.recv(65536).startswith(b"HEAD"):
            conn.sendall(
                b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nAccept-Ranges: bytes\r\n"
                b'ETag: "e1"\r\nConnection: close\r\n\r\n' % size
            )

    return loopback_server(answer)


def test_a_chunk_from_a_silent_origin_fails_within_the_read_timeout(tmp_path: Path) -> None:
    with answers_head_then_goes_silent(2**20) as port:
        code, out, err, seconds = run_cli(
            "fetch",
            f"http://127.0.0.1:{port}/w.bin",
            "--cache-dir",
            str(tmp_path),
            "--read-timeout",
            "0.5",
            "--retries",
            "1",
        )
    assert code == 1 and out == "" and seconds < 20
    retry = [line for line in err.splitlines() if "WARNING" in line and "retrying w.bin chunk 0" in line]
    assert len(retry) == 1 and "after try 1/2" in retry[0], err
    assert "no answer within 0.5s (read timeout)" in last_line(err) and "gave up after 2 tries" in last_line(
        err
    )
