"""Settings helpers every service uses: declared settings, flag-or-env lookup, sizes, token files, logging.

Each service declares each setting once (``Setting``: flag, variable, default, help) in its own
``config.py``, adds the flags with ``add_settings`` and builds one frozen ``Settings`` with
``Values``; nothing else reads ``os.environ``. Errors are ``ConfigError``: the CLI prints them as
one line and exits 2.
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

from locality.identity import redact_text

log = logging.getLogger(__name__)
T = TypeVar("T")

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


class FlagOrEnv:
    """``pick(flag, ENV, *OLD_ENVS)``: the flag's value if given, else the first non-empty variable.

    ``OLD_ENVS`` are deprecated names that still work; using one logs a one-line warning naming
    the new one. ``pick.as_int``/``pick.as_float`` convert, and a bad value names where it came from.
    """

    def __init__(self, args: argparse.Namespace, environ: Mapping[str, str]) -> None:
        self._args = args
        self._environ = environ
        self._warned: set[str] = set()

    def __call__(self, flag: str, env: str | None, *deprecated: str) -> str | None:
        return self.where(flag, env, *deprecated)[0]

    def where(self, flag: str, env: str | None, *deprecated: str) -> tuple[str | None, str]:
        """The value and its origin (``--flag`` or the variable's name)."""
        value = getattr(self._args, flag, None)
        if value is not None:
            return str(value), "--" + flag.replace("_", "-")
        for name in (env, *deprecated) if env else deprecated:
            found = self._environ.get(name) or None
            if found is not None:
                if name != env and name not in self._warned:
                    self._warned.add(name)
                    log.warning("%s is deprecated; use %s", name, env)
                return found, name
        return None, env or "--" + flag.replace("_", "-")

    def as_int(self, flag: str, env: str | None, *deprecated: str, default: int) -> int:
        return self._convert(int, "an integer", (flag, env, *deprecated), default)

    def as_float(self, flag: str, env: str | None, *deprecated: str, default: float) -> float:
        return self._convert(float, "a number", (flag, env, *deprecated), default)

    def _convert(self, kind: Callable[[str], T], what: str, names: tuple[str | None, ...], default: T) -> T:
        flag, env, *old = names
        assert flag is not None
        text, origin = self.where(flag, env, *(o for o in old if o))
        if text is None:
            return default
        try:
            return kind(text)
        except ValueError:
            raise ConfigError(f"{origin}={text!r} is not {what}") from None


def flag_or_env(args: argparse.Namespace, environ: Mapping[str, str]) -> Values:
    """The ``pick`` of a service's ``settings_from_args`` (see ``FlagOrEnv`` and ``Values``)."""
    return Values(args, environ)


_NO_DEFAULT: Any = None  # a setting without a default is None when not set
_TEXT: Any = str


@dataclass(frozen=True)
class Setting(Generic[T]):
    """One setting, declared once: its flag, its environment variable (and deprecated old names,
    which still work with a warning), its default and its help; ``--help`` shows all of them.

    ``flag=None``: set by the environment only (the downward API, the webhook's injection).
    ``parse`` turns the text into the value; its ``ValueError`` becomes a ``ConfigError`` naming
    the flag or variable. ``shown``: the default as ``--help`` words it ("" hides it).
    """

    flag: str | None
    help: str
    env: str | None = None
    default: T = _NO_DEFAULT
    parse: Callable[[str], T] = _TEXT
    deprecated: tuple[str, ...] = ()
    shown: str | None = None
    aliases: tuple[str, ...] = ()

    @property
    def dest(self) -> str:
        """The argparse destination: ``--cache-dir`` -> ``cache_dir``."""
        return (self.flag or "").lstrip("-").replace("-", "_")

    def help_text(self) -> str:
        """``help (env NAME, default VALUE)``, from the declaration."""
        shown = self.shown if self.shown is not None else _words(self.default)
        notes = [f"env {self.env}"] if self.env else []
        notes += [f"default {shown}"] if shown else []
        return f"{self.help} ({', '.join(notes)})" if notes else self.help


def _words(default: object) -> str:
    """A default as ``--help`` shows it: ``300.0`` -> ``300``; None -> nothing."""
    if default is None:
        return ""
    return f"{default:g}" if isinstance(default, float) else str(default)


def add_settings(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup, settings: Iterable[Setting[Any]]
) -> None:
    """One flag per declared setting (values are parsed later, by ``Values``, so that a bad flag and a
    bad variable get the same one-line error)."""
    for setting in settings:
        if setting.flag is not None:
            parser.add_argument(setting.flag, *setting.aliases, dest=setting.dest, help=setting.help_text())


_WHAT = {int: "an integer", float: "a number"}


class Values(FlagOrEnv):
    """``values(SETTING)``: the flag if given, else the variable (or a deprecated one), else the default."""

    def get(self, setting: Setting[T]) -> T:
        text, origin = self.where(setting.dest, setting.env, *setting.deprecated)
        if text is None:
            return setting.default
        try:
            return setting.parse(text)
        except ConfigError:
            raise
        except ValueError as exc:
            what = _WHAT.get(setting.parse)  # type: ignore[call-overload]
            raise ConfigError(f"{origin}={text!r} is not {what}" if what else f"{origin}: {exc}") from None

    def given(self, setting: Setting[Any]) -> bool:
        """Whether the flag or a variable of ``setting`` is set (non-empty)."""
        return self.where(setting.dest, setting.env, *setting.deprecated)[0] is not None


def load_token(token_file: str | None) -> str | None:
    """The bearer token from ``token_file`` (None when not configured), or ``ConfigError``."""
    try:
        return read_token_file(token_file)
    except OSError as exc:
        raise ConfigError(f"cannot read token file {token_file}: {exc.strerror or exc}") from exc
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc


# Third-party loggers stay at WARNING unless --debug-libs: botocore's INFO lines split progress
# bars, and its DEBUG lines carry request headers.
LIBRARY_LOGGERS = ("botocore", "boto3", "urllib3", "s3transfer", "kubernetes")  # not aiohttp.access: ours
_SECRET = re.compile(
    r"(?P<akid>\b(?:AKIA|ASIA|AROA|AIDA)[A-Z0-9]{12,}\b)"
    r"|(?P<bearer>\b[Bb]earer\s+)[A-Za-z0-9._~+/=-]+"
    r"|(?P<cred>Credential=)[^/\s,&]+"
)


def redact(text: str) -> str:
    """``text`` with AWS access key ids, bearer tokens and SigV4 credentials replaced by ``***``,
    and the credentials and signed query parameters of any URI in it by ``REDACTED``."""
    return redact_text(_SECRET.sub(lambda m: (m.group("bearer") or m.group("cred") or "") + "***", text))


class RedactingFilter(logging.Filter):
    """Rewrites every record's message through ``redact`` (a belt: we never log secrets ourselves)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = redact(message)
        if clean != message:
            record.msg, record.args = clean, None
        return True


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is at the time (a test's capture, or the terminal)."""

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr
        super().emit(record)


def setup_logging(verbosity: int | bool = 0, *, debug_libs: bool = False) -> None:
    """One log format for every command: time, level, logger, message on stderr.

    ``verbosity``: -1 warnings only (``-q``), 0 info, 1 or more debug (``-v``). Library loggers
    stay at WARNING unless ``debug_libs``; every record passes the redacting filter. Calling it
    again (``main`` run twice in one process) only changes the levels.
    """
    level = logging.DEBUG if verbosity > 0 else logging.WARNING if verbosity < 0 else logging.INFO
    root = logging.getLogger()
    if not any(isinstance(h, _StderrHandler) for h in root.handlers):
        handler = _StderrHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        handler.addFilter(RedactingFilter())
        root.addHandler(handler)
    root.setLevel(level)
    for name in LIBRARY_LOGGERS:
        logging.getLogger(name).setLevel(level if debug_libs else max(level, logging.WARNING))


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
