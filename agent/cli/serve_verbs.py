"""CLI verbs of the running agent: ``serve`` (the DaemonSet process) and ``wait`` (init containers)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from aiohttp import web

from agent.config import (
    add_cache_args,
    add_client_args,
    add_peer_args,
    add_server_args,
    settings_from_args,
)
from locality.cli import CliError
from locality.serve import serve
from locality.settings import ConfigError

log = logging.getLogger(__name__)

EXIT_FAILED = 1
EXIT_TIMEOUT = 124  # like coreutils' timeout(1)


def register(sub: Any) -> None:
    serve: argparse.ArgumentParser = sub.add_parser(
        "serve", help="run the node agent (REST API, node labels, pod and distribution watches)"
    )
    add_server_args(serve)
    add_peer_args(serve)
    add_cache_args(serve)
    serve.set_defaults(func=run_serve)

    wait: argparse.ArgumentParser = sub.add_parser(
        "wait",
        help="ask the local agent for a model, block until ready, print its directory",
        description="Exit codes: 0 ready (path on stdout), 1 fetch failed or refused, "
        f"{EXIT_TIMEOUT} timeout, 2 usage error.",
    )
    wait.add_argument("uri", help="model URI, e.g. s3://bucket/prefix")
    wait.add_argument("--timeout", type=float, default=3600.0, help="seconds to wait (default 3600)")
    wait.add_argument("--cache-dir", help="unused; accepted like every verb")
    add_client_args(wait)
    wait.set_defaults(func=run_wait)


def run_serve(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    from agent.face.app import Deps, create_app
    from locality.kube import Kube, KubeError

    settings = settings_from_args(args, environ)
    _check_cache_dir(settings.cache_dir)
    try:
        kube = Kube.connect(settings.kubeconfig) if settings.node_name else None
    except KubeError as exc:
        raise ConfigError(str(exc)) from exc
    if kube is None and settings.token is None:  # fail closed: no way to tell who is calling
        raise ConfigError(
            "no authenticator: outside a cluster pass --token-file; "
            "in a cluster, ServiceAccount tokens are checked with the API server"
        )
    if kube is None:
        log.warning("standalone mode: %s", "no node name" if not settings.node_name else "no cluster found")
    from agent.cluster.access import AccessGate
    from agent.peers import wiring
    from agent.peers.metrics import PeerMetrics
    from locality import auth

    peers = wiring.build(settings, kube, PeerMetrics())

    app = create_app(
        settings,
        Deps(
            kube=kube,
            authenticator=auth.build(settings.token, kube),
            access=AccessGate(kube) if kube is not None else None,
            peers=peers,
        ),
    )
    if kube is not None:

        async def close_kube(_: web.Application) -> None:
            await kube.close()

        app.on_cleanup.append(close_kube)
    # SIGTERM budget: <= grace/4 for open requests, then cleanup_ctx spends <= grace/2
    # checkpointing fetches and <= min(5, grace/4) on a last Node sync.
    return asyncio.run(
        serve(
            app,
            prog="model-agent serve",
            host=settings.host,
            port=settings.port,
            shutdown_timeout=settings.grace_seconds / 4,
        )
    )


def _check_cache_dir(root: Path) -> None:
    """The cache root exists (or can be made) and takes files: else one line, not a traceback."""
    try:
        root.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=root):
            pass
    except OSError as exc:
        problem = "is not a directory" if root.exists() and not root.is_dir() else (exc.strerror or str(exc))
        raise CliError(f"cannot use cache directory {root}: {problem}") from exc


def run_wait(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    from locality.agentclient import AgentError, client_token_file, file_token, wait_ready

    settings = settings_from_args(args, environ)
    if args.timeout <= 0:
        raise CliError("--timeout must be positive", code=2)
    last: dict[str, Any] = {"state": "", "at": 0.0}

    def progress(view: dict[str, Any]) -> None:
        # One line per state change, and at most one every 10 s while bytes arrive (init logs).
        state, now = str(view.get("state")), time.monotonic()
        if state == last["state"] and now - float(last["at"]) < 10:
            return
        done, total = view.get("bytes_done") or 0, view.get("bytes_total")
        print(
            f"model-agent wait: {state} {done}/{total if total is not None else '?'} bytes", file=sys.stderr
        )
        last.update(state=state, at=now)

    since, said = time.time(), {"at": time.monotonic()}

    def retrying(why: str) -> None:
        # No answer from the agent: say what we wait for, and since when, every 10 s.
        now = time.monotonic()
        if now - said["at"] >= 10:
            at = time.strftime("%H:%M:%S", time.localtime(since))
            print(
                f"model-agent wait: waiting for {args.uri} since {at} ({time.time() - since:.0f}s): {why}",
                file=sys.stderr,
            )
            said["at"] = now

    # The pod's projected ServiceAccount token, re-read for every request (the kubelet rotates it).
    token_file = client_token_file(settings.token_file)
    try:
        path = asyncio.run(
            wait_ready(
                settings.agent_url,
                args.uri,
                token_source=file_token(token_file) if token_file else None,
                timeout=args.timeout,
                on_progress=progress,
                on_retry=retrying,
            )
        )
    except AgentError as exc:
        raise CliError(str(exc), code=EXIT_TIMEOUT if exc.timed_out else EXIT_FAILED) from exc
    print(path)
    return 0
