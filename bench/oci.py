"""Benchmark: pull a 2 GiB ModelPack artifact from a local registry with several clients.

Origin: Debian's docker-registry (CNCF distribution) on 127.0.0.1, filesystem storage, no auth
(``tests/fixtures/registry.py``); the artifact is 4 x 512 MiB ``application/vnd.cncf.model.weight.v1.raw``
layers (with ``org.cncf.model.filepath`` and ``org.opencontainers.image.title``, as modctl writes
them) pushed over the registry's HTTP API. Clients, each in its own process, interleaved over
rounds (A B C .. A B C ..): ours (``model-agent fetch oci://...``: manifest, ranged parallel GETs,
xxh3 per chunk, sha256 per blob, fsync and commit), oras-py (PyPI ``oras``, ``OrasClient.pull``;
there is no Debian ``oras`` package), and ``skopeo copy docker://... oci:DIR`` (Debian's skopeo,
which stores blobs in an OCI layout rather than files). Between runs the destination is deleted,
``sync``, the page cache dropped (as root, when allowed) and the registry's blobs read back into
the page cache. Columns as in ``bench/fetch.py``: MB/s to page cache (process wall time), MB/s
incl. a following ``sync``, the ratio to oras-py, client CPU seconds and peak RSS (``wait4``).

Usage: ``.venv/bin/python bench/oci.py [--rounds 3] [--work /var/tmp/ml-oci-bench] [--layer-mib 512]``
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.fetch import _sample_rss  # noqa: E402  (peak RSS of a process tree, as fetch.py measures it)
from tests.fixtures.registry import OCI_MANIFEST, Registry, descriptor, run_registry  # noqa: E402

MiB = 2**20
REPO, TAG = "models/bench", "v1"
MODELPACK = "application/vnd.cncf.model.manifest.v1+json"
WEIGHT = "application/vnd.cncf.model.weight.v1.raw"
CLIENTS = {
    "ours": "model-locality (`model-agent fetch`, 8 GETs, 32 MiB chunks, verified, fsynced, committed)",
    "oras": "oras-py `OrasClient.pull` (PyPI oras {oras}; checks no digest, no fsync)",
    "skopeo": "`skopeo copy docker:// oci:` (Debian skopeo {skopeo}; checks digests, OCI layout)",
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", default="/var/tmp/ml-oci-bench")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--layer-mib", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--clients", default="ours,oras,skopeo")
    args = parser.parse_args()
    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    try:
        with run_registry(work / "registry") as reg:
            total = push(reg, work / "src", args.layers, args.layer_mib * MiB)
            results = rounds(args, reg, work, total)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report(results, total, args)
    return 0


def push(reg: Registry, src: Path, count: int, size: int) -> int:
    """``count`` distinct files of ``size`` bytes as ModelPack weight layers; the total bytes."""
    src.mkdir(parents=True)
    block = os.urandom(64 * MiB)
    layers = []
    for i in range(count):
        path = src / f"model-{i + 1:05d}-of-{count:05d}.safetensors"
        with path.open("wb") as f:
            f.write(i.to_bytes(8, "big"))
            left = size - 8
            while left > 0:
                f.write(block[: min(left, len(block))])
                left -= min(left, len(block))
        notes = {"org.cncf.model.filepath": path.name, "org.opencontainers.image.title": path.name}
        layers.append(descriptor(WEIGHT, reg.push_blob(REPO, path), **notes))
        path.unlink()
    config = reg.push_blob(REPO, b'{"descriptor": {"name": "bench"}, "config": {}, "modelfs": {}}')
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": MODELPACK,
        "config": descriptor("application/vnd.cncf.model.config.v1+json", config),
        "layers": layers,
    }
    reg.push_manifest(REPO, TAG, manifest)
    return count * size


def command(client: str, reg: Registry, dest: Path) -> list[str]:
    ref = f"{reg.host}/{REPO}:{TAG}"
    if client == "ours":
        agent = [sys.executable, "-m", "agent", "fetch", f"oci://{ref}", "--cache-dir", str(dest)]
        return [*agent, "--insecure-registries", reg.host, "-q"]
    if client == "oras":
        code = (
            "import sys, oras.client; oras.client.OrasClient(hostname=sys.argv[1], insecure=True)"
            ".pull(target=sys.argv[2], outdir=sys.argv[3])"
        )
        return [sys.executable, "-c", code, reg.host, ref, str(dest)]
    return ["skopeo", "copy", "-q", "--src-tls-verify=false", f"docker://{ref}", f"oci:{dest}:{TAG}"]


def run_one(argv: list[str]) -> tuple[float, float, float, float]:
    """Wall seconds, wall incl. a following sync, CPU seconds and peak RSS MiB of one client run.
    Peak RSS is VmHWM sampled from /proc (``wait4``'s ru_maxrss keeps this process's size across
    fork and exec)."""
    start = time.monotonic()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    peak, stop = [0], threading.Event()
    sampler = threading.Thread(target=_sample_rss, args=(proc.pid, peak, stop))
    sampler.start()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.monotonic() - start
    stop.set()
    sampler.join()
    err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{argv[0]} failed: {err.strip()[-400:]}")
    subprocess.run(["sync"], check=True)
    synced = time.monotonic() - start
    return wall, synced, usage.ru_utime + usage.ru_stime, peak[0] / 1024


def settle(reg_dir: Path) -> None:
    """Sync, drop the page cache (root only), read the registry's blobs back in (a warm origin)."""
    subprocess.run(["sync"], check=True)
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    except OSError:
        pass
    for blob in reg_dir.rglob("data"):
        if blob.is_file():
            with blob.open("rb") as f:
                while f.read(8 * MiB):
                    pass


def rounds(
    args: argparse.Namespace, reg: Registry, work: Path, total: int
) -> dict[str, list[tuple[float, ...]]]:
    clients = [c for c in args.clients.split(",") if c]
    out: dict[str, list[tuple[float, ...]]] = {c: [] for c in clients}
    for n in range(args.rounds):
        for client in clients:
            dest = work / "dest"
            shutil.rmtree(dest, ignore_errors=True)
            dest.mkdir()
            settle(work / "registry" / "data")
            got = run_one(command(client, reg, dest))
            size = sum(p.stat().st_size for p in dest.rglob("*") if p.is_file())
            assert size >= total, f"{client} wrote {size} of {total} bytes"
            out[client].append(got)
            rates = f"{total / got[0] / 1e6:.0f} MB/s, {total / got[1] / 1e6:.0f} incl. sync"
            print(f"round {n + 1} {client}: {rates}", file=sys.stderr)
    return out


def report(results: dict[str, list[tuple[float, ...]]], total: int, args: argparse.Namespace) -> None:
    versions = {"oras": _version("oras"), "skopeo": _skopeo()}
    med = {c: [statistics.median(r[i] for r in runs) for i in range(4)] for c, runs in results.items()}
    base = med.get("oras")
    what = f"{args.layers} x {args.layer_mib} MiB ModelPack artifact"
    print(f"\n{what}, median of {args.rounds} interleaved rounds\n")
    print(
        "| client | MB/s to page cache | MB/s incl. sync | x oras-py (cache / sync) | CPU s | peak RSS MiB |"
    )
    print("|---|---|---|---|---|---|")
    for client, (wall, synced, cpu, rss) in med.items():
        ratio = f"{base[0] / wall:.2f} / {base[1] / synced:.2f}" if base else ""
        name = CLIENTS[client].format(**versions)
        rates = f"{total / wall / 1e6:.0f} | {total / synced / 1e6:.0f}"
        print(f"| {name} | {rates} | {ratio} | {cpu:.1f} | {rss:.0f} |")


def _version(dist: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return "?"


def _skopeo() -> str:
    try:
        out = subprocess.run(["skopeo", "--version"], capture_output=True, text=True, check=False).stdout
    except OSError:
        return "?"
    return out.split()[-1] if out.split() else "?"


if __name__ == "__main__":
    sys.exit(main())
