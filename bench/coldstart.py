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
    for state, prepare in (("warm", lambda: warm(cached)), ("cold", lambda: evict(cached))):
        runs = []
        for _ in range(repeats):
            prepare()
            runs.append(time_to_ready(cached, device))
        ready, phases = sorted(runs, key=lambda r: r[0])[len(runs) // 2]
        rows.append((label, f"ready from node cache, page cache {state}", f"{ready:.3f}", fmt(phases)))
    runs = []
    for i in range(repeats):
        dest = work / f"emptydir-{i}"
        fetched = s3_download(s3, MINILM_URI, dest)
        ready, phases = time_to_ready(dest, device)
        runs.append((fetched + ready, fetched, phases))
        shutil.rmtree(dest)
    total, fetched, phases = sorted(runs)[len(runs) // 2]
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


def load_ours(model_dir: Path, device: str) -> float:
    """Seconds for ``serving.loader`` (one pass: read + per-chunk digest check) onto ``device``."""
    import torch

    from serving.loader import load_state_dict

    start = time.perf_counter()
    tensors = load_state_dict(model_dir, device=device, check=True)
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
    args = parser.parse_args()
    import torch

    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    gpu = torch.cuda.get_device_name(0) if device == "cuda" else "none"
    work = Path(tempfile.mkdtemp(prefix="coldstart-", dir=args.work_dir))
    rows: list[tuple[str, ...]] = []
    try:
        if args.loaders is not None:
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


def with_s3(work: Path, args: argparse.Namespace, device: str, rows: list[tuple[str, ...]]) -> None:
    """The time-to-ready rows: MiniLM served from the cache and from S3, the synthetic model loaded."""
    with run_s3_server() as s3:
        bench_minilm(s3, work, args.repeats, device, rows)
        if args.synthetic_gib > 0:
            bench_synthetic(s3, work, args.synthetic_gib, repeats=args.repeats, device=device, rows=rows)


if __name__ == "__main__":
    sys.exit(main())
