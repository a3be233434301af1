"""Agent settings: built once from flags with environment fallbacks, validated, then frozen.

Nothing else in the agent reads ``os.environ``; the CLI passes ``os.environ`` in here.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from locality.settings import ConfigError, Setting, Values, add_settings, flag_or_env, load_token, parse_size

DEFAULT_CACHE_DIR = "/var/lib/model-locality"
DEFAULT_PORT = 8470


def registries(text: str | None) -> tuple[str, ...]:
    """``host[:port],...`` -> lower-cased registries; a URL or path is a ``ConfigError``."""
    out = tuple(r.strip().lower() for r in (text or "").split(",") if r.strip())
    bad = [r for r in out if "/" in r or "@" in r or " " in r]
    if bad:
        raise ConfigError(f"insecure registries are host[:port] names, not {bad[0]!r}")
    return out


def _opt_size(text: str) -> int | None:
    return parse_size(text)


# Each setting once: flag, variable (old names still work, with a warning), default, help.
# Flags every verb takes:
CACHE_DIR = Setting("--cache-dir", "cache root", "MODEL_LOCALITY_CACHE_DIR", Path(DEFAULT_CACHE_DIR), Path)
QUOTA: Setting[int | None] = Setting(
    "--quota", "byte quota, e.g. 500Gi", "MODEL_LOCALITY_QUOTA", None, _opt_size, shown="the disk size"
)
HIGH_WATERMARK = Setting(
    "--high-watermark", "evict above this share of the quota", "MODEL_LOCALITY_HIGH_WATERMARK", 0.90, float
)
LOW_WATERMARK = Setting(
    "--low-watermark", "evict down to this share", "MODEL_LOCALITY_LOW_WATERMARK", 0.80, float
)
CONCURRENCY = Setting("--concurrency", "parallel ranged GETs per model", "MODEL_LOCALITY_CONCURRENCY", 8, int)
CHUNK_SIZE = Setting(
    "--chunk-size",
    "bytes per ranged GET, e.g. 32Mi",
    "MODEL_LOCALITY_CHUNK_SIZE",
    32 * 2**20,
    parse_size,
    shown="32Mi",
)
CONNECT_TIMEOUT = Setting(
    "--connect-timeout", "seconds to connect to the origin", "MODEL_LOCALITY_CONNECT_TIMEOUT", 10.0, float
)
READ_TIMEOUT = Setting(
    "--read-timeout",
    "seconds without a byte from the origin before a try fails",
    "MODEL_LOCALITY_READ_TIMEOUT",
    30.0,
    float,
)
INSECURE_REGISTRIES: Setting[tuple[str, ...]] = Setting(
    "--insecure-registries",
    "comma-separated oci:// registries (host[:port]) spoken to over plain HTTP",
    "MODEL_LOCALITY_INSECURE_REGISTRIES",
    (),
    registries,
    shown="none: HTTPS only",
)
REGISTRY_AUTH_FILE: Setting[str | None] = Setting(
    "--registry-auth-file",
    "Docker config JSON with registry logins, read before REGISTRY_AUTH_FILE, "
    "$DOCKER_CONFIG/config.json and ~/.docker/config.json "
    "(a mounted kubernetes.io/dockerconfigjson Secret's .dockerconfigjson)",
    "MODEL_LOCALITY_REGISTRY_AUTH_FILE",
)
RETRIES = Setting(
    "--retries", "retries of a listing or chunk after transient errors", "MODEL_LOCALITY_RETRIES", 5, int
)
HF_ENDPOINT = Setting(
    "--hf-endpoint",
    "Hugging Face Hub (or mirror) base URL for hf:// models",
    "HF_ENDPOINT",
    "https://huggingface.co",
    lambda url: url.rstrip("/"),
)
CACHE_SETTINGS = (
    CACHE_DIR,
    QUOTA,
    HIGH_WATERMARK,
    LOW_WATERMARK,
    CONCURRENCY,
    CHUNK_SIZE,
    CONNECT_TIMEOUT,
    READ_TIMEOUT,
    INSECURE_REGISTRIES,
    REGISTRY_AUTH_FILE,
    RETRIES,
    HF_ENDPOINT,
)
# What podman and docker read for registry logins, after --registry-auth-file (no flags: theirs).
PODMAN_AUTH_FILE: Setting[str | None] = Setting(None, "podman's login file", "REGISTRY_AUTH_FILE")
DOCKER_CONFIG: Setting[str | None] = Setting(None, "docker's config directory", "DOCKER_CONFIG")
HOME: Setting[str | None] = Setting(None, "home directory (~/.docker/config.json)", "HOME")

# Flags of ``serve``:
HOST = Setting(
    "--host", "listen address", "MODEL_LOCALITY_AGENT_HOST", "0.0.0.0", deprecated=("MODEL_LOCALITY_HOST",)
)
PORT = Setting(
    "--port", "listen port", "MODEL_LOCALITY_AGENT_PORT", DEFAULT_PORT, int, ("MODEL_LOCALITY_PORT",)
)
TOKEN_FILE: Setting[str | None] = Setting(
    "--token-file",
    "bearer token file",
    "MODEL_LOCALITY_AGENT_TOKEN_FILE",
    deprecated=("MODEL_LOCALITY_TOKEN_FILE",),
)
NODE_NAME: Setting[str | None] = Setting(
    "--node-name", "this node's name, from the downward API", "NODE_NAME"
)
KUBECONFIG: Setting[str | None] = Setting("--kubeconfig", "kubeconfig path", "KUBECONFIG", shown="in-cluster")
GRACE_SECONDS = Setting(
    "--grace-seconds", "SIGTERM grace period", "MODEL_LOCALITY_GRACE_SECONDS", 25.0, float
)
REFRESH_INTERVAL = Setting(
    "--refresh-interval",
    "seconds between re-checks of each model's origin for a new revision; 0: never",
    "MODEL_LOCALITY_REFRESH_SECONDS",
    600.0,
    float,
)
SERVER_SETTINGS = (HOST, PORT, TOKEN_FILE, NODE_NAME, KUBECONFIG, GRACE_SECONDS, REFRESH_INTERVAL)

# Flags of ``serve`` about peers (docs/peers.md), and what the downward API sets:
PEERS = Setting(
    "--peers",
    "auto (in a cluster: other agents, found through the API), off, or URL,URL,... of peer endpoints",
    "MODEL_LOCALITY_PEERS",
    "auto",
    str.strip,
)
PEER_PORT = Setting("--peer-port", "peer endpoint port", "MODEL_LOCALITY_PEER_PORT", 8472, int)
PEER_URL: Setting[str | None] = Setting(
    "--peer-url",
    "this agent's peer URL as others reach it",
    "MODEL_LOCALITY_PEER_URL",
    shown="http://$POD_IP:<port>",
)
PEER_TOKEN_FILE: Setting[str | None] = Setting(
    "--peer-token-file", "standalone: a token shared by the group's agents", "MODEL_LOCALITY_PEER_TOKEN_FILE"
)
UPLOAD_RATE = Setting(
    "--upload-rate",
    "bytes/s this node uploads to peers, e.g. 500Mi; 0: unlimited",
    "MODEL_LOCALITY_UPLOAD_RATE",
    500 * 2**20,
    parse_size,
    shown="500Mi",
)
MAX_UPLOADS = Setting("--max-uploads", "concurrent uploads to peers", "MODEL_LOCALITY_MAX_UPLOADS", 8, int)
PEER_TIMEOUT = Setting(
    "--peer-timeout", "seconds without a byte from a peer", "MODEL_LOCALITY_PEER_TIMEOUT", 10.0, float
)
PEER_SETTINGS = (PEERS, PEER_PORT, PEER_URL, PEER_TOKEN_FILE, UPLOAD_RATE, MAX_UPLOADS, PEER_TIMEOUT)
POD_NAME: Setting[str | None] = Setting(None, "this pod's name (downward API)", "POD_NAME")
POD_NAMESPACE = Setting(None, "this pod's namespace (downward API)", "POD_NAMESPACE", "model-locality")
POD_IP: Setting[str | None] = Setting(None, "this pod's IP (downward API)", "POD_IP")
PEER_SA_TOKEN_FILE = Setting(
    None,
    "the projected ServiceAccount token agents show each other",
    "MODEL_LOCALITY_PEER_SA_TOKEN_FILE",
    "/var/run/secrets/model-locality-peer/token",
)
PEER_IDENTITY = Setting(
    None,
    "the ServiceAccount peers must be",
    "MODEL_LOCALITY_PEER_IDENTITY",
    "system:serviceaccount:model-locality:model-locality-agent",
)

# Flags of verbs that talk to a running agent (``wait``):
AGENT_URL = Setting(
    "--agent-url",
    "agent REST base URL",
    "MODEL_LOCALITY_AGENT_URL",
    f"http://127.0.0.1:{DEFAULT_PORT}",
    lambda url: url.rstrip("/"),
)
CLIENT_TOKEN_FILE: Setting[str | None] = Setting(
    "--token-file",
    "bearer token file, read again for every request (the pod's projected ServiceAccount token)",
    "MODEL_LOCALITY_AGENT_TOKEN_FILE",
    deprecated=("MODEL_LOCALITY_TOKEN_FILE",),
    shown="/var/run/secrets/model-locality/token when it exists",
)


@dataclass(frozen=True, slots=True)
class PeerSettings:
    """Fetching chunks from other agents (docs/peers.md)."""

    mode: str = PEERS.default  # auto: in a cluster, find agents through the API; off; or a URL list
    port: int = PEER_PORT.default  # the peer endpoint's listener (its own, apart from the REST API)
    url: str | None = None  # how other agents reach ours (default http://$POD_IP:<port>)
    pod_name: str | None = None  # POD_NAME / POD_NAMESPACE / POD_IP from the downward API
    pod_namespace: str = POD_NAMESPACE.default
    pod_ip: str | None = None
    token_file: str | None = None  # standalone: a token file every agent of the group shares
    sa_token_file: str = PEER_SA_TOKEN_FILE.default  # in a cluster: projected
    identity: str = PEER_IDENTITY.default
    upload_rate: int = UPLOAD_RATE.default  # bytes/s this node uploads to peers, all uploads together
    max_uploads: int = MAX_UPLOADS.default
    timeout: float = PEER_TIMEOUT.default  # seconds without a byte from a peer before its transfer fails

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

    cache_dir: Path = CACHE_DIR.default
    host: str = HOST.default
    port: int = PORT.default
    token: str | None = None
    token_file: str | None = None  # where ``token`` came from (clients re-read it per request)
    node_name: str | None = None
    kubeconfig: str | None = None
    quota_bytes: int | None = None  # None: the filesystem size of cache_dir
    high_watermark: float = HIGH_WATERMARK.default
    low_watermark: float = LOW_WATERMARK.default
    concurrency: int = CONCURRENCY.default
    chunk_bytes: int = CHUNK_SIZE.default
    max_parallel_models: int = 2
    agent_url: str = AGENT_URL.default
    grace_seconds: float = GRACE_SECONDS.default
    connect_timeout: float = CONNECT_TIMEOUT.default  # seconds to open a connection to a model's origin
    read_timeout: float = READ_TIMEOUT.default  # seconds without a byte before a request fails
    attempts: int = RETRIES.default + 1  # tries of a listing or chunk (first try included)
    refresh_seconds: float = REFRESH_INTERVAL.default  # re-check every model's origin this often (0: never)
    insecure_registries: tuple[str, ...] = ()  # oci:// registries reached over plain HTTP
    registry_auth_files: tuple[str, ...] = ()  # Docker config files with registry logins, first match wins
    hf_endpoint: str = HF_ENDPOINT.default  # the Hugging Face Hub, or a mirror of it
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
    add_settings(parser, CACHE_SETTINGS)


def add_server_args(parser: argparse.ArgumentParser) -> None:
    """Flags of ``serve``."""
    add_settings(parser, SERVER_SETTINGS)


def add_peer_args(parser: argparse.ArgumentParser) -> None:
    """Flags of ``serve`` about peers (docs/peers.md)."""
    add_settings(parser, PEER_SETTINGS)


def peer_settings(values: Values) -> PeerSettings:
    return PeerSettings(
        mode=values.get(PEERS),
        port=values.get(PEER_PORT),
        url=values.get(PEER_URL),
        pod_name=values.get(POD_NAME),
        pod_namespace=values.get(POD_NAMESPACE),
        pod_ip=values.get(POD_IP),
        token_file=values.get(PEER_TOKEN_FILE),
        sa_token_file=values.get(PEER_SA_TOKEN_FILE),
        identity=values.get(PEER_IDENTITY),
        upload_rate=values.get(UPLOAD_RATE),
        max_uploads=values.get(MAX_UPLOADS),
        timeout=values.get(PEER_TIMEOUT),
    ).validate()


def add_client_args(parser: argparse.ArgumentParser) -> None:
    """Flags of verbs that talk to a running agent (``wait``)."""
    add_settings(parser, (AGENT_URL, CLIENT_TOKEN_FILE))


def settings_from_args(args: argparse.Namespace, environ: Mapping[str, str]) -> Settings:
    """Merge flags over environment over defaults; raise ``ConfigError`` on anything unusable."""
    values = flag_or_env(args, environ)
    token_file = values.get(TOKEN_FILE)
    return Settings(
        cache_dir=values.get(CACHE_DIR),
        host=values.get(HOST),
        port=values.get(PORT),
        token=load_token(token_file),
        token_file=token_file,
        node_name=values.get(NODE_NAME),
        kubeconfig=values.get(KUBECONFIG),
        quota_bytes=values.get(QUOTA),
        high_watermark=values.get(HIGH_WATERMARK),
        low_watermark=values.get(LOW_WATERMARK),
        concurrency=values.get(CONCURRENCY),
        chunk_bytes=values.get(CHUNK_SIZE),
        connect_timeout=values.get(CONNECT_TIMEOUT),
        read_timeout=values.get(READ_TIMEOUT),
        attempts=1 + values.get(RETRIES),
        agent_url=values.get(AGENT_URL),
        grace_seconds=values.get(GRACE_SECONDS),
        refresh_seconds=values.get(REFRESH_INTERVAL),
        insecure_registries=values.get(INSECURE_REGISTRIES),
        registry_auth_files=auth_files(values),
        hf_endpoint=values.get(HF_ENDPOINT),
        peers=peer_settings(values),
    ).validate()


def auth_files(values: Values) -> tuple[str, ...]:
    """Where registry logins are looked up, in order: the flag, then what podman and docker read."""
    files = [p for p in (values.get(REGISTRY_AUTH_FILE), values.get(PODMAN_AUTH_FILE)) if p]
    if docker := values.get(DOCKER_CONFIG):
        files.append(str(Path(docker) / "config.json"))
    if home := values.get(HOME):
        files.append(str(Path(home) / ".docker" / "config.json"))
    return tuple(files)
