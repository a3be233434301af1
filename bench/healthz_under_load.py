"""/healthz latency of a running agent while it evicts a 4 GiB model and fetches another at full speed.

A real ``model-agent serve`` subprocess (run from ``--checkout``, default this tree) owns a cache
that already holds one committed, fully allocated (``posix_fallocate``) model of ``--evict-gib``.
The quota leaves no room for the incoming model, so the POST of a ``--fetch-gib`` model from a
loopback origin (this repo's aiohttp range origin, in its own process) evicts the big one first.
A prober GETs ``/healthz`` back to back on one keep-alive connection from POST until the new model
is ready and the old directory is gone; it prints p50/p99/max. Target: p99 < 50 ms.

    .venv/bin/python bench/healthz_under_load.py                      # this tree
    git worktree add /tmp/wt-before <commit>
    .venv/bin/python bench/healthz_under_load.py --checkout /tmp/wt-before
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent
GiB, MiB = 2**30, 2**20
TOKEN = "bench-token"
CHUNK = 32 * MiB


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--checkout", type=Path, default=HERE, help="tree whose agent runs (default: this one)"
    )
    parser.add_argument("--evict-gib", type=float, default=4.0)
    parser.add_argument("--fetch-gib", type=float, default=1.0)
    parser.add_argument(
        "--written", action="store_true", help="write the evicted model's bytes (not just fallocate)"
    )
    parser.add_argument("--work", type=Path, help="scratch dir (default: a temp dir on /tmp's disk)")
    args = parser.parse_args()
    sys.path.insert(0, str(HERE))
    from locality.identity import model_ref
    from tests.fixtures.ports import free_port

    work = Path(args.work or tempfile.mkdtemp(prefix="healthz-bench-"))
    src, root = work / "src", work / "cache"
    src.mkdir(parents=True, exist_ok=True)
    fetch_bytes, evict_bytes = int(args.fetch_gib * GiB), int(args.evict_gib * GiB)
    with (src / "incoming.bin").open("wb") as f:
        f.truncate(fetch_bytes)  # sparse: the origin reads zeros at memory speed
    origin_port, agent_port = free_port(), free_port()
    origin = start_origin(src, origin_port)
    try:  # no origin or agent outlives the run, whatever fails
        old_uri = f"http://127.0.0.1:{origin_port}/old.bin"
        old_id = model_ref(old_uri).id
        commit_by_hand(root, old_id, old_uri, evict_bytes, written=args.written)
        quota = evict_bytes + fetch_bytes // 2  # the new model fits only once the old one is gone
        agent = start_agent(args.checkout, root, work, agent_port, quota)
        try:
            samples, seconds = probe_while_fetching(
                agent_port, f"http://127.0.0.1:{origin_port}/incoming.bin", root / "models" / old_id
            )
        finally:
            stop(agent)
    finally:
        stop(origin)
    ms = sorted(s * 1000 for s in samples)
    p99 = ms[min(len(ms) - 1, int(len(ms) * 0.99))]
    print(
        json.dumps(
            {
                "checkout": str(args.checkout),
                "evict_gib": args.evict_gib,
                "fetch_gib": args.fetch_gib,
                "seconds": round(seconds, 2),
                "probes": len(ms),
                "p50_ms": round(statistics.median(ms), 2),
                "p99_ms": round(p99, 2),
                "max_ms": round(ms[-1], 2),
                "target_p99_ms": 50,
            }
        )
    )
    return 0


def commit_by_hand(root: Path, model_id: str, uri: str, size: int, *, written: bool) -> None:
    """A committed model as recovery accepts it: one allocated file and its (v1) record."""
    for sub in ("models", "records", "staging", "trash"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    model = root / "models" / model_id
    model.mkdir()
    fd = os.open(model / "old.bin", os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        os.posix_fallocate(fd, 0, size)  # real extents: freeing them is what makes unlink slow
        block = b"\x01" * (64 * MiB)
        for offset in range(0, size if written else 0, len(block)):
            os.pwrite(fd, block[: size - offset], offset)
        os.fsync(fd)
    finally:
        os.close(fd)
    chunks = -(-size // CHUNK)
    record = {
        "version": 1,
        "digest_scheme": "xxh3_128-of-chunk-xxh3_128",
        "id": model_id,
        "uri": uri,
        "label": f"model-locality.io/old-bin.{model_id[:8]}",
        "total_bytes": size,
        "etag": None,
        "fetched_at": 1.0,
        "last_used": 1.0,
        "pins": [],
        "files": [
            {
                "path": "old.bin",
                "size": size,
                "xxh3_128": "0" * 32,
                "chunk_bytes": CHUNK,
                "chunk_digests": ["0" * 32] * chunks,
                "etag": None,
            }
        ],
    }
    (root / "records" / f"{model_id}.json").write_text(json.dumps(record))


def start_origin(src: Path, port: int) -> subprocess.Popen[bytes]:
    code = (
        "import sys, time, pathlib; sys.path.insert(0, sys.argv[3])\n"
        "import tests.fixtures.origin as o\n"
        "o.free_port = lambda: int(sys.argv[2])\n"
        "with o.run_origin(pathlib.Path(sys.argv[1])):\n"
        "    time.sleep(3600)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code, str(src), str(port), str(HERE)])
    return listening(proc, port)


def start_agent(checkout: Path, root: Path, work: Path, port: int, quota: int) -> subprocess.Popen[bytes]:
    (work / "token").write_text(TOKEN)
    argv = [sys.executable, "-m", "agent", "serve", "--cache-dir", str(root), "--host", "127.0.0.1"]
    argv += ["--port", str(port), "--token-file", str(work / "token"), "--quota", str(quota)]
    env = {**os.environ, "PYTHONPATH": str(checkout)}
    log = (work / "agent.log").open("ab")
    proc = subprocess.Popen(argv, cwd=checkout, env=env, stdout=log, stderr=log)
    return listening(proc, port)


def listening(proc: subprocess.Popen[bytes], port: int) -> subprocess.Popen[bytes]:
    """``proc`` once it listens on ``port``; stopped, and the error raised, if it never does."""
    try:
        wait_port(port)
    except BaseException:
        stop(proc)
        raise
    return proc


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    proc.wait(30)


def wait_port(port: int) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
            conn.request("GET", "/healthz")
            conn.getresponse().read()
            conn.close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"nothing answered on port {port}")


def probe_while_fetching(port: int, uri: str, old_dir: Path) -> tuple[list[float], float]:
    samples: list[float] = []
    stop = threading.Event()

    def prober() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        while not stop.is_set():
            started = time.perf_counter()
            conn.request("GET", "/healthz")
            conn.getresponse().read()
            samples.append(time.perf_counter() - started)
            time.sleep(0.002)
        conn.close()

    thread = threading.Thread(target=prober)
    thread.start()
    started = time.monotonic()
    try:
        api = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
        api.request("POST", "/v1/models", body=json.dumps({"uri": uri}), headers=headers)
        model_id = json.loads(api.getresponse().read())["id"]
        while True:
            api.request("GET", f"/v1/models/{model_id}")
            view = json.loads(api.getresponse().read())
            if view.get("state") == "failed":
                raise SystemExit(f"fetch failed: {view.get('error')}")
            if view.get("state") == "ready" and not old_dir.exists():
                break
            time.sleep(0.1)
    finally:
        stop.set()
        thread.join()
    return samples, time.monotonic() - started


if __name__ == "__main__":
    raise SystemExit(main())
