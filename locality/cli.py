"""What every command line of ours shares: ``CliError`` and ``run_verb`` (parse, log, run, exit code).

A verb is a callable ``(args, environ) -> int`` set as ``func`` on its sub-parser. Errors meant for
the user (``CliError``, ``ConfigError``) become one stderr line and a non-zero exit, never a trace.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping, Sequence

from locality.settings import ConfigError, setup_logging


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
