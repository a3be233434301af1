"""``model-extender`` command line: ``serve`` runs the scheduler extender and the cluster REST."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from aiohttp import web

from locality.cli import add_common_flags, run_verb
from locality.httpkit import QuietProbeAccessLogger
from locality.serve import serve
from locality.settings import ConfigError
from scheduler_extender.config import Settings, add_serve_args, settings_from_args

if TYPE_CHECKING:
    from locality.kube import Kube

log = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="model-extender",
        description="kube-scheduler extender of model-locality: scores nodes by the model weights they hold, "
        "and pre-distributes models across the cluster.",
    )
    sub = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    serve = sub.add_parser("serve", help="serve /filter, /prioritize, /v1/distributions and probes")
    add_serve_args(serve)
    serve.set_defaults(func=serve_command)
    add_common_flags(parser)
    return parser


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    return run_verb("model-extender", build_parser(), argv, environ)


# The watch threads decode JSON holding the GIL; the loop answering kube-scheduler gives the GIL up
# on every socket write and waits up to the switch interval to get it back (5 ms by default, per
# write). 0.5 ms bounds that wait for a serial scheduler loop (bench/README.md, the drain).
SWITCH_INTERVAL_SECONDS = 0.0005


def serve_command(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    settings = settings_from_args(args, environ)
    sys.setswitchinterval(SWITCH_INTERVAL_SECONDS)
    kube = connect(settings)
    from scheduler_extender.app import Deps, create_app, fast_site

    if kube is None and settings.token is None:  # fail closed: no way to tell who is calling
        raise ConfigError(
            "no authenticator: outside a cluster pass --token-file; in a cluster, "
            "ServiceAccount tokens are checked with the API server"
        )
    from locality import auth

    app = create_app(settings, Deps(kube=kube, authenticator=auth.build(settings.token, kube)))
    if kube is not None:

        async def close_kube(_: web.Application) -> None:
            await kube.close()

        app.on_cleanup.append(close_kube)
    return asyncio.run(
        serve(
            app,
            prog="model-extender serve",
            host=settings.host,
            port=settings.port,
            shutdown_timeout=settings.grace_seconds,
            access_log_class=AccessLogger,
            site=fast_site(app),
        )
    )


class AccessLogger(QuietProbeAccessLogger):
    """Probes are not logged, nor successful scheduler verbs: kube-scheduler sends one or two per
    pod (hundreds a second in a burst); the request metrics count them instead."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        if response.status < 400 and request.path.endswith(("/filter", "/prioritize")):
            return
        super().log(request, response, time)


def connect(settings: Settings) -> Kube | None:
    """The Kubernetes API, or None (standalone) when there is neither a kubeconfig nor in-cluster config."""
    from locality.kube import Kube, KubeError

    try:
        kube = Kube.connect(settings.kubeconfig)
    except KubeError as exc:  # a missing or garbled kubeconfig
        raise ConfigError(str(exc)) from exc
    if kube is None:
        log.warning(
            "standalone: no kubeconfig and not in a cluster; answering full-Nodes requests only "
            "(names-only requests score 0), distributions unavailable"
        )
    return kube
