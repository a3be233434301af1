"""``model-agent`` command line: one sub-command per verb, registered by the module that owns it.

Each verb module exposes ``register(subparsers)``, which adds its parsers and sets ``func`` to a
callable ``(args, environ) -> int``. Verb modules import ``CliError`` from ``locality.cli``, never
this module, so the CLI has no import cycle.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence

from agent.cli import cache_verbs, demo, refresh_verb, serve_verbs
from locality.cli import add_common_flags, run_verb


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="model-agent",
        description="Node agent of model-locality: keeps model weights on local disk.",
    )
    sub = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    for module in (serve_verbs, cache_verbs, refresh_verb, demo):
        module.register(sub)
    add_common_flags(parser)
    return parser


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    return run_verb("model-agent", build_parser(), argv, environ)
