"""``model-serve``: parse settings, find the model directory, serve until SIGTERM or a failed start."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import logging
import os
import signal
import sys
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path

from aiohttp import web

from locality.agentclient import AgentError, client_token_file, file_token, wait_ready
from locality.cli import add_common_flags, verbosity
from locality.httpkit import QuietProbeAccessLogger
from locality.settings import setup_logging
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
        return importlib.import_module("serving.model")  # torch: seconds, overlapped with the wait

    def load(model_dir: Path) -> Embedder:
        from serving import model

        check = settings.verify == "stream"  # "full" checked before, in a pass of its own
        return model.load(model_dir, device=settings.device, threads=settings.threads, check=check)

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
    loop = asyncio.get_running_loop()
    outcome: asyncio.Future[str | None] = loop.create_future()  # a failure message, or None on a signal

    def finish(message: str | None) -> None:
        if not outcome.done():
            outcome.set_result(message)

    app = create_app(settings, replace(deps, on_fatal=finish))
    runner = web.AppRunner(app, access_log_class=QuietProbeAccessLogger, handle_signals=False)
    await runner.setup()
    try:
        try:
            await web.TCPSite(runner, settings.host, settings.port).start()
        except OSError as exc:
            print(
                f"model-serve: cannot listen on {settings.host}:{settings.port}: "
                f"{os.strerror(exc.errno) if exc.errno else exc}",  # aiohttp's strerror is a sentence
                file=sys.stderr,
            )
            return 1
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, finish, None)
        log.info("listening on %s:%d", settings.host, settings.port)
        failure = await outcome
        if failure is not None:
            print(f"model-serve: {failure}", file=sys.stderr)
            return 1
        log.info("stop signal: draining for up to %.0fs", settings.grace_seconds)
        await drain(app, settings.grace_seconds)
        return 0
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        await runner.cleanup()
