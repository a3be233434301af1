"""Extender settings: built once from flags with environment fallbacks, validated, then frozen.

Nothing else in the extender reads ``os.environ``; the CLI passes it in here.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace

from locality.settings import ConfigError, flag_or_env, load_token, parse_size
from scheduler_extender.webhook_config import WebhookSettings, add_webhook_args, webhook_settings

DEFAULT_PORT = 8471
DEFAULT_MAX_BODY = 64 * 2**20  # 500 full Node objects with images and managedFields fit easily
_PREFIX = re.compile(r"^(/[A-Za-z0-9._~-]+)*$")


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything the extender is configured with."""

    host: str = "0.0.0.0"
    port: int = DEFAULT_PORT
    token: str | None = None
    kubeconfig: str | None = None
    in_cluster: bool = False
    url_prefix: str = ""  # "" -> /filter, /prioritize; "/scheduler" -> /scheduler/filter, ...
    max_body_bytes: int = DEFAULT_MAX_BODY
    resync_seconds: float = 300.0  # full re-list of Nodes and distributions
    status_interval_seconds: float = 5.0  # at most one status write per distribution per interval
    grace_seconds: float = 10.0
    startup_timeout_seconds: float = 3600.0  # bound, not Ready after this: counted as not_ready
    workload_poll_seconds: float = 15.0  # re-read of the Deployment/HPA of a `replicas: auto` distribution
    default_cold_seconds: float = 300.0  # cold time to ready used until MIN_SAMPLES are measured
    webhook: WebhookSettings | None = None  # None: no admission webhook (no --webhook-port)

    @property
    def standalone(self) -> bool:
        """No cluster: full-Nodes requests only (names-only requests see an empty node cache)."""
        return self.kubeconfig is None and not self.in_cluster

    def validate(self) -> Settings:
        if not 0 < self.port < 65536:
            raise ConfigError(f"invalid port {self.port}")
        if not _PREFIX.match(self.url_prefix):
            raise ConfigError(f"invalid URL prefix {self.url_prefix!r}: use e.g. /scheduler")
        if not 1024 <= self.max_body_bytes <= 2**31:
            raise ConfigError("max body size must be between 1 KiB and 2 GiB")
        if self.resync_seconds < 1 or self.status_interval_seconds < 0 or self.grace_seconds < 0:
            raise ConfigError("intervals must be positive")
        if min(self.startup_timeout_seconds, self.workload_poll_seconds, self.default_cold_seconds) <= 0:
            raise ConfigError("startup timeout, workload poll and default cold seconds must be positive")
        return self


def normalize_prefix(text: str) -> str:
    """``scheduler/`` -> ``/scheduler``; empty and ``/`` -> ``""``."""
    text = text.strip().strip("/")
    return f"/{text}" if text else ""


def add_serve_args(parser: argparse.ArgumentParser) -> None:
    """Flags of ``model-extender serve``."""
    parser.add_argument("--host", help="listen address (env MODEL_LOCALITY_EXTENDER_HOST, default 0.0.0.0)")
    parser.add_argument(
        "--port", type=int, help=f"listen port (env MODEL_LOCALITY_EXTENDER_PORT, default {DEFAULT_PORT})"
    )
    parser.add_argument("--token-file", help="bearer token file (env MODEL_LOCALITY_EXTENDER_TOKEN_FILE)")
    parser.add_argument(
        "--kubeconfig",
        help="kubeconfig path (env KUBECONFIG; default: in-cluster; neither: standalone)",
    )
    parser.add_argument(
        "--url-prefix",
        help="path prefix of the scheduler verbs, e.g. /scheduler (env MODEL_LOCALITY_EXTENDER_URL_PREFIX; "
        "default none: /filter and /prioritize)",
    )
    parser.add_argument(
        "--max-body-bytes",
        help="largest accepted request body, e.g. 64Mi (env MODEL_LOCALITY_EXTENDER_MAX_BODY_BYTES)",
    )
    parser.add_argument(
        "--resync-seconds", type=float, help="full re-list interval of the watches (default 300)"
    )
    parser.add_argument(
        "--status-interval-seconds",
        type=float,
        help="minimum seconds between status writes of one distribution (default 5)",
    )
    parser.add_argument("--grace-seconds", type=float, help="SIGTERM grace period (default 10)")
    parser.add_argument(
        "--startup-timeout-seconds",
        type=float,
        help="an injected pod bound this long and not Ready counts as not_ready (default 3600)",
    )
    parser.add_argument(
        "--workload-poll-seconds",
        type=float,
        help="re-read interval of the workload of a `replicas: auto` distribution (default 15)",
    )
    parser.add_argument(
        "--default-cold-seconds",
        type=float,
        help="cold time to ready assumed until 3 cold starts of a model are measured (default 300)",
    )
    add_webhook_args(parser)


def settings_from_args(args: argparse.Namespace, environ: Mapping[str, str]) -> Settings:
    """Merge flags over environment over defaults; raise ``ConfigError`` on anything unusable."""
    pick = flag_or_env(args, environ)
    defaults = Settings()
    token = load_token(pick("token_file", "MODEL_LOCALITY_EXTENDER_TOKEN_FILE", "MODEL_LOCALITY_TOKEN_FILE"))
    body = pick("max_body_bytes", "MODEL_LOCALITY_EXTENDER_MAX_BODY_BYTES", "MODEL_LOCALITY_MAX_BODY_BYTES")
    try:
        settings = Settings(
            host=pick("host", "MODEL_LOCALITY_EXTENDER_HOST", "MODEL_LOCALITY_HOST") or defaults.host,
            port=pick.as_int(
                "port", "MODEL_LOCALITY_EXTENDER_PORT", "MODEL_LOCALITY_PORT", default=defaults.port
            ),
            token=token,
            kubeconfig=pick("kubeconfig", "KUBECONFIG"),
            in_cluster=bool(environ.get("KUBERNETES_SERVICE_HOST")),
            url_prefix=normalize_prefix(
                pick("url_prefix", "MODEL_LOCALITY_EXTENDER_URL_PREFIX", "MODEL_LOCALITY_URL_PREFIX") or ""
            ),
            max_body_bytes=parse_size(body) if body else defaults.max_body_bytes,
            resync_seconds=pick.as_float("resync_seconds", None, default=defaults.resync_seconds),
            status_interval_seconds=pick.as_float(
                "status_interval_seconds", None, default=defaults.status_interval_seconds
            ),
            grace_seconds=pick.as_float("grace_seconds", None, default=defaults.grace_seconds),
            startup_timeout_seconds=pick.as_float(
                "startup_timeout_seconds", None, default=defaults.startup_timeout_seconds
            ),
            workload_poll_seconds=pick.as_float(
                "workload_poll_seconds", None, default=defaults.workload_poll_seconds
            ),
            default_cold_seconds=pick.as_float(
                "default_cold_seconds", None, default=defaults.default_cold_seconds
            ),
        )
    except ValueError as exc:
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(str(exc)) from exc
    return replace(settings, webhook=webhook_settings(pick)).validate()
