"""Cold start of a serving pod: time to ready from the node cache vs. straight from S3.

Run by hand from the repository root (not in CI; about 3-5 minutes on a 2-core box)::

    .venv/bin/python bench/coldstart.py [--synthetic-gib 2] [--repeats 3] [--device auto]

Rows, each the median of ``--repeats`` runs (the S3 rows of the synthetic model run once):

* MiniLM (all-MiniLM-L6-v2, 91 MB): ``model-serve`` process start -> ``/readyz`` 200, with the
  model directory (a) in the node cache with the page cache warm, (b) in the node cache with its
  pages evicted (``posix_fadvise(DONTNEED)``: what a node sees after the agent fetched long ago),
  (c) downloaded from S3 by boto3 first (what a pod does without the cache) then served. The
  start-up phases come from the server's own ``/metrics``.
* Synthetic multi-GB safetensors model: it cannot serve embeddings, so its rows time loading
  every tensor onto the device with ``safetensors.torch.load_file`` (no process start), from the
  cache (warm/cold) and after a boto3 download from S3.
* The floor: reading the same bytes raw (warm and cold), and the digest check serving runs first.

``--loaders GIB...`` runs only the loader rows, cold, interleaved per repeat: three plain reads
(1 thread ``readinto``, 4 threads ``preadv``, 4 threads ``O_DIRECT``; each into a reused
buffer), ``load_file`` (+ clone on CPU) and ``serving.loader``; the fastest plain read of the run
is the floor the ratios use (bench/README.md, "Loader").

``--serve-load GB`` runs only the server's own ``load`` phase gauge for a BERT-like fp32 model of
GB in 4 shards (MiniLM widened: it embeds like MiniLM, so warm-up passes), as root: per repeat,
page cache cold (``drop_caches``) then warm, interleaved: a raw single-thread ``readinto`` of the
same files; ``model-serve`` with the model found at once (``--model-dir``: the torch import is
part of what the pod waits for) and found after the server logged its imports done (a stub
agent answers ``fetching`` until then; the caches are dropped or warmed just before it answers);
a fresh ``import serving.model``. ``--checkout NAME=DIR`` adds the same gauges for another tree.

S3 is moto's server (started here). Stock moto re-reads a whole object on every GET and is 20-60x
slower than a real origin, so the S3 rows are an upper bound, not S3's speed; boto3
fetches each object with one GET here, since a ranged GET costs moto the whole object.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from locality.recordcheck import verify_model_dir  # noqa: E402
from tests.fixtures.cached import commit_copy  # noqa: E402
from tests.fixtures.models import minilm_dir, synthetic_model  # noqa: E402
from tests.fixtures.ports import free_port  # noqa: E402
from tests.fixtures.s3server import S3Server, run_s3_server  # noqa: E402

CHUNK = 32 * 2**20
MINILM_URI = "s3://models/sentence-transformers/all-MiniLM-L6-v2"


def files_of(model_dir: Path) -> list[Path]:
    return sorted(p for p in model_dir.rglob("*") if p.is_file())


def commit_to_cache(src: Path, root: Path, uri: str) -> Path:
    """Copy ``src`` into a node cache at ``root`` with the record the agent writes (for verify)."""
    return commit_copy(src, root, uri, CHUNK)


def evict(model_dir: Path) -> None:
    """Drop the directory's pages from the page cache (no root needed, unlike drop_caches), and
    check with util-linux ``fincore`` (where installed) that none is left."""
    os.sync()
    for path in files_of(model_dir):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
    if shutil.which("fincore"):
        argv = ["fincore", "--bytes", "--noheadings", "--output", "RES", *map(str, files_of(model_dir))]
        left = sum(
            int(x) for x in subprocess.run(argv, capture_output=True, text=True, check=True).stdout.split()
        )
        if left:
            raise SystemExit(f"{model_dir}: {left} bytes still in the page cache after eviction")


def warm(model_dir: Path) -> None:
    raw_read(model_dir)


def raw_read(model_dir: Path) -> float:
    """Seconds to read every byte once (``cat > /dev/null`` with an 8 MiB buffer)."""
    buf = bytearray(8 << 20)
    start = time.perf_counter()
    for path in files_of(model_dir):
        with path.open("rb", buffering=0) as f:
            while f.readinto(buf):
                pass
    return time.perf_counter() - start


def raw_parallel(
    model_dir: Path, *, direct: bool, threads: int = 4, block: int = 16 << 20, fresh: bool = False
) -> float:
    """Seconds to read every byte once with ``threads`` readers of 32 MiB ranges, ``preadv`` into
    one reused buffer each (page-aligned; ``O_DIRECT``: around the page cache). No destination
    memory is touched: the fastest plain read of the bytes, the loader's floor. ``fresh``: into
    new memory instead, one private anonymous map per file (what any loader that hands out tensors
    in memory of their own pays on top: first touch of every page), but no hashing, no tensors."""
    import mmap
    import threading
    from concurrent.futures import ThreadPoolExecutor

    dest = {
        p: memoryview(
            mmap.mmap(
                -1, -(-p.stat().st_size // 4096) * 4096 or 1, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS
            )
        )
        for p in files_of(model_dir)
        if fresh
    }
    ranges = [
        (p, o, min(CHUNK, p.stat().st_size - o))
        for p in files_of(model_dir)
        for o in range(0, p.stat().st_size, CHUNK)
    ]
    start = time.perf_counter()
    todo = iter(ranges)
    lock = threading.Lock()

    def reader() -> None:
        buf = memoryview(mmap.mmap(-1, block, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS))
        while True:
            with lock:
                item = next(todo, None)
            if item is None:
                return
            path, offset, n = item
            fd = os.open(path, os.O_RDONLY | (os.O_DIRECT if direct else 0))
            try:
                done = 0
                while done < n:  # O_DIRECT: whole pages, so the file's tail is read rounded up
                    want = min(block, -(-(n - done) // 4096) * 4096) if direct else min(block, n - done)
                    into = dest[path][offset + done : offset + done + want] if fresh else buf[:want]
                    r = os.preadv(fd, [into], offset + done)
                    if r <= 0:
                        break
                    done += r
            finally:
                os.close(fd)

    with ThreadPoolExecutor(threads) as pool:
        for f in [pool.submit(reader) for _ in range(threads)]:
            f.result()
    return time.perf_counter() - start


def verify_time(model_dir: Path) -> float:
    start = time.perf_counter()
    problems = verify_model_dir(model_dir)
    if problems:
        raise SystemExit(f"verify failed: {problems}")
    return time.perf_counter() - start


def s3_download(s3: S3Server, uri: str, dest: Path) -> float:
    """boto3, one GET per object (see the module docstring), into ``dest``; seconds."""
    from boto3.s3.transfer import TransferConfig

    bucket, _, prefix = uri.removeprefix("s3://").partition("/")
    client = s3.client()
    config = TransferConfig(multipart_threshold=1 << 40)
    start = time.perf_counter()
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix + "/")
    for page in pages:
        for obj in page.get("Contents", []):
            target = dest / obj["Key"][len(prefix) + 1 :]
            target.parent.mkdir(parents=True, exist_ok=True)
            client.download_file(bucket, obj["Key"], str(target), Config=config)
    return time.perf_counter() - start


def time_to_ready(model_dir: Path, device: str) -> tuple[float, dict[str, float]]:
    """``model-serve`` process start -> ``/readyz`` 200; plus its start-up phase gauges."""
    port = free_port()
    argv = [sys.executable, "-m", "serving", "--model-dir", str(model_dir), "--port", str(port)]
    argv += ["--host", "127.0.0.1", "--device", device]
    start = time.perf_counter()
    proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        while True:
            if proc.poll() is not None:
                raise SystemExit(f"model-serve exited: {proc.stderr.read().decode() if proc.stderr else ''}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as resp:
                    if resp.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError):
                pass
            time.sleep(0.01)
        ready = time.perf_counter() - start
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
            phases = parse_phases(resp.read().decode())
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
    return ready, phases


def parse_phases(text: str) -> dict[str, float]:
    phases = {}
    for line in text.splitlines():
        if line.startswith("model_locality_serving_startup_phase_seconds{"):
            name = line.split('phase="', 1)[1].split('"', 1)[0]
            phases[name] = float(line.rsplit(" ", 1)[1])
    return phases


def load_tensors(model_dir: Path, device: str) -> float:
    """Seconds to load every tensor of every shard onto ``device`` (safetensors, torch)."""
    import torch
    from safetensors.torch import load_file

    start = time.perf_counter()
    for path in sorted(model_dir.glob("*.safetensors")):
        tensors = load_file(str(path), device=device)
        if device == "cpu":  # load_file maps the file lazily on CPU: copy, so the bytes are read
            tensors = {k: t.clone() for k, t in tensors.items()}
        del tensors
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - start


def median_of(repeats: int, prepare: Callable[[], None], measure: Callable[[], float]) -> float:
    values = []
    for _ in range(repeats):
        prepare()
        values.append(measure())
    return statistics.median(values)


def floor_rows(label: str, cached: Path, repeats: int, rows: list[tuple[str, ...]]) -> None:
    """The physical floor: reading the same bytes with the page cache warm, then cold."""
    for state, prepare in (("warm", lambda: warm(cached)), ("cold", lambda: evict(cached))):
        seconds = median_of(repeats, prepare, lambda: raw_read(cached))
        rows.append((label, f"floor: raw read, {state}", f"{seconds:.3f}", ""))


def bench_minilm(s3: S3Server, work: Path, repeats: int, device: str, rows: list[tuple[str, ...]]) -> None:
    src = minilm_dir()
    cached = commit_to_cache(src, work / "cache", MINILM_URI)
    size = sum(p.stat().st_size for p in files_of(cached)) / 1e6
    s3.upload_dir(src, "models", "sentence-transformers/all-MiniLM-L6-v2")
    label = f"MiniLM ({size:.0f} MB)"
    floor_rows(label, cached, repeats, rows)
    states: tuple[tuple[str, Callable[[], None]], ...] = (
        ("warm", lambda: warm(cached)),
        ("cold", lambda: evict(cached)),
    )
    for state, prepare in states:
        runs = []
        for _ in range(repeats):
            prepare()
            runs.append(time_to_ready(cached, device))
        ready, phases = sorted(runs, key=lambda r: r[0])[len(runs) // 2]
        rows.append((label, f"ready from node cache, page cache {state}", f"{ready:.3f}", fmt(phases)))
    s3_runs: list[tuple[float, float, dict[str, float]]] = []
    for i in range(repeats):
        dest = work / f"emptydir-{i}"
        fetched = s3_download(s3, MINILM_URI, dest)
        ready, phases = time_to_ready(dest, device)
        s3_runs.append((fetched + ready, fetched, phases))
        shutil.rmtree(dest)
    total, fetched, phases = sorted(s3_runs, key=lambda r: r[0])[len(s3_runs) // 2]
    rows.append(
        (
            label,
            "ready from S3 (boto3 download, then serve)",
            f"{total:.3f}",
            f"download {fetched:.3f}; " + fmt(phases),
        )
    )


def bench_synthetic(
    s3: S3Server, work: Path, gib: float, *, repeats: int, device: str, rows: list[tuple[str, ...]]
) -> None:
    shards = max(1, round(gib * 2))
    shard_bytes = int(gib * 2**30) // shards
    src = synthetic_model(work / "synthetic-src", shards=shards, shard_bytes=shard_bytes)
    uri = "s3://models/synthetic/big"
    cached = commit_to_cache(src, work / "cache", uri)
    label = f"synthetic ({shards} x {shard_bytes / 2**20:.0f} MiB)"
    floor_rows(label, cached, repeats, rows)
    rows.append(
        (
            label,
            "digest verify (serving's pre-load check), warm",
            f"{median_of(repeats, lambda: warm(cached), lambda: verify_time(cached)):.3f}",
            "",
        )
    )
    for state, prepare in (("warm", lambda: warm(cached)), ("cold", lambda: evict(cached))):
        t = median_of(repeats, prepare, lambda: load_tensors(cached, device))
        rows.append(
            (
                label,
                f"load to {device} from node cache, page cache {state}",
                f"{t:.3f}",
                "safetensors load_file (+ copy on CPU), no process start",
            )
        )
    s3.upload_dir(src, "models", "synthetic/big")
    shutil.rmtree(src)
    dest = work / "emptydir-synthetic"
    fetched = s3_download(s3, uri, dest)
    loaded = load_tensors(dest, device)
    rows.append(
        (
            label,
            f"load to {device} from S3 (boto3 download, then load)",
            f"{fetched + loaded:.3f}",
            f"download {fetched:.3f} (moto-bound), load {loaded:.3f}",
        )
    )
    shutil.rmtree(dest)


def load_ours(model_dir: Path, device: str, mapped: bool = True) -> float:
    """Seconds for ``serving.loader`` (one pass: read + per-chunk digest check) onto ``device``;
    ``mapped``: on the CPU, tensors over maps of the files (else over private copies)."""
    import torch

    from serving.loader import load_state_dict

    start = time.perf_counter()
    tensors = load_state_dict(model_dir, device=device, check=True, mapped=mapped)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    del tensors
    return seconds


def h2d_floor(nbytes: int, repeats: int) -> float:
    """Seconds to copy ``nbytes`` from pinned host memory to the GPU (the host->device floor)."""
    import torch

    host = torch.empty(nbytes, dtype=torch.uint8, pin_memory=True)
    dev = torch.empty(nbytes, dtype=torch.uint8, device="cuda")
    dev.copy_(host)
    torch.cuda.synchronize()
    values = []
    for _ in range(repeats):
        start = time.perf_counter()
        dev.copy_(host, non_blocking=True)
        torch.cuda.synchronize()
        values.append(time.perf_counter() - start)
    return statistics.median(values)


def bench_loaders(label: str, cached: Path, repeats: int, device: str, rows: list[tuple[str, ...]]) -> None:
    """Cold page cache each time, interleaved raw / load_file / ours per repeat."""
    ways: dict[str, Callable[[], float]] = {
        "raw read, 1 thread, 8 MiB readinto, cold": lambda: raw_read(cached),
        "raw read, 4 threads, preadv 16 MiB, cold": lambda: raw_parallel(cached, direct=False),
        "raw read, 4 threads, O_DIRECT 16 MiB, cold": lambda: raw_parallel(cached, direct=True),
        "not a floor: raw read into new memory, 4 threads, O_DIRECT, cold": lambda: raw_parallel(
            cached, direct=True, fresh=True
        ),
        f"safetensors load_file to {device}, cold": lambda: load_tensors(cached, device),
        f"ours (serving.loader, digests checked) to {device}, cold": lambda: load_ours(cached, device),
    }
    if device == "cpu":  # the default above maps the files; the private copy it replaced, side by side
        ways["ours, private copy (mapped=False), cpu, cold"] = lambda: load_ours(cached, device, mapped=False)
    times: dict[str, list[float]] = {k: [] for k in ways}
    for _ in range(repeats):
        for name, measure in ways.items():
            evict(cached)
            times[name].append(measure())
    raws = {k: statistics.median(v) for k, v in times.items() if k.startswith("raw read")}
    floor_name = min(raws, key=raws.__getitem__)
    raw = raws[floor_name]  # the floor: the fastest of the plain reads, this run
    rows.append(
        (
            label,
            f"floor = {floor_name.removesuffix(', cold')}",
            f"{raw:.3f}",
            f"loadavg {os.getloadavg()[0]:.2f}",
        )
    )
    size = sum(p.stat().st_size for p in cached.glob("*.safetensors"))
    if device.startswith("cuda"):
        floor = h2d_floor(size, repeats)
        rows.append(
            (label, "floor: pinned host->device copy", f"{floor:.3f}", f"{size / floor / 1e9:.1f} GB/s")
        )
    for name, values in times.items():
        t = statistics.median(values)
        detail = f"{size / t / 1e9:.2f} GB/s, {t / raw:.2f}x floor; runs " + " ".join(
            f"{v:.3f}" for v in values
        )
        rows.append((label, name, f"{t:.3f}", detail))


def loader_rows(
    work: Path, gibs: list[float], repeats: int, device: str, rows: list[tuple[str, ...]]
) -> None:
    """MiniLM and each synthetic size, in the node cache: raw read, load_file, ours."""
    cached = commit_to_cache(minilm_dir(), work / "cache", MINILM_URI)
    bench_loaders("MiniLM", cached, repeats, device, rows)
    for gib in gibs:
        shards = max(1, round(gib * 2))
        shard_bytes = int(gib * 2**30) // shards
        src = synthetic_model(work / f"src-{gib}", shards=shards, shard_bytes=shard_bytes)
        cached = commit_to_cache(src, work / "cache", f"s3://models/synthetic/big-{gib:g}")
        shutil.rmtree(src)
        bench_loaders(
            f"synthetic {gib:g} GiB ({shards} x {shard_bytes / 2**20:.0f} MiB)", cached, repeats, device, rows
        )
        shutil.rmtree(cached)


def bert_like(dest: Path, total_bytes: int, shards: int = 4) -> Path:
    """MiniLM widened ``k`` times into a BERT-like fp32 model of about ``total_bytes`` in ``shards``.

    Every hidden vector becomes ``k`` copies of MiniLM's (heads x k, each weight matrix tiled and
    divided by the input copies; a LayerNorm over copies normalises as over one), so it embeds
    exactly like MiniLM (the server's warm-up sanity check passes) at any size; the largest
    ``k`` that fits is used and the rest is made up with word-embedding rows no token reaches.
    """
    import torch
    from safetensors.torch import load_file, save_file

    src = minilm_dir()
    cfg = json.loads((src / "config.json").read_text())
    hidden, inter = cfg["hidden_size"], cfg["intermediate_size"]
    state = {k: v for k, v in load_file(str(src / "model.safetensors")).items() if "position_ids" not in k}

    def size(k: int) -> int:
        scale = {n: k if t.dim() == 1 or "embeddings" in n else k * k for n, t in state.items()}
        return 4 * sum(int(t.numel()) * scale[n] for n, t in state.items())

    k = max(w for w in range(1, 16) if w == 1 or size(w) <= total_bytes)
    pad = max(0, (total_bytes - size(k)) // (4 * hidden * k))
    out: dict[str, torch.Tensor] = {}
    for name, t in state.items():
        if t.dim() == 1:
            out[name] = t.repeat(k)
        elif "embeddings" in name:
            out[name] = t.repeat(1, k)
            if name.endswith("word_embeddings.weight") and pad:
                out[name] = torch.cat([out[name], out[name][:pad]])
        else:
            out[name] = t.repeat(k, k) / k
    dest.mkdir(parents=True)
    for path in src.iterdir():
        if path.is_file() and path.name not in ("model.safetensors", "config.json", "README.md"):
            shutil.copy(path, dest / path.name)
    heads = cfg["num_attention_heads"] * k
    cfg.update(hidden_size=hidden * k, num_attention_heads=heads, intermediate_size=inter * k)
    cfg["vocab_size"] += pad
    (dest / "config.json").write_text(json.dumps(cfg, indent=1))
    groups: list[list[str]] = [[]]
    filled = 0
    for name, t in out.items():  # in order, a new shard when this one holds its share
        if filled >= (len(groups)) * size_of(out) / shards and len(groups) < shards:
            groups.append([])
        groups[-1].append(name)
        filled += t.numel() * 4
    weight_map = {}
    for i, names in enumerate(groups):
        file = f"model-{i + 1:05d}-of-{len(groups):05d}.safetensors"
        save_file({n: out[n].contiguous() for n in names}, str(dest / file), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(names, file))
    index = {"metadata": {"total_size": size_of(out)}, "weight_map": weight_map}
    (dest / "model.safetensors.index.json").write_text(json.dumps(index))
    return dest


def size_of(tensors: dict[str, Any]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors.values())


def drop_caches() -> None:
    """Every clean page out of the page cache (root): the model, and torch's files too."""
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


class StubAgent:
    """The node agent's two calls ``model-serve --model-uri`` makes, answering ``fetching`` until
    ``release()`` and then ``ready`` with the model's path: a model found after the server started."""

    def __init__(self, model_dir: Path) -> None:
        import http.server
        import threading

        self.released = threading.Event()
        agent = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                self.answer({"state": "fetching"})

            def do_GET(self) -> None:
                ready = agent.released.is_set()
                self.answer({"state": "ready", "path": str(model_dir)} if ready else {"state": "fetching"})

            def answer(self, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *_: Any) -> None:
                return None

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def served_load(tree: Path, model_dir: Path, state: str, found_after: float | None) -> dict[str, float]:
    """The phase gauges of one ``model-serve`` start from ``tree``, page cache ``state`` (cold:
    drop_caches; warm: the model read once) when the model is found. ``found_after``: the model is
    found through a stub agent once the server logged its imports done (at most that many seconds
    later); None: ``--model-dir``, found at once."""
    import threading

    agent = StubAgent(model_dir) if found_after is not None else None
    port = free_port()
    where = ["--model-uri", "s3://models/bench/bert-like", "--agent-url", agent.url] if agent else []
    argv = [sys.executable, "-m", "serving", *(where or ["--model-dir", str(model_dir)])]
    argv += ["--host", "127.0.0.1", "--port", str(port), "--device", "cpu"]
    prepared = threading.Event()
    if agent is None:
        (drop_caches if state == "cold" else lambda: warm(model_dir))()
    proc = subprocess.Popen(argv, cwd=tree, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []

    def collect() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.append(line)
            if "prepared (model runtime imported)" in line:
                prepared.set()

    threading.Thread(target=collect, daemon=True).start()
    try:
        if agent is not None:
            if not prepared.wait(found_after):
                raise SystemExit(f"model-serve did not log its imports done in {found_after:g}s")
            (drop_caches if state == "cold" else lambda: warm(model_dir))()
            agent.released.set()
        wait_ready(proc, port, lines)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=60) as resp:
            return parse_phases(resp.read().decode())
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if agent is not None:
            agent.close()


def wait_ready(proc: subprocess.Popen[str], port: int, lines: list[str], timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit("model-serve exited:\n" + "".join(lines[-20:]))
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=30) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, OSError):  # refused, 503, or a busy loop's timeout
            pass
        time.sleep(0.02)
    raise SystemExit("model-serve not ready in time:\n" + "".join(lines[-20:]))


def import_floor(tree: Path, state: str, model_dir: Path) -> float:
    """Seconds a fresh interpreter takes to import ``serving.model`` (torch, transformers)."""
    (drop_caches if state == "cold" else lambda: warm(model_dir))()
    code = "import time; t = time.perf_counter(); import serving.model; print(time.perf_counter() - t)"
    out = subprocess.run([sys.executable, "-c", code], cwd=tree, capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def serve_load_rows(
    work: Path,
    gib: float,
    trees: dict[str, Path],
    rows: list[tuple[str, ...]],
    *,
    repeats: int,
    after: float,
    found: str = "both",
) -> None:
    """The server's own ``load`` gauge against a raw single-thread read of the same files, cold
    (drop_caches) and warm, interleaved per repeat; each tree started with the model found at
    once (``--model-dir``) and found after its imports finished (stub agent)."""
    src = bert_like(work / "bert-like-src", int(gib * 1e9))
    cached = commit_to_cache(src, work / "cache", "s3://models/bench/bert-like")
    shutil.rmtree(src)
    size = sum(p.stat().st_size for p in files_of(cached))
    times: dict[tuple[str, str], list[float]] = {}
    for _ in range(repeats):
        for state in ("cold", "warm"):
            (drop_caches if state == "cold" else lambda: warm(cached))()
            times.setdefault((state, "raw read, 1 thread, 8 MiB readinto"), []).append(raw_read(cached))
            for name, tree in trees.items():
                for when, wait in (("at start", None), ("after imports", after)):
                    if found != "both" and not when.startswith(found):
                        continue
                    phases = served_load(tree, cached, state, wait)
                    key = (state, f"{name}: load gauge, model found {when}")
                    times.setdefault(key, []).append(phases["load"])
                    load = os.getloadavg()[0]
                    print(f"{key}: {fmt(phases)}; loadavg {load:.1f}", file=sys.stderr, flush=True)
            times.setdefault((state, "import serving.model, fresh process"), []).append(
                import_floor(trees[next(iter(trees))], state, cached)
            )
    raw_cold = statistics.median(times[("cold", "raw read, 1 thread, 8 MiB readinto")])
    label = f"BERT-like {size / 1e9:.2f} GB (4 fp32 shards)"
    for (state, name), values in times.items():
        t = statistics.median(values)
        detail = f"{t / raw_cold:.2f}x raw cold; runs " + " ".join(f"{v:.3f}" for v in values)
        rows.append((label, f"{name}, page cache {state}", f"{t:.3f}", detail))


def fmt(phases: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.3f}" for k, v in phases.items())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument(
        "--synthetic-gib", type=float, default=2.0, help="size of the synthetic model (0: skip)"
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    parser.add_argument("--work-dir", help="scratch directory (default: a new temporary one)")
    parser.add_argument("--json", help="also write the rows here as JSON")
    parser.add_argument(
        "--loaders",
        type=float,
        nargs="*",
        metavar="GIB",
        help="only the loader rows (raw read, load_file, ours; cold) for MiniLM and these synthetic sizes",
    )
    parser.add_argument(
        "--serve-load",
        type=float,
        metavar="GB",
        help="only the server's load gauge vs a raw read, cold and warm, for a BERT-like model of GB",
    )
    parser.add_argument(
        "--checkout",
        action="append",
        default=[],
        metavar="NAME=DIR",
        help="with --serve-load: also start model-serve from this tree (repeatable), e.g. before=/tmp/wt",
    )
    parser.add_argument(
        "--found",
        choices=("both", "at", "after"),
        default="both",
        help="with --serve-load: the model found at start (at), after the imports (after), or both",
    )
    parser.add_argument(
        "--found-after",
        type=float,
        default=600.0,
        help="with --serve-load: most seconds to wait for the server's imports before the stub agent answers",
    )
    args = parser.parse_args()
    import torch

    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    gpu = torch.cuda.get_device_name(0) if device == "cuda" else "none"
    work = Path(tempfile.mkdtemp(prefix="coldstart-", dir=args.work_dir))
    rows: list[tuple[str, ...]] = []
    try:
        if args.serve_load is not None:
            trees = {"this tree": ROOT, **dict(parse_tree(t) for t in args.checkout)}
            serve_load_rows(
                work,
                args.serve_load,
                trees,
                rows,
                repeats=args.repeats,
                after=args.found_after,
                found=args.found,
            )
        elif args.loaders is not None:
            loader_rows(work, args.loaders, args.repeats, device, rows)
        else:
            with_s3(work, args, device, rows)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"\ndevice: {device} (GPU: {gpu}); {os.cpu_count()} CPUs; medians of {args.repeats}\n")
    print("| model | path | seconds | detail |\n|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    if args.json:
        Path(args.json).write_text(json.dumps([list(r) for r in rows], indent=1))
    return 0


def parse_tree(spec: str) -> tuple[str, Path]:
    name, _, path = spec.partition("=")
    if not path or not (Path(path) / "serving").is_dir():
        raise SystemExit(f"--checkout wants NAME=DIR with DIR a checkout of this repository, not {spec!r}")
    return name, Path(path).resolve()


def with_s3(work: Path, args: argparse.Namespace, device: str, rows: list[tuple[str, ...]]) -> None:
    """The time-to-ready rows: MiniLM served from the cache and from S3, the synthetic model loaded."""
    with run_s3_server() as s3:
        bench_minilm(s3, work, args.repeats, device, rows)
        if args.synthetic_gib > 0:
            bench_synthetic(s3, work, args.synthetic_gib, repeats=args.repeats, device=device, rows=rows)


if __name__ == "__main__":
    sys.exit(main())
