"""Agent settings: built once from flags with environment fallbacks, validated, then frozen.

Nothing else in the agent reads ``os.environ``; the CLI passes ``os.environ`` in here.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from locality.settings import ConfigError, flag_or_env, load_token, parse_size

DEFAULT_CACHE_DIR = "/var/lib/model-locality"
DEFAULT_PORT = 8470


@dataclass(frozen=True, slots=True)
class PeerSettings:
    """Fetching chunks from other agents (docs/peers.md)."""

    mode: str = "auto"  # auto: in a cluster, find agents through the API; off; or a URL list
    port: int = 8472  # the peer endpoint's listener (its own, apart from the REST API)
    url: str | None = None  # how other agents reach ours (default http://$POD_IP:<port>)
    pod_name: str | None = None  # POD_NAME / POD_NAMESPACE / POD_IP from the downward API
    pod_namespace: str = "model-locality"
    pod_ip: str | None = None
    token_file: str | None = None  # standalone: a token file every agent of the group shares
    sa_token_file: str = "/var/run/secrets/model-locality-peer/token"  # in a cluster: projected
    identity: str = "system:serviceaccount:model-locality:model-locality-agent"
    upload_rate: int = 500 * 2**20  # bytes/s this node uploads to peers, all uploads together
    max_uploads: int = 8
    timeout: float = 10.0  # seconds without a byte from a peer before its transfer fails

    def validate(self) -> PeerSettings:
        if not 0 < self.port < 65536:
            raise ConfigError(f"invalid peer port {self.port}")
        if self.upload_rate < 0 or not 1 <= self.max_uploads <= 1024:
            raise ConfigError("--upload-rate must be >= 0 (0: unlimited), --max-uploads 1..1024")
        if not 0 < self.timeout <= 3600:
            raise ConfigError("--peer-timeout must be between 0 and 3600 seconds")
        if self.mode not in ("auto", "off") and not self.mode.startswith(("http://", "https://")):
            raise ConfigError("--peers is auto, off, or a comma-separated list of peer URLs")
        return self


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything the agent is configured with."""

    cache_dir: Path = Path(DEFAULT_CACHE_DIR)
    host: str = "0.0.0.0"
    port: int = DEFAULT_PORT
    token: str | None = None
    token_file: str | None = None  # where ``token`` came from (clients re-read it per request)
    node_name: str | None = None
    kubeconfig: str | None = None
    quota_bytes: int | None = None  # None: the filesystem size of cache_dir
    high_watermark: float = 0.90
    low_watermark: float = 0.80
    concurrency: int = 8
    chunk_bytes: int = 32 * 2**20
    max_parallel_models: int = 2
    agent_url: str = f"http://127.0.0.1:{DEFAULT_PORT}"
    grace_seconds: float = 25.0
    connect_timeout: float = 10.0  # seconds to open a connection to a model's origin
    read_timeout: float = 30.0  # seconds without a byte from the origin before a request fails
    attempts: int = 6  # tries of one listing or chunk on transient errors (first try included)
    refresh_seconds: float = 600.0  # re-check every model's origin this often (0: never)
    insecure_registries: tuple[str, ...] = ()  # oci:// registries reached over plain HTTP
    registry_auth_files: tuple[str, ...] = ()  # Docker config files with registry logins, first match wins
    peers: PeerSettings = PeerSettings()

    def validate(self) -> Settings:
        if not 0 < self.low_watermark < self.high_watermark <= 1:
            raise ConfigError("watermarks need 0 < low < high <= 1")
        if self.quota_bytes is not None and self.quota_bytes <= 0:
            raise ConfigError("quota must be positive")
        if not 1 <= self.concurrency <= 256:
            raise ConfigError("concurrency must be between 1 and 256")
        if not 2**20 <= self.chunk_bytes <= 2**30:
            raise ConfigError("chunk size must be between 1 MiB and 1 GiB")
        if not 0 < self.port < 65536:
            raise ConfigError(f"invalid port {self.port}")
        if not (0 < self.connect_timeout <= 3600 and 0 < self.read_timeout <= 3600):
            raise ConfigError("--connect-timeout and --read-timeout must be between 0 and 3600 seconds")
        if not 1 <= self.attempts <= 100:
            raise ConfigError("--retries must be between 0 and 99")
        if not 0 <= self.refresh_seconds <= 7 * 86400:
            raise ConfigError("--refresh-interval must be between 0 (never) and 604800 seconds")
        return self


def add_cache_args(parser: argparse.ArgumentParser) -> None:
    """Flags every verb takes."""
    parser.add_argument(
        "--cache-dir", help=f"cache root (env MODEL_LOCALITY_CACHE_DIR, default {DEFAULT_CACHE_DIR})"
    )
    parser.add_argument(
        "--quota", help="byte quota, e.g. 500Gi (env MODEL_LOCALITY_QUOTA; default: the disk size)"
    )
    parser.add_argument(
        "--high-watermark", type=float, help="evict above this share of the quota (default 0.90)"
    )
    parser.add_argument("--low-watermark", type=float, help="evict down to this share (default 0.80)")
    parser.add_argument("--concurrency", type=int, help="parallel ranged GETs per model (default 8)")
    parser.add_argument("--chunk-size", help="bytes per ranged GET, e.g. 32Mi (default 32Mi)")
    parser.add_argument(
        "--connect-timeout",
        help="seconds to connect to the origin (env MODEL_LOCALITY_CONNECT_TIMEOUT, default 10)",
    )
    parser.add_argument(
        "--read-timeout",
        help="seconds without a byte from the origin before a try fails "
        "(env MODEL_LOCALITY_READ_TIMEOUT, default 30)",
    )
    parser.add_argument(
        "--insecure-registries",
        help="comma-separated oci:// registries (host[:port]) spoken to over plain HTTP "
        "(env MODEL_LOCALITY_INSECURE_REGISTRIES; default none: HTTPS only)",
    )
    parser.add_argument(
        "--registry-auth-file",
        help="Docker config JSON with registry logins, read before REGISTRY_AUTH_FILE, "
        "$DOCKER_CONFIG/config.json and ~/.docker/config.json (env MODEL_LOCALITY_REGISTRY_AUTH_FILE; "
        "a mounted kubernetes.io/dockerconfigjson Secret's .dockerconfigjson)",
    )
    parser.add_argument(
        "--retries",
        help="retries of a listing or chunk after transient errors (env MODEL_LOCALITY_RETRIES, default 5)",
    )


def add_server_args(parser: argparse.ArgumentParser) -> None:
    """Flags of ``serve``."""
    parser.add_argument("--host", help="listen address (env MODEL_LOCALITY_AGENT_HOST, default 0.0.0.0)")
    parser.add_argument(
        "--port", type=int, help=f"listen port (env MODEL_LOCALITY_AGENT_PORT, default {DEFAULT_PORT})"
    )
    parser.add_argument("--token-file", help="bearer token file (env MODEL_LOCALITY_AGENT_TOKEN_FILE)")
    parser.add_argument("--node-name", help="this node's name (env NODE_NAME, from the downward API)")
    parser.add_argument("--kubeconfig", help="kubeconfig path (env KUBECONFIG; default: in-cluster)")
    parser.add_argument("--grace-seconds", type=float, help="SIGTERM grace period (default 25)")
    parser.add_argument(
        "--refresh-interval",
        help="seconds between re-checks of each model's origin for a new revision; 0: never "
        "(env MODEL_LOCALITY_REFRESH_SECONDS, default 600)",
    )


def add_peer_args(parser: argparse.ArgumentParser) -> None:
    """Flags of ``serve`` about peers (docs/peers.md)."""
    parser.add_argument(
        "--peers",
        help="auto (in a cluster: other agents, found through the API; default), off, or "
        "URL,URL,... of peer endpoints (env MODEL_LOCALITY_PEERS)",
    )
    parser.add_argument(
        "--peer-port", type=int, help="peer endpoint port (env MODEL_LOCALITY_PEER_PORT, default 8472)"
    )
    parser.add_argument(
        "--peer-url", help="this agent's peer URL as others reach it (env MODEL_LOCALITY_PEER_URL)"
    )
    parser.add_argument(
        "--peer-token-file",
        help="standalone: a token shared by the group's agents (env MODEL_LOCALITY_PEER_TOKEN_FILE)",
    )
    parser.add_argument(
        "--upload-rate", help="bytes/s this node uploads to peers, e.g. 500Mi; 0: unlimited (default 500Mi)"
    )
    parser.add_argument("--max-uploads", type=int, help="concurrent uploads to peers (default 8)")
    parser.add_argument("--peer-timeout", help="seconds without a byte from a peer (default 10)")


def peer_settings(args: argparse.Namespace, environ: Mapping[str, str]) -> PeerSettings:
    pick = flag_or_env(args, environ)
    d = PeerSettings()
    rate = pick("upload_rate", "MODEL_LOCALITY_UPLOAD_RATE")
    return PeerSettings(
        mode=(pick("peers", "MODEL_LOCALITY_PEERS") or d.mode).strip(),
        port=pick.as_int("peer_port", "MODEL_LOCALITY_PEER_PORT", default=d.port),
        url=pick("peer_url", "MODEL_LOCALITY_PEER_URL"),
        pod_name=environ.get("POD_NAME") or None,
        pod_namespace=environ.get("POD_NAMESPACE") or d.pod_namespace,
        pod_ip=environ.get("POD_IP") or None,
        token_file=pick("peer_token_file", "MODEL_LOCALITY_PEER_TOKEN_FILE"),
        sa_token_file=environ.get("MODEL_LOCALITY_PEER_SA_TOKEN_FILE") or d.sa_token_file,
        identity=environ.get("MODEL_LOCALITY_PEER_IDENTITY") or d.identity,
        upload_rate=parse_size(rate) if rate else d.upload_rate,
        max_uploads=pick.as_int("max_uploads", "MODEL_LOCALITY_MAX_UPLOADS", default=d.max_uploads),
        timeout=pick.as_float("peer_timeout", "MODEL_LOCALITY_PEER_TIMEOUT", default=d.timeout),
    ).validate()


def add_client_args(parser: argparse.ArgumentParser) -> None:
    """Flags of verbs that talk to a running agent (``wait``)."""
    parser.add_argument("--agent-url", help="agent REST base URL (env MODEL_LOCALITY_AGENT_URL)")
    parser.add_argument(
        "--token-file",
        help="bearer token file, read again for every request (the pod's projected ServiceAccount "
        "token; env MODEL_LOCALITY_AGENT_TOKEN_FILE; default /var/run/secrets/model-locality/token when it "
        "exists)",
    )


def settings_from_args(args: argparse.Namespace, environ: Mapping[str, str]) -> Settings:
    """Merge flags over environment over defaults; raise ``ConfigError`` on anything unusable."""
    pick = flag_or_env(args, environ)
    defaults = Settings()
    quota = pick("quota", "MODEL_LOCALITY_QUOTA")
    chunk = pick("chunk_size", "MODEL_LOCALITY_CHUNK_SIZE")
    token_file = pick("token_file", "MODEL_LOCALITY_AGENT_TOKEN_FILE", "MODEL_LOCALITY_TOKEN_FILE")
    token = load_token(token_file)
    try:
        settings = Settings(
            cache_dir=Path(pick("cache_dir", "MODEL_LOCALITY_CACHE_DIR") or DEFAULT_CACHE_DIR),
            host=pick("host", "MODEL_LOCALITY_AGENT_HOST", "MODEL_LOCALITY_HOST") or defaults.host,
            port=pick.as_int(
                "port", "MODEL_LOCALITY_AGENT_PORT", "MODEL_LOCALITY_PORT", default=defaults.port
            ),
            token=token,
            token_file=token_file,
            node_name=pick("node_name", "NODE_NAME"),
            kubeconfig=pick("kubeconfig", "KUBECONFIG"),
            quota_bytes=parse_size(quota) if quota else None,
            high_watermark=pick.as_float(
                "high_watermark", "MODEL_LOCALITY_HIGH_WATERMARK", default=defaults.high_watermark
            ),
            low_watermark=pick.as_float(
                "low_watermark", "MODEL_LOCALITY_LOW_WATERMARK", default=defaults.low_watermark
            ),
            concurrency=pick.as_int(
                "concurrency", "MODEL_LOCALITY_CONCURRENCY", default=defaults.concurrency
            ),
            chunk_bytes=parse_size(chunk) if chunk else defaults.chunk_bytes,
            connect_timeout=pick.as_float(
                "connect_timeout", "MODEL_LOCALITY_CONNECT_TIMEOUT", default=defaults.connect_timeout
            ),
            read_timeout=pick.as_float(
                "read_timeout", "MODEL_LOCALITY_READ_TIMEOUT", default=defaults.read_timeout
            ),
            attempts=1 + pick.as_int("retries", "MODEL_LOCALITY_RETRIES", default=defaults.attempts - 1),
            agent_url=(pick("agent_url", "MODEL_LOCALITY_AGENT_URL") or defaults.agent_url).rstrip("/"),
            grace_seconds=pick.as_float(
                "grace_seconds", "MODEL_LOCALITY_GRACE_SECONDS", default=defaults.grace_seconds
            ),
            refresh_seconds=pick.as_float(
                "refresh_interval", "MODEL_LOCALITY_REFRESH_SECONDS", default=defaults.refresh_seconds
            ),
            insecure_registries=registries(pick("insecure_registries", "MODEL_LOCALITY_INSECURE_REGISTRIES")),
            registry_auth_files=auth_files(
                pick("registry_auth_file", "MODEL_LOCALITY_REGISTRY_AUTH_FILE"), environ
            ),
            peers=peer_settings(args, environ),
        )
    except ValueError as exc:
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(str(exc)) from exc
    return settings.validate()


def registries(text: str | None) -> tuple[str, ...]:
    """``host[:port],...`` -> lower-cased registries; a URL or path is a ``ConfigError``."""
    out = tuple(r.strip().lower() for r in (text or "").split(",") if r.strip())
    bad = [r for r in out if "/" in r or "@" in r or " " in r]
    if bad:
        raise ConfigError(f"insecure registries are host[:port] names, not {bad[0]!r}")
    return out


def auth_files(explicit: str | None, environ: Mapping[str, str]) -> tuple[str, ...]:
    """Where registry logins are looked up, in order: the flag, then what podman and docker read."""
    files = [p for p in (explicit, environ.get("REGISTRY_AUTH_FILE")) if p]
    if environ.get("DOCKER_CONFIG"):
        files.append(str(Path(environ["DOCKER_CONFIG"]) / "config.json"))
    if environ.get("HOME"):
        files.append(str(Path(environ["HOME"]) / ".docker" / "config.json"))
    return tuple(files)
