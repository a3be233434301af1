"""What every command line of ours shares: ``CliError`` and ``run_verb`` (parse, log, run, exit code).

A verb is a callable ``(args, environ) -> int`` set as ``func`` on its sub-parser. Errors meant for
the user (``CliError``, ``ConfigError``) become one stderr line and a non-zero exit, never a trace.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import sys
from collections.abc import Mapping, Sequence

from locality.settings import ConfigError, setup_logging

DISTRIBUTION = "model-locality"


class CliError(Exception):
    """A failure to report on stderr as one line, with a non-zero exit code."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


def run_verb(
    prog: str,
    parser: argparse.ArgumentParser,
    argv: Sequence[str] | None,
    environ: Mapping[str, str] | None,
) -> int:
    """Parse, set up logging, run the verb; user errors become one stderr line and an exit code."""
    args = parser.parse_args(argv)
    setup_logging(verbosity(args), debug_libs=args.debug_libs)
    try:
        code: int = args.func(args, os.environ if environ is None else environ)
    except (CliError, ConfigError) as exc:
        print(f"{prog} {args.verb}: {exc}", file=sys.stderr)
        return getattr(exc, "code", 2)
    except KeyboardInterrupt:
        print(f"{prog} {args.verb}: interrupted", file=sys.stderr)
        return 130
    return code


def version() -> str:
    """The installed distribution's version (``unknown`` when run from a bare checkout)."""
    try:
        return importlib.metadata.version(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def add_common_flags(parser: argparse.ArgumentParser) -> None:
    """``-v``, ``-q``, ``--debug-libs`` before or after the verb, and ``--version``.

    Call it after the verbs are registered: each sub-parser gets the same flags with suppressed
    defaults, so a flag after the verb overrides the top level and an absent one leaves it alone.
    """
    parser.add_argument("--version", action="version", version=f"%(prog)s {version()}")
    _log_flags(parser, argparse.SUPPRESS)
    parser.set_defaults(verbose=0, quiet=False, debug_libs=False)
    seen: set[int] = set()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                if id(sub) not in seen:
                    seen.add(id(sub))
                    _log_flags(sub, argparse.SUPPRESS)


def _log_flags(parser: argparse.ArgumentParser, default: str) -> None:
    group = parser.add_argument_group("logging")
    group.add_argument("-v", "--verbose", action="count", default=default, help="debug logging")
    group.add_argument("-q", "--quiet", action="store_true", default=default, help="warnings and errors only")
    group.add_argument(
        "--debug-libs",
        action="store_true",
        default=default,
        help="let botocore, urllib3, kubernetes, ... log below WARNING too",
    )


def verbosity(args: argparse.Namespace) -> int:
    """-1 with ``--quiet``, else the number of ``-v``."""
    return -1 if getattr(args, "quiet", False) else int(getattr(args, "verbose", 0) or 0)

