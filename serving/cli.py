"""``model-serve``: parse settings, find the model directory, serve until SIGTERM or a failed start."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path

from locality.agentclient import AgentError, client_token_file, file_token, wait_ready
from locality.cli import add_common_flags, verbosity
from locality.serve import serve as serve_app
from locality.settings import setup_logging
from serving import loading  # no torch: a CPU load reads the weights while torch imports
from serving.app import Deps, create_app, drain
from serving.config import ConfigError, Settings, add_arguments, settings_from_args
from serving.startup import Embedder, StartupError

log = logging.getLogger("serving")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="model-serve",
        description="Reference embeddings server: loads a model from the node cache, serves /v1/embeddings.",
    )
    add_arguments(parser)
    add_common_flags(parser)
    return parser


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(verbosity(args), debug_libs=args.debug_libs)
    try:
        settings = settings_from_args(args, os.environ if environ is None else environ)
    except ConfigError as exc:
        print(f"model-serve: {exc}", file=sys.stderr)
        return 2
    try:
        return asyncio.run(serve(settings, default_deps(settings)))
    except KeyboardInterrupt:
        return 130


def default_deps(settings: Settings) -> Deps:
    """The production edges: a fixed directory or the local agent; the torch loader."""

    async def resolve() -> Path:
        if settings.model_dir is not None:
            return settings.model_dir
        return await wait_for_agent(settings)

    def prepare() -> object:
        return loading.runtime()  # torch: seconds, overlapped with the wait (and a CPU load's reads)

    def load(model_dir: Path) -> Embedder:
        check = settings.verify == "stream"  # "full" checked before, in a pass of its own
        return loading.load(model_dir, device=settings.device, threads=settings.threads, check=check)

    return Deps(resolve=resolve, load=load, prepare=prepare)


async def wait_for_agent(settings: Settings) -> Path:
    """Ask the node agent to fetch ``model_uri`` and wait until it is committed; return its path."""
    assert settings.model_uri is not None
    token_file = client_token_file(settings.token_file)
    try:
        path = await wait_ready(
            settings.agent_url,
            settings.model_uri,
            # The pod's projected ServiceAccount token, re-read per request (the kubelet rotates it).
            token_source=file_token(token_file) if token_file else None,
            timeout=settings.wait_timeout,
        )
    except AgentError as exc:
        raise StartupError(f"waiting for {settings.model_uri} via {settings.agent_url}: {exc}") from exc
    return path


async def serve(settings: Settings, deps: Deps) -> int:
    """Listen at once (probes answer while loading); exit 1 on a failed start, 0 after a drain."""
    failed: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    def fail(message: str) -> None:
        if not failed.done():
            failed.set_result(message)

    app = create_app(settings, replace(deps, on_fatal=fail))
    return await serve_app(
        app,
        prog="model-serve",
        host=settings.host,
        port=settings.port,
        shutdown_timeout=settings.grace_seconds,
        # Admitted requests finish (new ones get 503, readiness drops) before the listener closes.
        before_stop=lambda: drain(app, settings.grace_seconds),
        failed=failed,
    )
