"""Benchmark: N agents fetch one model at once, each in its own network namespace behind a rate-limited
link, with peers and without; the origin's link is limited to the same rate.

Topology (needs root, ``ip`` and ``tc`` from iproute2): a bridge ``mlp-br`` in the root namespace
(10.77.0.1/16); the origin in namespace ``mlp-origin`` (10.77.0.2) and agent ``i`` in ``mlp-a<i>``
(10.77.1.<i>), each joined to the bridge by a veth pair. HTB shapes every veth end to ``--rate``
bytes/s, so each host uploads and downloads at most B and the origin sends at most B in total.
The origin is a small aiohttp range server (``--origin-child``, sendfile); its egress is read from
its interface's ``tx_bytes``. Agents are real ``model-agent serve`` processes started with
``ip netns exec``, given the model over REST at the same moment; a fetch's completion time is its
record's ``fetched_at`` (commit) minus the moment the POSTs went out.

Reports, per N and mode: origin egress / S, p50 and p99 completion / (S/B) (the lower bound for
one node), and max. Usage:

    sudo .venv/bin/python bench/p2p.py --nodes 8 16 --size-mib 1024 --rate-mib 25 [--work DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

MiB = 2**20
ROOT = Path(__file__).resolve().parents[1]
PY = ROOT / ".venv" / "bin" / "python"
BRIDGE = "mlp-br"
ORIGIN_NS, ORIGIN_IP = "mlp-origin", "10.77.0.2"
REST_TOKEN, PEER_TOKEN = "bench-rest-token", "bench-peer-token"


def sh(*cmd: str, check: bool = True) -> str:
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if check and out.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)}: {out.stderr.strip()}")
    return out.stdout


def shape(dev: str, rate: int, ns: str | None = None) -> None:
    """HTB on ``dev``'s egress: at most ``rate`` bytes/s."""
    pre = ["ip", "netns", "exec", ns] if ns else []
    bits = f"{rate * 8}bit"
    sh(*pre, "tc", "qdisc", "replace", "dev", dev, "root", "handle", "1:", "htb", "default", "10")
    sh(
        *pre,
        "tc",
        "class",
        "replace",
        "dev",
        dev,
        "parent",
        "1:",
        "classid",
        "1:10",
        "htb",
        "rate",
        bits,
        "ceil",
        bits,
    )


def add_host(ns: str, ip: str, index: int, rate: int) -> None:
    host, peer = f"mlpv{index}", f"mlpp{index}"
    sh("ip", "netns", "add", ns)
    sh("ip", "link", "add", host, "type", "veth", "peer", "name", peer)
    sh("ip", "link", "set", peer, "netns", ns)
    sh("ip", "link", "set", host, "master", BRIDGE, "up")
    sh("ip", "netns", "exec", ns, "ip", "link", "set", peer, "name", "eth0")
    sh("ip", "netns", "exec", ns, "ip", "addr", "add", f"{ip}/16", "dev", "eth0")
    sh("ip", "netns", "exec", ns, "ip", "link", "set", "eth0", "up")
    sh("ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up")
    shape(host, rate)  # toward the host: its download
    shape("eth0", rate, ns)  # from the host: its upload


def network(nodes: int, rate: int) -> list[tuple[str, str]]:
    teardown(nodes)
    sh("ip", "link", "add", BRIDGE, "type", "bridge")
    sh("ip", "addr", "add", "10.77.0.1/16", "dev", BRIDGE)
    sh("ip", "link", "set", BRIDGE, "up")
    add_host(ORIGIN_NS, ORIGIN_IP, 0, rate)
    agents = [(f"mlp-a{i}", f"10.77.1.{i}") for i in range(1, nodes + 1)]
    for i, (ns, ip) in enumerate(agents, start=1):
        add_host(ns, ip, i, rate)
    return agents


def teardown(nodes: int) -> None:
    for ns in [ORIGIN_NS, *(f"mlp-a{i}" for i in range(1, max(nodes, 64) + 1))]:
        sh("ip", "netns", "del", ns, check=False)
    sh("ip", "link", "del", BRIDGE, check=False)
    for i in range(max(nodes, 64) + 1):  # a veth whose namespace outlived a crash
        sh("ip", "link", "del", f"mlpv{i}", check=False)


def origin_child(root: str, port: int) -> None:
    from aiohttp import web

    async def handle(request: web.Request) -> web.StreamResponse:
        path = Path(root) / request.match_info["name"]
        if not path.is_file():
            raise web.HTTPNotFound()
        return web.FileResponse(path, headers={"ETag": f'"{path.stat().st_size:x}"'})

    app = web.Application()
    app.router.add_route("*", "/{name}", handle)
    web.run_app(app, host="0.0.0.0", port=port, access_log=None, print=None)


def tx_bytes() -> int:
    return int(sh("ip", "netns", "exec", ORIGIN_NS, "cat", "/sys/class/net/eth0/statistics/tx_bytes"))


def wait_http(url: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(url, timeout=1).read()
            return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"{url} did not answer")


def start_agents(
    work: Path, agents: list[tuple[str, str]], peers: bool, chunk: str
) -> list[subprocess.Popen[bytes]]:
    urls = ",".join(f"http://{ip}:8472" for _, ip in agents)
    procs = []
    for i, (ns, ip) in enumerate(agents, start=1):
        cache = work / f"cache{i}"
        shutil.rmtree(cache, ignore_errors=True)
        cmd = [
            "ip",
            "netns",
            "exec",
            ns,
            str(ROOT / ".venv/bin/model-agent"),
            "serve",
            "--host",
            "0.0.0.0",
            "--port",
            "8470",
            "--cache-dir",
            str(cache),
            "--token-file",
            str(work / "rest.token"),
            "--chunk-size",
            chunk,
            "--refresh-interval",
            "0",
        ]
        if peers:
            cmd += [
                "--peers",
                urls,
                "--peer-url",
                f"http://{ip}:8472",
                "--peer-token-file",
                str(work / "peer.token"),
                "--upload-rate",
                "0",
            ]
        else:
            cmd += ["--peers", "off"]
        log = (work / f"agent{i}-of-{len(agents)}-{'peers' if peers else 'origin'}.log").open("wb")
        procs.append(subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT))
    for _, ip in agents:
        wait_http(f"http://{ip}:8470/healthz")
    return procs


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a live process (``ip netns exec`` execs the agent in place)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def call(url: str, body: dict[str, str] | None = None) -> dict[str, object]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(
        url, data=data, headers={"Authorization": f"Bearer {REST_TOKEN}", "Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        out: dict[str, object] = json.loads(resp.read())
        return out


def run_once(
    work: Path, agents: list[tuple[str, str]], peers: bool, args: argparse.Namespace
) -> dict[str, object]:
    procs = start_agents(work, agents, peers, args.chunk)
    uri = f"http://{ORIGIN_IP}:{args.origin_port}/model.bin"
    size = args.size_mib * MiB
    try:
        before = tx_bytes()
        t0 = time.time()
        with ThreadPoolExecutor(len(agents)) as pool:
            answers = list(pool.map(lambda a: call(f"http://{a[1]}:8470/v1/models", {"uri": uri}), agents))
        model_id = str(answers[0]["id"])
        done: dict[str, float] = {}
        deadline = time.monotonic() + args.timeout
        while len(done) < len(agents) and time.monotonic() < deadline:
            for _, ip in agents:
                if ip not in done:
                    try:
                        view = call(f"http://{ip}:8470/v1/models/{model_id}")
                    except OSError:  # a busy agent answers late: ask again next round
                        continue
                    if view.get("state") == "ready":
                        done[ip] = float(view["fetched_at"]) - t0  # type: ignore[arg-type]
                    elif view.get("state") == "failed":
                        raise SystemExit(f"{ip}: {view.get('error')}")
            # Completion is the record's fetched_at, so asking once a second costs no precision
            # (asking 5 times a second, the harness's own requests were part of the agents' load).
            time.sleep(1.0)
        egress = tx_bytes() - before
        cpu = [cpu_seconds(proc.pid) for proc in procs]
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    if len(done) < len(agents):
        raise SystemExit(f"only {len(done)}/{len(agents)} agents finished within {args.timeout}s")
    ideal = size / (args.rate_mib * MiB)
    times = sorted(done.values())
    return {
        "nodes": len(agents),
        "peers": peers,
        "egress_x": round(egress / size, 3),
        "p50_x": round(statistics.median(times) / ideal, 2),
        "p99_x": round(times[min(len(times) - 1, round(0.99 * (len(times) - 1)))] / ideal, 2),
        "max_s": round(times[-1], 1),
        "ideal_s": round(ideal, 1),
        "cpu_s_per_agent": round(statistics.mean(cpu), 1),
        "load": round(os.getloadavg()[0], 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, nargs="+", default=[8, 16])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--rate-mib", type=float, default=25.0, help="link rate B in MiB/s, each way")
    parser.add_argument("--chunk", default="4Mi", help="the agents' --chunk-size")
    parser.add_argument("--modes", default="peers,origin", help="peers, origin (no peers), or both")
    parser.add_argument("--work", default="/dev/shm/ml-p2p", help="scratch dir (the caches: N x size)")
    parser.add_argument("--origin-port", type=int, default=8080)
    parser.add_argument("--timeout", type=float, default=1800)
    parser.add_argument("--origin-child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.origin_child:
        origin_child(args.origin_child[0], int(args.origin_child[1]))
        return 0
    if os.geteuid() != 0 or not shutil.which("tc") or not shutil.which("ip"):
        raise SystemExit("needs root and iproute2 (ip, tc): apt-get install -y iproute2")
    work = Path(args.work)
    (work / "origin").mkdir(parents=True, exist_ok=True)
    (work / "rest.token").write_text(REST_TOKEN)
    (work / "peer.token").write_text(PEER_TOKEN)
    model = work / "origin" / "model.bin"
    if not model.exists() or model.stat().st_size != args.size_mib * MiB:
        with model.open("wb") as f:
            for _ in range(args.size_mib):
                f.write(os.urandom(MiB))
    rate = int(args.rate_mib * MiB)
    results = []
    try:
        for n in args.nodes:
            agents = network(n, rate)
            origin = subprocess.Popen(
                [
                    "ip",
                    "netns",
                    "exec",
                    ORIGIN_NS,
                    str(PY),
                    __file__,
                    "--origin-child",
                    str(work / "origin"),
                    str(args.origin_port),
                ]
            )
            try:
                wait_http(f"http://{ORIGIN_IP}:{args.origin_port}/none")
            except SystemExit:
                pass
            try:
                for mode in args.modes.split(","):
                    result = run_once(work, agents, mode == "peers", args)
                    print(json.dumps(result), flush=True)
                    results.append(result)
            finally:
                origin.terminate()
                origin.wait(10)
    finally:
        teardown(max(args.nodes))
        for path in work.glob("cache*"):
            shutil.rmtree(path, ignore_errors=True)
    cols = ["nodes", "peers", "origin egress / S", "p50 / (S/B)", "p99 / (S/B)", "slowest s", "S/B s"]
    print("\n| " + " | ".join([*cols, "CPU s / agent", "load"]) + " |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in results:
        print(
            f"| {r['nodes']} | {'yes' if r['peers'] else 'no'} | {r['egress_x']} | {r['p50_x']} | "
            f"{r['p99_x']} | {r['max_s']} | {r['ideal_s']} | {r['cpu_s_per_agent']} | {r['load']} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
