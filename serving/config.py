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

from locality.identity import InvalidURI, model_ref
from locality.settings import ConfigError, flag_or_env, load_token
from serving.naming import default_name, parse_names

DEFAULT_PORT = 8000
DEFAULT_AGENT_URL = "http://127.0.0.1:8470"
DEVICES = ("auto", "cpu", "cuda")
VERIFY_MODES = ("stream", "full", "off")

__all__ = ["ConfigError", "Settings", "add_arguments", "settings_from_args"]


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything the serving process is configured with."""

    model_dir: Path | None = None
    model_uri: str | None = None
    model_name: str = "model"  # the name answered in ``model``; requests naming another get 404
    model_aliases: tuple[str, ...] = ()  # more names requests may use (--served-model-name a,b)
    host: str = "0.0.0.0"
    port: int = DEFAULT_PORT
    device: str = "auto"  # auto: CUDA when torch sees one, else CPU
    threads: int | None = None  # torch intra-op threads; None keeps torch's default
    max_batch: int = 32  # inputs per forward pass
    max_wait: float = 0.005  # seconds the first queued input waits for company
    max_queue: int = 1024  # inputs waiting; beyond this a request gets 429
    max_inputs: int = 256  # inputs in one request
    max_chars: int = 20_000  # characters in one input (tokens past the model's limit are truncated)
    max_body_bytes: int = 8 * 2**20
    # stream: hash each chunk as the loader reads it (one pass); full: re-hash the whole model
    # before loading (a second read); off: header checks only. Only node-cache models have digests.
    verify: str = "stream"
    agent_url: str = DEFAULT_AGENT_URL
    token: str | None = None
    token_file: str | None = None  # where ``token`` came from: re-read for every agent request
    wait_timeout: float = 1800.0
    grace_seconds: float = 25.0

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
    src = parser.add_mutually_exclusive_group()
    src.add_argument(
        "--model-dir", help="model directory, e.g. the node cache path (env MODEL_LOCALITY_SERVE_MODEL_DIR)"
    )
    src.add_argument(
        "--model-uri", help="model URI; the local agent fetches it (env MODEL_LOCALITY_SERVE_MODEL_URI)"
    )
    parser.add_argument(
        "--served-model-name",
        "--model-name",
        dest="model_name",
        help="name(s) the model answers to, comma-separated, the first answered as `model` "
        "(env MODEL_LOCALITY_SERVE_MODEL_NAME; default: the URI's last segment, from the agent's "
        "record for a cache directory, else config.json's _name_or_path, else the directory name)",
    )
    parser.add_argument("--host", help="listen address (env MODEL_LOCALITY_SERVE_HOST, default 0.0.0.0)")
    parser.add_argument(
        "--port", type=int, help=f"listen port (env MODEL_LOCALITY_SERVE_PORT, default {DEFAULT_PORT})"
    )
    parser.add_argument("--device", help="auto | cpu | cuda (env MODEL_LOCALITY_SERVE_DEVICE, default auto)")
    parser.add_argument("--threads", type=int, help="torch CPU threads (env MODEL_LOCALITY_SERVE_THREADS)")
    parser.add_argument("--max-batch", type=int, help="inputs per forward pass (default 32)")
    parser.add_argument("--max-wait-ms", type=float, help="wait for a fuller batch, ms (default 5)")
    parser.add_argument("--max-queue", type=int, help="queued inputs before 429 (default 1024)")
    parser.add_argument("--max-inputs", type=int, help="inputs per request (default 256)")
    parser.add_argument("--max-chars", type=int, help="characters per input (default 20000)")
    parser.add_argument(
        "--verify",
        help="stream (default: check digests while loading, one pass) | full (re-hash first) | off"
        " (env MODEL_LOCALITY_SERVE_VERIFY)",
    )
    parser.add_argument("--no-verify", action="store_true", help="the same as --verify off")
    parser.add_argument(
        "--agent-url", help=f"agent REST URL (env MODEL_LOCALITY_AGENT_URL, {DEFAULT_AGENT_URL})"
    )
    parser.add_argument(
        "--token-file",
        help="agent bearer token file, read again for every request (env MODEL_LOCALITY_SERVE_TOKEN_FILE "
        "or MODEL_LOCALITY_TOKEN_FILE; default /var/run/secrets/model-locality/token when it exists)",
    )
    parser.add_argument("--wait-timeout", type=float, help="seconds to wait for the cache (default 1800)")
    parser.add_argument("--grace-seconds", type=float, help="SIGTERM drain period (default 25)")


def _injected(
    model_dir: str | None, model_uri: str | None, environ: Mapping[str, str]
) -> tuple[str | None, str | None, str | None]:
    """(model_dir, model_uri, uri of an injected dir) after what the admission webhook injected.

    Without --model-dir/--model-uri: ``MODEL_LOCALITY_MODEL_DIR`` (+ ``_URI``, for the name), or
    the one entry of ``MODEL_LOCALITY_MODEL_DIRS`` (JSON URI -> dir). With --model-uri of a model
    in ``MODEL_LOCALITY_MODEL_DIRS``: its mounted directory (the init container already waited).
    """
    one = environ.get("MODEL_LOCALITY_MODEL_DIR") or None
    raw = environ.get("MODEL_LOCALITY_MODEL_DIRS") or None
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
            return one, None, environ.get("MODEL_LOCALITY_MODEL_URI") or None
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

    pick = flag_or_env(args, environ)
    d = Settings()
    model_dir = pick("model_dir", "MODEL_LOCALITY_SERVE_MODEL_DIR", "MODEL_SERVE_MODEL_DIR")
    model_uri = pick("model_uri", "MODEL_LOCALITY_SERVE_MODEL_URI", "MODEL_SERVE_MODEL_URI")
    if model_dir and model_uri and args.model_dir is None and args.model_uri is None:
        raise ConfigError(
            "MODEL_LOCALITY_SERVE_MODEL_DIR and MODEL_LOCALITY_SERVE_MODEL_URI are both set; keep one"
        )
    if args.model_dir is not None or args.model_uri is not None:  # a flag beats the other's env
        model_dir, model_uri = args.model_dir, args.model_uri
    model_dir, model_uri, injected_uri = _injected(model_dir, model_uri, environ)
    token_file = pick("token_file", "MODEL_LOCALITY_SERVE_TOKEN_FILE", "MODEL_LOCALITY_TOKEN_FILE")
    token = load_token(token_file)
    names = parse_names(
        pick("model_name", "MODEL_LOCALITY_SERVE_MODEL_NAME", "MODEL_SERVE_MODEL_NAME") or ""
    ) or (default_name(model_dir, model_uri or injected_uri),)
    try:
        thread_envs = ("MODEL_LOCALITY_SERVE_THREADS", "MODEL_SERVE_THREADS")
        threads = pick.as_int("threads", *thread_envs, default=0) if pick("threads", *thread_envs) else None
        wait_ms = pick.as_float(
            "max_wait_ms",
            "MODEL_LOCALITY_SERVE_MAX_WAIT_MS",
            "MODEL_SERVE_MAX_WAIT_MS",
            default=d.max_wait * 1000,
        )
        verify = (
            "off"
            if getattr(args, "no_verify", False)
            else pick("verify", "MODEL_LOCALITY_SERVE_VERIFY", "MODEL_SERVE_VERIFY") or d.verify
        )
        settings = Settings(
            model_dir=Path(model_dir) if model_dir else None,
            model_uri=model_uri,
            model_name=names[0],
            model_aliases=names[1:],
            host=pick("host", "MODEL_LOCALITY_SERVE_HOST", "MODEL_SERVE_HOST") or d.host,
            port=pick.as_int("port", "MODEL_LOCALITY_SERVE_PORT", "MODEL_SERVE_PORT", default=d.port),
            device=(pick("device", "MODEL_LOCALITY_SERVE_DEVICE", "MODEL_SERVE_DEVICE") or d.device).lower(),
            threads=threads,
            max_batch=pick.as_int(
                "max_batch", "MODEL_LOCALITY_SERVE_MAX_BATCH", "MODEL_SERVE_MAX_BATCH", default=d.max_batch
            ),
            max_wait=wait_ms / 1000,
            max_queue=pick.as_int(
                "max_queue", "MODEL_LOCALITY_SERVE_MAX_QUEUE", "MODEL_SERVE_MAX_QUEUE", default=d.max_queue
            ),
            max_inputs=pick.as_int(
                "max_inputs",
                "MODEL_LOCALITY_SERVE_MAX_INPUTS",
                "MODEL_SERVE_MAX_INPUTS",
                default=d.max_inputs,
            ),
            max_chars=pick.as_int(
                "max_chars", "MODEL_LOCALITY_SERVE_MAX_CHARS", "MODEL_SERVE_MAX_CHARS", default=d.max_chars
            ),
            verify=verify.lower(),
            agent_url=(pick("agent_url", "MODEL_LOCALITY_AGENT_URL") or d.agent_url).rstrip("/"),
            token=token,
            token_file=token_file,
            wait_timeout=pick.as_float(
                "wait_timeout",
                "MODEL_LOCALITY_SERVE_WAIT_TIMEOUT",
                "MODEL_SERVE_WAIT_TIMEOUT",
                default=d.wait_timeout,
            ),
            grace_seconds=pick.as_float(
                "grace_seconds",
                "MODEL_LOCALITY_SERVE_GRACE_SECONDS",
                "MODEL_SERVE_GRACE_SECONDS",
                default=d.grace_seconds,
            ),
        )
    except ValueError as exc:
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(f"bad setting: {exc}") from exc
    return settings.validate()
