"""Benchmark of the extender's scheduler verbs against an HTTP floor, in one run.

A synthetic cluster of 5,000 GPU nodes (30-60 labels each, a few of 200 models ready per node,
agents' ``models``/``cache`` annotations) is loaded into the node cache of a real extender app
served by ``aiohttp`` in a subprocess pinned to one core (``taskset -c 0``); the load generator
(aiohttp client, keep-alive) runs pinned to another core. Cases:

* ``/prioritize`` and ``/filter`` in ``nodeCacheCapable`` mode with 500 names (kube-scheduler's
  adaptive 10 % sample at 5,000 nodes) and 5,000 names (``percentageOfNodesToScore: 100``);
* the same verbs in full-Nodes mode (Node objects built from the captured kube-scheduler
  fixture, with managedFields), for comparison;
* a trivial aiohttp endpoint (reads the 500-name body, answers ``[]``) in its own pinned
  process: the HTTP floor.

Latency (p50/p99) is measured serially, one request at a time, as kube-scheduler's loop sends
them; requests/s with ``--connections`` concurrent keep-alive connections. Filter bodies use
``locality: required`` (the heavier path: most nodes fail and get a reason).

    .venv/bin/python bench/extender.py            # prints the table, writes bench/out/extender.json

``--drain`` runs the other half (``bench/drain.py``): the real kube-scheduler draining pending pods
over 500 nodes with and without the extender in its loop, interleaved, in one run.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import json
import math
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from locality.contract import LOCALITY_ANNOTATION, MODELS_ANNOTATION  # noqa: E402
from locality.identity import model_ref  # noqa: E402
from tests.fixtures.ports import free_port  # noqa: E402

FIXTURES = ROOT / "tests" / "fixtures" / "kube_scheduler"
GPU_PRODUCTS = ["NVIDIA-H100-80GB-HBM3", "NVIDIA-A100-SXM4-80GB", "NVIDIA-L40S", "NVIDIA-H200"]
ZONES = [f"us-east-1{c}" for c in "abcdef"]
CPU_FEATURES = [
    "AVX",
    "AVX2",
    "AVX512F",
    "AVX512BW",
    "AVX512VL",
    "AMXBF16",
    "FMA3",
    "SHA",
    "VAES",
    "VPCLMULQDQ",
]


def model_uris(count: int) -> list[str]:
    return [f"s3://models/org-{i % 17}/model-{i:03d}" for i in range(count)]


def cluster(nodes: int, models: int, seed: int) -> list[dict[str, Any]]:
    """Deterministic Node objects (full shape, from the captured fixture's node)."""
    rng = random.Random(seed)
    refs = [model_ref(u) for u in model_uris(models)]
    sizes = {r.id: int(rng.lognormvariate(math.log(15e9), 1.0)) for r in refs}
    popularity = [1.0 / (i + 1) for i in range(models)]  # Zipf: a few models are everywhere
    body = json.loads((FIXTURES / "filter-nodeCacheCapable-false.json").read_text())
    template = body["Nodes"]["items"][0]
    out = []
    for i in range(nodes):
        name = f"gpu-node-{i:05d}"
        node = copy.deepcopy(template)
        meta = node["metadata"]
        meta["name"], meta["uid"], meta["resourceVersion"] = name, f"uid-{i}", str(1000 + i)
        labels = base_labels(name, rng)
        held = set(rng.choices(range(models), popularity, k=rng.randint(0, 6)))
        summary = {}
        for m in held:
            ref = refs[m]
            state = "ready" if rng.random() < 0.9 else "fetching"
            if state == "ready":
                labels[ref.label_key] = "ready"
            summary[ref.id] = {"uri": ref.uri, "bytes": sizes[ref.id], "state": state}
        meta["labels"] = labels
        meta["annotations"][MODELS_ANNOTATION] = json.dumps(summary)
        meta["annotations"]["model-locality.io/cache"] = json.dumps(
            {"used_bytes": sum(e["bytes"] for e in summary.values()), "quota_bytes": 3 * 10**12}
        )
        out.append(node)
    return out


def base_labels(name: str, rng: random.Random) -> dict[str, str]:
    """30-60 labels like a real GPU node: well-known, cloud, GPU operator and NFD labels."""
    zone = rng.choice(ZONES)
    labels = {
        "kubernetes.io/hostname": name,
        "kubernetes.io/arch": "amd64",
        "kubernetes.io/os": "linux",
        "beta.kubernetes.io/arch": "amd64",
        "beta.kubernetes.io/os": "linux",
        "node.kubernetes.io/instance-type": rng.choice(["p5.48xlarge", "p4d.24xlarge", "g6e.48xlarge"]),
        "topology.kubernetes.io/region": "us-east-1",
        "topology.kubernetes.io/zone": zone,
        "failure-domain.beta.kubernetes.io/zone": zone,
        "eks.amazonaws.com/nodegroup": f"gpu-{rng.randint(1, 12)}",
        "eks.amazonaws.com/capacityType": rng.choice(["ON_DEMAND", "SPOT"]),
        "nvidia.com/gpu.present": "true",
        "nvidia.com/gpu.product": rng.choice(GPU_PRODUCTS),
        "nvidia.com/gpu.count": "8",
        "nvidia.com/gpu.memory": "81559",
        "nvidia.com/cuda.driver.major": "550",
        "nvidia.com/cuda.driver.minor": "90",
        "nvidia.com/cuda.runtime.major": "12",
        "nvidia.com/cuda.runtime.minor": "4",
        "nvidia.com/mig.capable": "true",
        "nvidia.com/gfd.timestamp": str(1700000000 + rng.randint(0, 10**6)),
    }
    for feature in rng.sample(CPU_FEATURES, rng.randint(5, len(CPU_FEATURES))):
        labels[f"feature.node.kubernetes.io/cpu-cpuid.{feature}"] = "true"
    for extra in range(rng.randint(0, 28)):
        labels[f"team.example.com/attr-{extra}"] = f"v{rng.randint(0, 99)}"
    return labels


def pod_body(template: dict[str, Any], uris: list[str], required: bool) -> dict[str, Any]:
    pod = copy.deepcopy(template)
    annotations = pod["metadata"].setdefault("annotations", {})
    annotations[MODELS_ANNOTATION] = ",".join(uris)
    if required:
        annotations[LOCALITY_ANNOTATION] = "required"
    return pod


def request_bodies(
    nodes: list[dict[str, Any]], models: int, count: int, full: bool, required: bool, *, variants: int = 16
) -> list[bytes]:
    """``ExtenderArgs`` bodies for ``count`` nodes, with pods asking for 1-2 popular models."""
    rng = random.Random(7)
    uris = model_uris(models)
    template = json.loads((FIXTURES / "filter-nodeCacheCapable-true.json").read_text())["Pod"]
    out = []
    for i in range(variants):
        chosen = rng.sample(uris[:40], 1 + (i % 4 == 0))
        sample = rng.sample(nodes, count) if count < len(nodes) else nodes
        pod = pod_body(template, chosen, required)
        if full:
            body = {"Pod": pod, "Nodes": {"metadata": {}, "items": sample}, "NodeNames": None}
        else:
            body = {"Pod": pod, "Nodes": None, "NodeNames": [n["metadata"]["name"] for n in sample]}
        out.append(json.dumps(body, separators=(",", ":")).encode())
    return out


# --- server side (a subprocess) ------------------------------------------------------------
def serve(args: argparse.Namespace) -> None:
    import logging

    logging.basicConfig(level=logging.WARNING)
    if args.serve == "floor":
        app = web.Application(client_max_size=64 * 2**20)

        async def floor(request: web.Request) -> web.Response:
            await request.read()
            return web.json_response([])

        app.router.add_post("/floor", floor)
    else:
        from scheduler_extender.app import Deps, create_app, fast_site
        from scheduler_extender.config import Settings
        from scheduler_extender.nodecache import NodeCache

        cache = NodeCache()
        cache.replace(cluster(args.nodes, args.models, args.seed))
        app = create_app(Settings(), Deps(node_cache=cache))
        asyncio.run(serve_fast(app, args.port, fast_site(app)))  # as `model-extender serve` listens
        return
    web.run_app(app, host="127.0.0.1", port=args.port, access_log=None, print=None)


async def serve_fast(app: web.Application, port: int, site: Any) -> None:
    import socket

    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    await site(runner, sock).start()
    await asyncio.Event().wait()


# --- client side ---------------------------------------------------------------------------
async def wait_up(port: int) -> None:
    async with aiohttp.ClientSession() as session:
        for _ in range(600):
            try:
                async with session.get(f"http://127.0.0.1:{port}/healthz") as resp:
                    if resp.status in (200, 404):
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
    raise RuntimeError("server did not come up")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (Linux ``/proc``); 0 where unavailable."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def measure(
    url: str, bodies: list[bytes], serial: int, seconds: float, connections: int, *, pid: int
) -> dict[str, float]:
    headers = {"Content-Type": "application/json"}
    connector = aiohttp.TCPConnector(limit=connections)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def one(i: int) -> float:
            start = time.perf_counter()
            async with session.post(url, data=bodies[i % len(bodies)], headers=headers) as resp:
                await resp.read()
                if resp.status != 200:
                    raise RuntimeError(f"{url}: HTTP {resp.status}")
            return time.perf_counter() - start

        for i in range(min(20, max(1, serial // 10))):  # warm-up: connections, caches
            await one(i)
        cpu_before = cpu_seconds(pid)
        latencies = sorted([await one(i) for i in range(serial)])
        cpu_per_request = (cpu_seconds(pid) - cpu_before) / serial
        done = 0
        stop = time.perf_counter() + seconds

        async def worker(k: int) -> None:
            nonlocal done
            i = k
            while time.perf_counter() < stop:
                await one(i)
                done += 1
                i += connections

        start = time.perf_counter()
        await asyncio.gather(*(worker(k) for k in range(connections)))
        elapsed = time.perf_counter() - start
    return {
        "p50_ms": 1000 * statistics.median(latencies),
        "p99_ms": 1000 * latencies[min(len(latencies) - 1, math.ceil(0.99 * len(latencies)) - 1)],
        "rps": done / elapsed,
        # Server CPU per request (serial phase): robust to a busy machine; 1/x = req/s per core.
        "cpu_ms": 1000 * cpu_per_request,
    }


def start_server(kind: str, port: int, args: argparse.Namespace, core: str) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, __file__, "--serve", kind, "--port", str(port)]
    cmd += ["--nodes", str(args.nodes), "--models", str(args.models), "--seed", str(args.seed)]
    if core and _has_taskset():
        cmd = ["taskset", "-c", core, *cmd]
    return subprocess.Popen(cmd, cwd=ROOT)


def _has_taskset() -> bool:
    return any((Path(p) / "taskset").exists() for p in os.environ.get("PATH", "").split(os.pathsep))


async def run_cases(args: argparse.Namespace) -> list[dict[str, Any]]:
    nodes = cluster(args.nodes, args.models, args.seed)
    sample = min(500, args.nodes)
    cases: list[tuple[str, str, int, list[bytes], int]] = []
    counts = sorted({sample, args.nodes})
    for verb in ("prioritize", "filter"):
        required = verb == "filter"
        for count in counts:
            bodies = request_bodies(nodes, args.models, count, False, required)
            cases.append((verb, "nodeCacheCapable", count, bodies, args.serial))
        for count in counts:
            # Full Node lists are ~100x slower to parse: fewer requests, fewer body variants.
            serial = max(10, args.serial // (20 if count <= 500 else 100))
            bodies = request_bodies(
                nodes, args.models, count, True, required, variants=4 if count <= 500 else 2
            )
            cases.append((verb, "full Nodes", count, bodies, serial))
    floor_bodies = request_bodies(nodes, args.models, sample, False, False)
    results = []
    port = free_port()
    proc = start_server("extender", port, args, args.server_core)
    try:
        await wait_up(port)
        for verb, mode, count, bodies, serial in cases:
            seconds = args.seconds if serial == args.serial else args.seconds / 2
            url = f"http://127.0.0.1:{port}/{verb}"
            row = await measure(url, bodies, serial, seconds, args.connections, pid=proc.pid)
            results.append({"endpoint": f"/{verb}", "mode": mode, "nodes": count, **row})
            print_row(results[-1])
    finally:
        proc.terminate()
        proc.wait(10)
    port = free_port()
    proc = start_server("floor", port, args, args.server_core)
    try:
        await wait_up(port)
        row = await measure(
            f"http://127.0.0.1:{port}/floor",
            floor_bodies,
            args.serial,
            args.seconds,
            args.connections,
            pid=proc.pid,
        )
        results.append({"endpoint": "trivial aiohttp", "mode": "HTTP floor", "nodes": sample, **row})
        print_row(results[-1])
    finally:
        proc.terminate()
        proc.wait(10)
    return results


def print_row(row: dict[str, Any]) -> None:
    print(
        f"| {row['endpoint']:<16} | {row['mode']:<16} | {row['nodes']:>5} | {row['p50_ms']:>7.2f} | "
        f"{row['p99_ms']:>7.2f} | {row['rps']:>7.0f} | {row['cpu_ms']:>6.2f} |",
        flush=True,
    )


def main() -> int:
    if "--drain" in sys.argv[1:]:  # kube-scheduler's drain with and without the extender (bench/drain.py)
        from bench.drain import main as drain_main

        return drain_main(sys.argv[1:])
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=5000)
    parser.add_argument("--models", type=int, default=200)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--serial", type=int, default=1000, help="serial requests per case (latency)")
    parser.add_argument("--seconds", type=float, default=3.0, help="seconds of concurrent load per case")
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument("--server-core", default="0", help="CPU list for taskset (empty: no pinning)")
    parser.add_argument("--client-core", type=int, default=1)
    parser.add_argument("--serve", choices=["extender", "floor"], help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--out", default=str(ROOT / "bench" / "out" / "extender.json"))
    args = parser.parse_args()
    if args.serve:
        serve(args)
        return 0
    if hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) > args.client_core:
        os.sched_setaffinity(0, {args.client_core})
    print(
        f"{args.nodes} nodes, {args.models} models; server on CPU {args.server_core or 'any'}, "
        f"client on CPU {args.client_core}; latency serial, req/s with {args.connections} connections"
    )
    print("| endpoint         | mode             | nodes | p50 ms  | p99 ms  | req/s   | CPU ms |")
    print("|------------------|------------------|-------|---------|---------|---------|--------|")
    results = asyncio.run(run_cases(args))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"args": vars(args), "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
