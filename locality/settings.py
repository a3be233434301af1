"""Settings helpers every service uses: flag-or-env lookup, sizes, token files, logging.

Each service builds one frozen ``Settings`` in its own ``config.py`` from these; nothing else reads
``os.environ``. Errors are ``ConfigError``: the CLI prints them as one line and exits 2.
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
from collections.abc import Callable, Mapping
from pathlib import Path

PLACEHOLDER_TOKEN_PREFIX = "CHANGE-ME"
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGTP]i?|[kmgtp]i?)?[Bb]?\s*$")
_UNITS = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12, "p": 10**15}
_IUNITS = {"ki": 2**10, "mi": 2**20, "gi": 2**30, "ti": 2**40, "pi": 2**50}


class ConfigError(ValueError):
    """A setting that cannot be used; the CLI prints it and exits non-zero."""


def parse_size(text: str) -> int:
    """Parse ``123``, ``500G``, ``1.5Ti``, ``64MiB`` into bytes (SI and IEC suffixes)."""
    match = _SIZE.match(str(text))
    if not match:
        raise ConfigError(f"not a size: {text!r} (examples: 500Gi, 2T, 1048576)")
    number, unit = match.groups()
    unit = (unit or "").lower()
    factor = _IUNITS.get(unit) or _UNITS.get(unit)
    if factor is None:
        raise ConfigError(f"unknown size unit in {text!r}")
    return int(float(number) * factor)


def flag_or_env(args: argparse.Namespace, environ: Mapping[str, str]) -> Callable[[str, str], str | None]:
    """``pick(flag, ENV)``: the flag's value if given, else the (non-empty) environment variable."""

    def pick(flag: str, env: str) -> str | None:
        value = getattr(args, flag, None)
        return str(value) if value is not None else environ.get(env) or None

    return pick


def load_token(token_file: str | None) -> str | None:
    """The bearer token from ``token_file`` (None when not configured), or ``ConfigError``."""
    try:
        return read_token_file(token_file)
    except OSError as exc:
        raise ConfigError(f"cannot read token file {token_file}: {exc.strerror or exc}") from exc
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc


def setup_logging(verbose: bool) -> None:
    """One log format for every command: time, level, logger, message on stderr."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def read_token_file(path: str | Path | None) -> str | None:
    """Read a bearer token from a file (a mounted Secret); ``None`` when no file is configured."""
    if not path:
        return None
    token = Path(path).read_text(encoding="utf-8").strip()
    if not token:
        raise ValueError(f"token file {path} is empty")
    if token.startswith(PLACEHOLDER_TOKEN_PREFIX):
        # Fail closed: the manifests' base ships a placeholder so that it renders; serving with it
        # would let anyone who reaches the port start downloads and delete models.
        raise ValueError(
            f"token file {path} holds the placeholder token of the manifests; "
            "replace it (manifests/README.md, section Token)"
        )
    return token
