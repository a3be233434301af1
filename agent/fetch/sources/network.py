"""Private endpoints on the data path: the CA bundle and the proxy a ranged GET uses, as in boto3.

boto3 honours ``AWS_CA_BUNDLE`` and ``HTTPS_PROXY``/``HTTP_PROXY``/``NO_PROXY`` for its own
calls; without the same here a private S3 endpoint lists fine and then fails every GET. A source
resolves these once (S3: through botocore's own resolution) and hands them over in its
``HttpTarget``; ``RangeReader`` opens CONNECT tunnels for https and absolute-form requests for
http through the proxy.
"""

from __future__ import annotations

import base64
import ssl
import urllib.request
from dataclasses import dataclass
from functools import lru_cache
from urllib.parse import unquote, urlsplit


@dataclass(frozen=True, slots=True)
class Proxy:
    """An HTTP proxy: ``host:port`` and the ``Proxy-Authorization`` header its URL's userinfo gives."""

    netloc: str
    authorization: str | None = None


def parse_proxy(url: str | None) -> Proxy | None:
    """``http://[user:pass@]host:port`` -> ``Proxy``; None for no proxy or an unusable URL."""
    if not url:
        return None
    parts = urlsplit(url if "://" in url else f"http://{url}")
    if parts.scheme not in ("http", "") or not parts.hostname:
        return None  # an https:// proxy (TLS to the proxy itself) is not supported on the data path
    netloc = f"{parts.hostname}:{parts.port or 8080}"
    auth = None
    if parts.username is not None:
        raw = f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode()
        auth = "Basic " + base64.b64encode(raw).decode()
    return Proxy(netloc, auth)


def environ_proxy(url: str) -> str | None:
    """The proxy URL the process environment names for ``url`` (``NO_PROXY`` honoured), like curl."""
    host = urlsplit(url).hostname or ""
    proxies = urllib.request.getproxies_environment()
    if not proxies or urllib.request.proxy_bypass_environment(host, proxies):  # type: ignore[attr-defined]
        return None
    return proxies.get(urlsplit(url).scheme)


@lru_cache(maxsize=16)
def tls_context(ca_file: str | None) -> ssl.SSLContext:
    """The TLS context for a CA bundle (None: the system's, which ``SSL_CERT_FILE`` overrides)."""
    return ssl.create_default_context(cafile=ca_file) if ca_file else ssl.create_default_context()
