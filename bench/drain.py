"""The extender's cost per pod as kube-scheduler sees it: an unthrottled drain, with and without it.

A real API server (``$KUBEBUILDER_ASSETS``, as the tests use) holds ``--nodes`` GPU nodes shaped like
``bench/extender.py``'s synthetic cluster (30-60 labels, the agents' models/cache annotations,
ready labels, fetches in progress with ``bytes_done``, measured fetch rates on half the nodes) and
``--pods`` pending pods (the webhook's label, 1-2 models each, 10% ``locality: required``), all
created before kube-scheduler starts. kube-scheduler then runs with the shipped
``manifests/scheduler/config.yaml`` (``percentageOfNodesToScore: 100``), once with the extender
(a real ``scheduler_extender serve`` process on the same API server: node cache, pod watch) and
once without ``extenders``, rounds interleaved (with, without, with, ...). Both profiles lift the
client rate limit (``clientConnection.qps/burst`` 5000) so the drain measures CPU, not the
limiter. pods/s = (pods - 1) / (last binding - first binding), from a watch.

``--floor`` adds a third profile: a do-nothing extender (``stub_serve``: raw asyncio, no framework,
no decoding; filter answers every node it was offered, prioritize ``[]``) at the same place in
the loop, so the run also shows what any HTTP extender costs on this machine.

    eval "$(bash ../shared/k8s/install.sh)"
    .venv/bin/python bench/extender.py --drain            # 500 nodes, 1000 pods, 3 rounds each
    .venv/bin/python bench/extender.py --drain --floor    # ... and the do-nothing extender
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from locality.contract import FETCH_RATE_ANNOTATION, LOCALITY_ANNOTATION, MODELS_ANNOTATION  # noqa: E402
from locality.identity import model_ref  # noqa: E402
from scheduler_extender.injection import CLIENT_LABEL  # noqa: E402
from scheduler_extender.wire import encode_pass_all  # noqa: E402
from tests.fixtures.ports import free_port  # noqa: E402
from tests.fixtures.realkube import GPU, NOT_READY_TAINT, RealKube, _raw, assets_dir  # noqa: E402

CONFIG = ROOT / "manifests" / "scheduler" / "config.yaml"
NS = "drain"
SCHEDULER = "model-locality-scheduler"


def model_uris(count: int) -> list[str]:
    return [f"s3://models/org-{i % 17}/model-{i:03d}" for i in range(count)]


def node_bodies(nodes: int, models: int, seed: int) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(Node, status) pairs: Zipf-popular models ready (90%) or in flight with progress."""
    from bench.extender import base_labels  # the same label shapes as the verb benchmark

    rng = random.Random(seed)
    refs = [model_ref(u) for u in model_uris(models)]
    sizes = {r.id: int(rng.lognormvariate(math.log(15e9), 1.0)) for r in refs}
    popularity = [1.0 / (i + 1) for i in range(models)]
    out = []
    for i in range(nodes):
        name = f"gpu-node-{i:05d}"
        labels = base_labels(name, rng)
        summary: dict[str, Any] = {}
        for m in set(rng.choices(range(models), popularity, k=rng.randint(0, 6))):
            ref, size = refs[m], sizes[refs[m].id]
            if rng.random() < 0.9:
                labels[ref.label_key] = "ready"
                summary[ref.id] = {"uri": ref.uri, "bytes": size, "state": "ready"}
            else:
                done = int(size * rng.random())
                summary[ref.id] = {"uri": ref.uri, "bytes": size, "state": "fetching", "bytes_done": done}
        annotations = {
            MODELS_ANNOTATION: json.dumps(summary),
            "model-locality.io/cache": json.dumps({"used_bytes": 10**12, "quota_bytes": 3 * 10**12}),
        }
        if rng.random() < 0.5:
            annotations[FETCH_RATE_ANNOTATION] = str(rng.choice([200, 400, 800, 1600]) * 10**6)
        meta = {"name": name, "labels": labels, "annotations": annotations}
        node = {"apiVersion": "v1", "kind": "Node", "metadata": meta}
        resources = {"cpu": "96", "memory": "1Ti", "pods": "110", "ephemeral-storage": "3Ti", GPU: "8"}
        status = {
            "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "bench"}],
            "capacity": resources,
            "allocatable": resources,
        }
        out.append((node, status))
    return out


def create_nodes(real: RealKube, bodies: list[tuple[dict[str, Any], dict[str, Any]]]) -> None:
    with real.client() as api:
        for node, status in bodies:
            name = node["metadata"]["name"]
            created = _raw(api, "POST", "/api/v1/nodes", node)
            taints = created.get("spec", {}).get("taints") or []
            taints = [t for t in taints if t.get("key") != NOT_READY_TAINT]
            merge = "application/merge-patch+json"
            _raw(api, "PATCH", f"/api/v1/nodes/{name}", {"spec": {"taints": taints or None}}, merge)
            _raw(api, "PATCH", f"/api/v1/nodes/{name}/status", {"status": status}, merge)


def pod_bodies(count: int, models: int, seed: int) -> list[dict[str, Any]]:
    rng = random.Random(seed + 1)
    uris = model_uris(models)
    out = []
    for i in range(count):
        chosen = rng.sample(uris[:40], 1 + (i % 4 == 0))
        annotations = {MODELS_ANNOTATION: ",".join(chosen)}
        if i % 10 == 0:
            annotations = {MODELS_ANNOTATION: uris[0], LOCALITY_ANNOTATION: "required"}
        labels = {CLIENT_LABEL: "true", "app": "serve"}
        meta = {"name": f"serve-{i:05d}", "labels": labels, "annotations": annotations}
        resources = {"limits": {GPU: "1"}, "requests": {"cpu": "1"}}
        container = {"name": "serve", "image": "example.invalid/serve:1", "resources": resources}
        spec = {"schedulerName": SCHEDULER, "containers": [container]}
        out.append({"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec})
    return out


def create_pods(real: RealKube, bodies: list[dict[str, Any]]) -> None:
    with real.client() as api:
        for body in bodies:
            _raw(api, "POST", f"/api/v1/namespaces/{NS}/pods", body)


def delete_pods(real: RealKube) -> None:
    real.delete_all("pods", namespace=NS)
    with real.client() as api:
        for _ in range(600):
            if not _raw(api, "GET", f"/api/v1/namespaces/{NS}/pods?limit=1")["items"]:
                return
            time.sleep(0.1)
    raise RuntimeError("pods were not deleted")


def scheduler_config(real: RealKube, extender_url: str | None, workdir: Path, *, name: str = "") -> Path:
    config = yaml.safe_load(CONFIG.read_text())
    config["leaderElection"] = {"leaderElect": False}
    config["clientConnection"] = {"kubeconfig": str(real.kubeconfig), "qps": 5000, "burst": 5000}
    if extender_url is None:
        config.pop("extenders")
    else:
        config["extenders"][0]["urlPrefix"] = extender_url
    path = workdir / f"scheduler-{name or ('with' if extender_url else 'without')}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


async def bind_times(real: RealKube, expected: int, started: asyncio.Event, limit: float) -> list[float]:
    """Monotonic times at which each pod was first seen bound (a watch from the current state)."""
    kube = real.connect(request_timeout=30)
    seen: dict[str, float] = {}
    try:
        _, version = await kube.list("pods", field_selector=f"metadata.namespace={NS}")
        started.set()
        deadline = time.monotonic() + limit
        while len(seen) < expected and time.monotonic() < deadline:
            async for event in kube.watch("pods", resource_version=version, timeout_seconds=60):
                obj = event.object
                version = obj.get("metadata", {}).get("resourceVersion", version)
                name = obj.get("metadata", {}).get("name", "")
                if obj.get("spec", {}).get("nodeName") and name not in seen:
                    seen[name] = time.monotonic()
                if len(seen) >= expected or time.monotonic() > deadline:
                    break
    finally:
        await kube.close()
    return sorted(seen.values())


def cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def one_round(
    real: RealKube, config: Path, pods: list[dict[str, Any]], extender_pid: int | None
) -> dict[str, float]:
    create_pods(real, pods)
    started = asyncio.Event()
    watcher = asyncio.create_task(bind_times(real, len(pods), started, limit=600))
    await started.wait()
    cpu0 = cpu_seconds(extender_pid) if extender_pid else 0.0
    launched = time.monotonic()
    scheduler = await asyncio.to_thread(real.start_scheduler, config)
    started_cpu = cpu_seconds(scheduler.pid)  # its start-up, before the first pod, is not the drain's
    times = await watcher
    cpu = (cpu_seconds(extender_pid) - cpu0) if extender_pid else 0.0
    scheduler_cpu = cpu_seconds(scheduler.pid) - started_cpu
    real.stop_process("kube-scheduler")
    delete_pods(real)
    if len(times) < len(pods):
        raise RuntimeError(f"only {len(times)}/{len(pods)} pods bound:\n{real.log('kube-scheduler')}")
    return {
        "pods_per_s": (len(times) - 1) / max(times[-1] - times[0], 1e-9),
        "to_last_s": times[-1] - launched,
        "extender_cpu_ms_per_pod": 1000 * cpu / len(pods),
        "scheduler_cpu_ms_per_pod": 1000 * scheduler_cpu / len(pods),
    }


def start_extender(
    real: RealKube, workdir: Path, *, stub: bool = False
) -> tuple[subprocess.Popen[bytes], str]:
    """The real extender (``scheduler_extender serve``), or with ``stub`` the do-nothing one."""
    port = free_port()
    name = "stub" if stub else "extender"
    log = (workdir / f"{name}.log").open("wb")
    if stub:
        cmd = [sys.executable, str(Path(__file__).resolve()), "--stub-child", str(port)]
    else:
        cmd = [sys.executable, "-m", "scheduler_extender", "serve", "--host", "127.0.0.1",
               "--port", str(port), "--kubeconfig", str(real.kubeconfig)]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    import urllib.request

    for _ in range(600):
        try:
            with urllib.request.urlopen(f"{url}/readyz", timeout=2):
                return proc, url
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{name} not ready:\n{(workdir / f'{name}.log').read_text()[-3000:]}")


_NAMES = b'"NodeNames":'


def stub_answer(path: bytes, body: bytes) -> bytes:
    """What the do-nothing extender answers: every offered node passes the filter (their names
    sent back as kube-scheduler sent them, unparsed), and prioritize scores nobody."""
    if path == b"/prioritize":
        return b"[]"
    if path == b"/filter":  # kube-scheduler sends NodeNames last (scheduler_extender.wire)
        at = body.rfind(_NAMES)
        return encode_pass_all(body[at + len(_NAMES) : body.rindex(b"}")] if at >= 0 else b"null")
    return b"{}"  # /readyz


async def stub_serve(port: int) -> None:
    """A keep-alive HTTP/1.1 server in raw asyncio that answers ``stub_answer``: the least any HTTP
    extender can do per request on this machine."""

    async def connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                path = head.split(b" ", 2)[1]
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    key, _, value = line.partition(b":")
                    if key.strip().lower() == b"content-length":
                        length = int(value)
                body = await reader.readexactly(length) if length else b""
                out = stub_answer(path, body)
                head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
                writer.write(head % len(out) + out)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(connection, "127.0.0.1", port)
    async with server:
        await server.serve_forever()


async def drain(args: argparse.Namespace) -> dict[str, Any]:
    assets = assets_dir()
    if assets is None:
        raise SystemExit("needs etcd, kube-apiserver, kube-scheduler: see bench/README.md (drain)")
    real = RealKube(assets).start()
    workdir = Path(tempfile.mkdtemp(prefix="drain-"))
    extender: subprocess.Popen[bytes] | None = None
    stub: subprocess.Popen[bytes] | None = None
    try:
        real.create_service_account(NS, "default")
        started = time.monotonic()
        create_nodes(real, node_bodies(args.nodes, args.models, args.seed))
        print(f"{args.nodes} nodes created in {time.monotonic() - started:.1f} s", flush=True)
        pods = pod_bodies(args.pods, args.models, args.seed)
        extender, url = start_extender(real, workdir)
        configs = {
            "with extender": scheduler_config(real, url, workdir),
            "without": scheduler_config(real, None, workdir),
        }
        pids = {"with extender": extender.pid}
        if args.floor:
            stub, stub_url = start_extender(real, workdir, stub=True)
            configs["do-nothing"] = scheduler_config(real, stub_url, workdir, name="do-nothing")
            pids["do-nothing"] = stub.pid
        rows: dict[str, list[dict[str, float]]] = {k: [] for k in configs}
        for r in range(args.rounds):
            for name, config in configs.items():
                row = await one_round(real, config, pods, pids.get(name))
                rows[name].append(row)
                print(f"round {r + 1} {name:<14} {row['pods_per_s']:7.1f} pods/s  "
                      f"(all bound {row['to_last_s']:.1f} s after start; CPU per pod: kube-scheduler "
                      f"{row['scheduler_cpu_ms_per_pod']:.2f} ms, extender "
                      f"{row['extender_cpu_ms_per_pod']:.2f} ms)", flush=True)  # fmt: skip
        with_rate = statistics.median(r["pods_per_s"] for r in rows["with extender"])
        without = statistics.median(r["pods_per_s"] for r in rows["without"])
        pairs = zip(rows["with extender"], rows["without"], strict=True)
        ratios = [w["pods_per_s"] / o["pods_per_s"] for w, o in pairs]
        each = ", ".join(f"{r:.2f}" for r in ratios)
        middle = statistics.median(ratios)
        print(f"median: with {with_rate:.1f} pods/s, without {without:.1f} pods/s, "
              f"ratio {with_rate / without:.2f}x; per round {each} (median {middle:.2f}x)")  # fmt: skip
        summary = {"median_with": with_rate, "median_without": without, "ratio": with_rate / without}
        if args.floor:
            floor = statistics.median(r["pods_per_s"] for r in rows["do-nothing"])
            pairs = zip(rows["do-nothing"], rows["without"], strict=True)
            each = ", ".join(f"{w['pods_per_s'] / o['pods_per_s']:.2f}" for w, o in pairs)
            print(f"do-nothing extender: {floor:.1f} pods/s, ratio {floor / without:.2f}x; per round {each}")
            summary.update(median_do_nothing=floor, floor_ratio=floor / without)
        return {"rows": rows, **summary, "round_ratios": ratios}
    finally:
        for proc in (extender, stub):
            if proc is not None:
                proc.terminate()
                proc.wait(20)
        real.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--drain", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--nodes", type=int, default=500)
    parser.add_argument("--pods", type=int, default=1000)
    parser.add_argument("--models", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--floor", action="store_true", help="also run a do-nothing extender")
    parser.add_argument("--stub-child", type=int, help=argparse.SUPPRESS)  # the do-nothing extender
    parser.add_argument("--out", default=str(ROOT / "bench" / "out" / "extender-drain.json"))
    args = parser.parse_args(argv)
    if args.stub_child:
        asyncio.run(stub_serve(args.stub_child))
        return 0
    result = asyncio.run(drain(args))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"args": vars(args), **result}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
