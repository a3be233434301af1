"""``model-agent`` command line: one sub-command per verb, registered by the module that owns it.

Each verb module exposes ``register(subparsers)``, which adds its parsers and sets ``func`` to a
callable ``(args, environ) -> int``. Errors meant for the user are raised as ``CliError``.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping, Sequence

from agent.config import ConfigError, setup_logging


class CliError(Exception):
    """A failure to report on stderr as one line, with a non-zero exit code."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


def build_parser() -> argparse.ArgumentParser:
    from agent import cache_cli, demo, serve_cli

    parser = argparse.ArgumentParser(
        prog="model-agent",
        description="Node agent of model-locality: keeps model weights on local disk.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    for module in (serve_cli, cache_cli, demo):
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    return run_verb("model-agent", build_parser(), argv, environ)


def run_verb(
    prog: str,
    parser: argparse.ArgumentParser,
    argv: Sequence[str] | None,
    environ: Mapping[str, str] | None,
) -> int:
    """Parse, set up logging, run the verb; user errors become one stderr line and an exit code."""
    args = parser.parse_args(argv)
    setup_logging(args.verbose)
    try:
        code: int = args.func(args, os.environ if environ is None else environ)
    except (CliError, ConfigError) as exc:
        print(f"{prog} {args.verb}: {exc}", file=sys.stderr)
        return getattr(exc, "code", 2)
    except KeyboardInterrupt:
        print(f"{prog} {args.verb}: interrupted", file=sys.stderr)
        return 130
    return code
