"""``kubectl model-locality``: the fleet view's command line (reads the cluster as the user).

Installed as ``kubectl-model_locality`` (kubectl finds plugins on PATH by that name). It needs
no agent or extender: it lists Nodes (``get/list/watch nodes``), pods (for pins; optional) and
ModelDistributions through the user's kubeconfig and RBAC.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import sys
from collections.abc import Mapping, Sequence
from typing import TextIO

from fleetview import views
from locality.cli import CliError, add_common_flags, run_verb
from locality.identity import InvalidURI, model_ref
from locality.kube import Kube, KubeError

PROG = "kubectl model-locality"
FORMATS = ("wide", "json", "yaml")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Which nodes hold which models, how full each cache is, how distributions stand.",
    )
    sub = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    models = sub.add_parser("models", help="models x nodes: state, size, progress, revision")
    models.add_argument("model", nargs="?", help="only this model: a URI or an id (prefix)")
    nodes = sub.add_parser("nodes", help="per node: cache use against quota, models, pins")
    nodes.add_argument("node", nargs="*", help="only these nodes")
    dists = sub.add_parser(
        "distributions", aliases=["dist", "mdist"], help="ModelDistributions: desired/ready nodes"
    )
    dists.add_argument("name", nargs="?", help="only this distribution")
    for verb, p in (("models", models), ("nodes", nodes), ("distributions", dists)):
        _cluster_flags(p)
        p.set_defaults(func=cluster_command, view=verb)
    ident = sub.add_parser("id", help="the model id, label key and slug of a URI (no cluster needed)")
    ident.add_argument("uri", nargs="+")
    ident.add_argument("-o", "--output", choices=FORMATS, help="wide, json or yaml")
    ident.set_defaults(func=id_command)
    add_common_flags(parser)
    return parser


def _cluster_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("-o", "--output", choices=FORMATS, help="wide (more columns), json or yaml")
    p.add_argument("-w", "--watch", action="store_true", help="after the table, print rows as they change")
    scope = p.add_mutually_exclusive_group()
    scope.add_argument("-n", "--namespace", help="count pins of pods in this namespace only")
    scope.add_argument(
        "-A", "--all-namespaces", action="store_true", help="count pins of pods in every namespace (default)"
    )
    p.add_argument("--kubeconfig", help="kubeconfig file (default: $KUBECONFIG, then ~/.kube/config)")
    p.add_argument("--context", help="kubeconfig context (default: the current one)")
    p.add_argument("--request-timeout", type=float, default=30.0, help="seconds per API call (default 30)")


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    return run_verb(PROG, build_parser(), argv, environ)


def id_command(args: argparse.Namespace, _environ: Mapping[str, str]) -> int:
    try:
        refs = [model_ref(uri) for uri in args.uri]
    except InvalidURI as exc:
        raise CliError(str(exc)) from None
    sys.stdout.write(views.render_ids(refs, args.output))
    return 0


def cluster_command(args: argparse.Namespace, _environ: Mapping[str, str]) -> int:
    if args.watch and args.output in ("json", "yaml"):
        raise CliError("--watch prints tables; use it without -o json/yaml")
    if args.request_timeout <= 0:
        raise CliError("--request-timeout must be positive")
    return asyncio.run(run(args, sys.stdout, sys.stderr))


async def run(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    """Connect, print the view (and follow it with ``--watch``); Kubernetes errors are one line."""
    try:
        kube = Kube.connect_user(args.kubeconfig, args.context, request_timeout=args.request_timeout)
    except KubeError as exc:
        raise CliError(str(exc)) from None
    try:
        view = views.View.of(args)
        snapshot = await views.read(kube, view)
        for warning in snapshot.warnings:
            print(f"warning: {warning}", file=err)
        text, printed = view.render(snapshot, now())
        out.write(text or _nothing(view))
        out.flush()
        if args.watch:
            await views.follow(kube, view, snapshot, printed, out)
    except KubeError as exc:
        raise CliError(str(exc)) from None
    finally:
        with contextlib.suppress(Exception):
            await kube.close()
    return 0


def _nothing(view: views.View) -> str:
    return f"No {view.kind} found.\n" if view.fmt not in ("json", "yaml") else ""


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)
