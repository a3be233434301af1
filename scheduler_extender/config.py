"""Extender settings: built once from flags with environment fallbacks, validated, then frozen.

Nothing else in the extender reads ``os.environ``; the CLI passes it in here.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace

from locality.settings import ConfigError, Setting, add_settings, flag_or_env, load_token, parse_size
from scheduler_extender.webhook_config import WebhookSettings, add_webhook_args, webhook_settings

DEFAULT_PORT = 8471
DEFAULT_MAX_BODY = 64 * 2**20  # 500 full Node objects with images and managedFields fit easily
_PREFIX = re.compile(r"^(/[A-Za-z0-9._~-]+)*$")


def normalize_prefix(text: str) -> str:
    """``scheduler/`` -> ``/scheduler``; empty and ``/`` -> ``""``."""
    text = text.strip().strip("/")
    return f"/{text}" if text else ""


# Each setting once: flag, variable (old unprefixed names still work, with a warning), default, help.
HOST = Setting(
    "--host", "listen address", "MODEL_LOCALITY_EXTENDER_HOST", "0.0.0.0", deprecated=("MODEL_LOCALITY_HOST",)
)
PORT = Setting(
    "--port", "listen port", "MODEL_LOCALITY_EXTENDER_PORT", DEFAULT_PORT, int, ("MODEL_LOCALITY_PORT",)
)
TOKEN_FILE: Setting[str | None] = Setting(
    "--token-file",
    "bearer token file",
    "MODEL_LOCALITY_EXTENDER_TOKEN_FILE",
    deprecated=("MODEL_LOCALITY_TOKEN_FILE",),
)
KUBECONFIG: Setting[str | None] = Setting(
    "--kubeconfig", "kubeconfig path", "KUBECONFIG", shown="in-cluster; neither: standalone"
)
IN_CLUSTER: Setting[str | None] = Setting(None, "set in every pod by Kubernetes", "KUBERNETES_SERVICE_HOST")
URL_PREFIX = Setting(
    "--url-prefix",
    "path prefix of the scheduler verbs, e.g. /scheduler",
    "MODEL_LOCALITY_EXTENDER_URL_PREFIX",
    "",
    normalize_prefix,
    ("MODEL_LOCALITY_URL_PREFIX",),
    shown="none: /filter and /prioritize",
)
MAX_BODY_BYTES = Setting(
    "--max-body-bytes",
    "largest accepted request body, e.g. 64Mi",
    "MODEL_LOCALITY_EXTENDER_MAX_BODY_BYTES",
    DEFAULT_MAX_BODY,
    parse_size,
    ("MODEL_LOCALITY_MAX_BODY_BYTES",),
    shown="64Mi",
)
RESYNC_SECONDS = Setting("--resync-seconds", "full re-list interval of the watches", None, 300.0, float)
STATUS_INTERVAL_SECONDS = Setting(
    "--status-interval-seconds", "minimum seconds between status writes of one distribution", None, 5.0, float
)
GRACE_SECONDS = Setting("--grace-seconds", "SIGTERM grace period", None, 10.0, float)
STARTUP_TIMEOUT_SECONDS = Setting(
    "--startup-timeout-seconds",
    "an injected pod bound this long and not Ready counts as not_ready",
    None,
    3600.0,
    float,
)
WORKLOAD_POLL_SECONDS = Setting(
    "--workload-poll-seconds",
    "re-read interval of the workload of a `replicas: auto` distribution",
    None,
    15.0,
    float,
)
DEFAULT_COLD_SECONDS = Setting(
    "--default-cold-seconds",
    "cold time to ready assumed until 3 cold starts of a model are measured",
    None,
    300.0,
    float,
)
SERVE_SETTINGS = (
    HOST,
    PORT,
    TOKEN_FILE,
    KUBECONFIG,
    URL_PREFIX,
    MAX_BODY_BYTES,
    RESYNC_SECONDS,
    STATUS_INTERVAL_SECONDS,
    GRACE_SECONDS,
    STARTUP_TIMEOUT_SECONDS,
    WORKLOAD_POLL_SECONDS,
    DEFAULT_COLD_SECONDS,
)


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything the extender is configured with."""

    host: str = HOST.default
    port: int = PORT.default
    token: str | None = None
    kubeconfig: str | None = None
    in_cluster: bool = False
    url_prefix: str = URL_PREFIX.default  # "" -> /filter, /prioritize; "/scheduler" -> /scheduler/filter
    max_body_bytes: int = MAX_BODY_BYTES.default
    resync_seconds: float = RESYNC_SECONDS.default  # full re-list of Nodes and distributions
    status_interval_seconds: float = STATUS_INTERVAL_SECONDS.default  # one status write per interval
    grace_seconds: float = GRACE_SECONDS.default
    startup_timeout_seconds: float = STARTUP_TIMEOUT_SECONDS.default  # bound, not Ready: not_ready
    workload_poll_seconds: float = WORKLOAD_POLL_SECONDS.default  # Deployment/HPA of `replicas: auto`
    default_cold_seconds: float = DEFAULT_COLD_SECONDS.default  # until MIN_SAMPLES are measured
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


def add_serve_args(parser: argparse.ArgumentParser) -> None:
    """Flags of ``model-extender serve``."""
    add_settings(parser, SERVE_SETTINGS)
    add_webhook_args(parser)


def settings_from_args(args: argparse.Namespace, environ: Mapping[str, str]) -> Settings:
    """Merge flags over environment over defaults; raise ``ConfigError`` on anything unusable."""
    values = flag_or_env(args, environ)
    settings = Settings(
        host=values.get(HOST),
        port=values.get(PORT),
        token=load_token(values.get(TOKEN_FILE)),
        kubeconfig=values.get(KUBECONFIG),
        in_cluster=values.given(IN_CLUSTER),
        url_prefix=values.get(URL_PREFIX),
        max_body_bytes=values.get(MAX_BODY_BYTES),
        resync_seconds=values.get(RESYNC_SECONDS),
        status_interval_seconds=values.get(STATUS_INTERVAL_SECONDS),
        grace_seconds=values.get(GRACE_SECONDS),
        startup_timeout_seconds=values.get(STARTUP_TIMEOUT_SECONDS),
        workload_poll_seconds=values.get(WORKLOAD_POLL_SECONDS),
        default_cold_seconds=values.get(DEFAULT_COLD_SECONDS),
    )
    return replace(settings, webhook=webhook_settings(values)).validate()
