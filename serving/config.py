"""Serving settings: built once from flags with environment fallbacks, validated, then frozen.

Nothing else in ``serving`` reads ``os.environ``; the CLI passes ``os.environ`` in here.
"""

from __future__ import annotations

import argparse
import contextlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from locality.identity import InvalidURI, model_ref
from locality.settings import ConfigError, Setting, Values, add_settings, flag_or_env, load_token
from serving.naming import default_name, parse_names

DEFAULT_PORT = 8000
DEFAULT_AGENT_URL = "http://127.0.0.1:8470"
DEVICES = ("auto", "cpu", "cuda")
VERIFY_MODES = ("stream", "full", "off")


def _setting(
    flag: str, help: str, name: str, default: Any = None, parse: Any = str, **more: Any
) -> Setting[Any]:
    """A ``model-serve`` setting: variable ``MODEL_LOCALITY_SERVE_<NAME>`` (``MODEL_SERVE_<NAME>``
    still works, with a warning)."""
    env = f"MODEL_LOCALITY_SERVE_{name}"
    return Setting(flag, help, env, default, parse, (f"MODEL_SERVE_{name}",), **more)


# Each setting once: flag, variable (and its old name), default, help.
MODEL_DIR = _setting("--model-dir", "model directory, e.g. the node cache path", "MODEL_DIR")
MODEL_URI = _setting("--model-uri", "model URI; the local agent fetches it", "MODEL_URI")
MODEL_NAME = _setting(
    "--served-model-name",
    "name(s) the model answers to, comma-separated, the first answered as `model`",
    "MODEL_NAME",
    shown="the URI's last segment, from the agent's record for a cache directory, else "
    "config.json's _name_or_path, else the directory name",
    aliases=("--model-name",),
)
HOST = _setting("--host", "listen address", "HOST", "0.0.0.0")
PORT = _setting("--port", "listen port", "PORT", DEFAULT_PORT, int)
DEVICE = _setting("--device", "auto | cpu | cuda", "DEVICE", "auto", str.lower)
THREADS = _setting("--threads", "torch CPU threads", "THREADS", None, int)
MAX_BATCH = _setting("--max-batch", "inputs per forward pass", "MAX_BATCH", 32, int)
MAX_WAIT_MS = _setting("--max-wait-ms", "wait for a fuller batch, ms", "MAX_WAIT_MS", 5.0, float)
MAX_QUEUE = _setting("--max-queue", "queued inputs before 429", "MAX_QUEUE", 1024, int)
MAX_INPUTS = _setting("--max-inputs", "inputs per request", "MAX_INPUTS", 256, int)
MAX_CHARS = _setting("--max-chars", "characters per input", "MAX_CHARS", 20_000, int)
VERIFY = _setting(
    "--verify",
    "stream (check digests while loading, one pass) | full (re-hash first) | off",
    "VERIFY",
    "stream",
    str.lower,
)
AGENT_URL = Setting(
    "--agent-url", "agent REST URL", "MODEL_LOCALITY_AGENT_URL", DEFAULT_AGENT_URL, lambda u: u.rstrip("/")
)
TOKEN_FILE: Setting[str | None] = Setting(
    "--token-file",
    "agent bearer token file, read again for every request",
    "MODEL_LOCALITY_SERVE_TOKEN_FILE",
    deprecated=("MODEL_LOCALITY_TOKEN_FILE",),
    shown="/var/run/secrets/model-locality/token when it exists",
)
WAIT_TIMEOUT = _setting("--wait-timeout", "seconds to wait for the cache", "WAIT_TIMEOUT", 1800.0, float)
GRACE_SECONDS = _setting("--grace-seconds", "SIGTERM drain period", "GRACE_SECONDS", 25.0, float)
# What the admission webhook injects into a pod (no flags): one model's directory (and URI), or a
# JSON object URI -> directory for several.
INJECTED_DIR: Setting[str | None] = Setting(None, "injected model directory", "MODEL_LOCALITY_MODEL_DIR")
INJECTED_URI: Setting[str | None] = Setting(None, "injected model URI", "MODEL_LOCALITY_MODEL_URI")
INJECTED_DIRS: Setting[str | None] = Setting(None, "injected URI -> directory", "MODEL_LOCALITY_MODEL_DIRS")

__all__ = ["ConfigError", "Settings", "add_arguments", "settings_from_args"]


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything the serving process is configured with."""

    model_dir: Path | None = None
    model_uri: str | None = None
    model_name: str = "model"  # the name answered in ``model``; requests naming another get 404
    model_aliases: tuple[str, ...] = ()  # more names requests may use (--served-model-name a,b)
    host: str = HOST.default
    port: int = PORT.default
    device: str = DEVICE.default  # auto: CUDA when torch sees one, else CPU
    threads: int | None = None  # torch intra-op threads; None keeps torch's default
    max_batch: int = MAX_BATCH.default  # inputs per forward pass
    max_wait: float = MAX_WAIT_MS.default / 1000  # seconds the first queued input waits for company
    max_queue: int = MAX_QUEUE.default  # inputs waiting; beyond this a request gets 429
    max_inputs: int = MAX_INPUTS.default  # inputs in one request
    max_chars: int = MAX_CHARS.default  # characters in one input (tokens past the limit: truncated)
    max_body_bytes: int = 8 * 2**20
    # stream: hash each chunk as the loader reads it (one pass); full: re-hash the whole model
    # before loading (a second read); off: header checks only. Only node-cache models have digests.
    verify: str = VERIFY.default
    agent_url: str = AGENT_URL.default
    token: str | None = None
    token_file: str | None = None  # where ``token`` came from: re-read for every agent request
    wait_timeout: float = WAIT_TIMEOUT.default
    grace_seconds: float = GRACE_SECONDS.default

    def validate(self) -> Settings:
        if (self.model_dir is None) == (self.model_uri is None):
            raise ConfigError("give exactly one of --model-dir and --model-uri")
        if self.verify not in VERIFY_MODES:
            raise ConfigError(f"--verify must be one of {', '.join(VERIFY_MODES)}, not {self.verify!r}")
        if self.device not in DEVICES:
            raise ConfigError(f"--device must be one of {', '.join(DEVICES)}, not {self.device!r}")
        if self.threads is not None and not 1 <= self.threads <= 1024:
            raise ConfigError("--threads must be between 1 and 1024")
        if not 1 <= self.max_batch <= 4096:
            raise ConfigError("--max-batch must be between 1 and 4096")
        if not 0 <= self.max_wait <= 10:
            raise ConfigError("--max-wait-ms must be between 0 and 10000")
        if not 1 <= self.max_inputs <= self.max_queue:
            raise ConfigError("--max-inputs must be at least 1 and at most --max-queue")
        if self.max_chars < 1 or self.max_body_bytes < 1024:
            raise ConfigError("--max-chars must be positive and the body limit at least 1 KiB")
        if not 0 < self.port < 65536:
            raise ConfigError(f"invalid port {self.port}")
        if self.wait_timeout <= 0 or self.grace_seconds < 0:
            raise ConfigError("--wait-timeout must be positive and --grace-seconds not negative")
        return self


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Every flag of ``model-serve``; defaults are applied in ``settings_from_args``."""
    add_settings(parser.add_mutually_exclusive_group(), (MODEL_DIR, MODEL_URI))
    add_settings(parser, (MODEL_NAME, HOST, PORT, DEVICE, THREADS, MAX_BATCH, MAX_WAIT_MS, MAX_QUEUE))
    add_settings(parser, (MAX_INPUTS, MAX_CHARS, VERIFY))
    parser.add_argument("--no-verify", action="store_true", help="the same as --verify off")
    add_settings(parser, (AGENT_URL, TOKEN_FILE, WAIT_TIMEOUT, GRACE_SECONDS))


def _injected(
    model_dir: str | None, model_uri: str | None, values: Values
) -> tuple[str | None, str | None, str | None]:
    """(model_dir, model_uri, uri of an injected dir) after what the admission webhook injected.

    Without --model-dir/--model-uri: ``MODEL_LOCALITY_MODEL_DIR`` (+ ``_URI``, for the name), or
    the one entry of ``MODEL_LOCALITY_MODEL_DIRS`` (JSON URI -> dir). With --model-uri of a model
    in ``MODEL_LOCALITY_MODEL_DIRS``: its mounted directory (the init container already waited).
    """
    one, raw = values.get(INJECTED_DIR), values.get(INJECTED_DIRS)
    dirs: dict[str, str] = {}
    if raw:
        try:
            parsed = json.loads(raw)
        except ValueError:
            parsed = None
        if not isinstance(parsed, dict) or not all(isinstance(v, str) for v in parsed.values()):
            raise ConfigError("MODEL_LOCALITY_MODEL_DIRS must be a JSON object of URI -> directory")
        dirs = {str(k): v for k, v in parsed.items()}
    if model_dir is None and model_uri is None:
        if one:
            return one, None, values.get(INJECTED_URI)
        if len(dirs) == 1:
            uri, path = next(iter(dirs.items()))
            return path, None, uri
        if dirs:
            raise ConfigError(
                f"MODEL_LOCALITY_MODEL_DIRS names {len(dirs)} models; choose one with --model-uri"
            )
    if model_uri is not None and model_dir is None and dirs:
        try:
            wanted = model_ref(model_uri).uri
        except InvalidURI as exc:
            raise ConfigError(f"--model-uri: {exc}") from exc
        for uri, path in dirs.items():
            with contextlib.suppress(InvalidURI):
                if model_ref(uri).uri == wanted:
                    return path, None, model_uri
    return model_dir, model_uri, None


def settings_from_args(args: argparse.Namespace, environ: Mapping[str, str]) -> Settings:
    """Merge flags over environment over defaults; raise ``ConfigError`` on anything unusable."""
    values = flag_or_env(args, environ)
    model_dir, model_uri = values.get(MODEL_DIR), values.get(MODEL_URI)
    flags = (getattr(args, MODEL_DIR.dest, None), getattr(args, MODEL_URI.dest, None))
    if model_dir and model_uri and flags == (None, None):
        raise ConfigError(f"{MODEL_DIR.env} and {MODEL_URI.env} are both set; keep one")
    if flags != (None, None):  # a flag beats the other's env
        model_dir, model_uri = flags
    model_dir, model_uri, injected_uri = _injected(model_dir, model_uri, values)
    token_file = values.get(TOKEN_FILE)
    names = parse_names(values.get(MODEL_NAME) or "") or (default_name(model_dir, model_uri or injected_uri),)
    return Settings(
        model_dir=Path(model_dir) if model_dir else None,
        model_uri=model_uri,
        model_name=names[0],
        model_aliases=names[1:],
        host=values.get(HOST),
        port=values.get(PORT),
        device=values.get(DEVICE),
        threads=values.get(THREADS),
        max_batch=values.get(MAX_BATCH),
        max_wait=values.get(MAX_WAIT_MS) / 1000,
        max_queue=values.get(MAX_QUEUE),
        max_inputs=values.get(MAX_INPUTS),
        max_chars=values.get(MAX_CHARS),
        verify="off" if getattr(args, "no_verify", False) else values.get(VERIFY),
        agent_url=values.get(AGENT_URL),
        token=load_token(token_file),
        token_file=token_file,
        wait_timeout=values.get(WAIT_TIMEOUT),
        grace_seconds=values.get(GRACE_SECONDS),
    ).validate()
