"""The registry's HTTP protocol (distribution spec v2): GETs with the auth a client is expected to
do (anonymous first; then Basic or a bearer token from the ``WWW-Authenticate`` challenge), redirects
to another host followed without the registry's credentials, one-line errors naming the reference.

Blocking (``http.client``): the source runs it in threads. TLS verifies against the system store,
which ``SSL_CERT_FILE`` overrides; plain HTTP only for registries listed as insecure.
"""

from __future__ import annotations

import http.client
import json
import ssl
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlencode, urljoin, urlsplit

from agent.fetch.sources.base import PERMANENT_STATUSES, SourceError
from agent.fetch.sources.oci_auth import Challenge, CredentialsError, Login, basic_header, find_login
from agent.fetch.sources.oci_auth import parse_challenges as challenges
from agent.fetch.sources.timeouts import Timeouts
from locality.ociuri import OciModel

INSECURE_SETTING = "MODEL_LOCALITY_INSECURE_REGISTRIES"
_REDIRECTS = {301, 302, 303, 307, 308}
_ENDPOINTS = {"docker.io": "registry-1.docker.io"}
_EARLY = 30.0  # seconds before its expiry a bearer token is replaced


@dataclass(frozen=True, slots=True)
class RegistryOptions:
    """Operator settings: registries reached over plain HTTP, and the Docker config files to read."""

    insecure: frozenset[str] = frozenset()
    auth_files: tuple[Path, ...] = ()


class RegistryClient:
    """One repository on one registry; thread-safe (the fetch threads ask ``authorization``)."""

    def __init__(self, model: OciModel, options: RegistryOptions, timeouts: Timeouts) -> None:
        self.model = model
        host = _ENDPOINTS.get(model.registry, model.registry)
        self.plain = model.registry in options.insecure
        self.base = f"{'http' if self.plain else 'https'}://{host}"
        self._files = options.auth_files
        self._timeouts = timeouts
        self._lock = threading.Lock()
        self._header: str | None = None  # the Authorization that works, once known
        self._expires = float("inf")
        self._challenge: Challenge | None = None
        self._login: Login | None = None
        self._looked_up = False

    def blob_url(self, digest: str) -> str:
        return f"{self.base}/v2/{self.model.repository}/blobs/{digest}"

    def get(self, url: str, accept: str | None = None) -> http.client.HTTPResponse:
        """GET ``url`` (auth as needed, redirects followed); a 2xx response, else ``SourceError``."""
        resp = self._get(url, accept, self.authorization())
        if resp.status == 401:
            header = resp.getheader("WWW-Authenticate") or ""
            resp.close()
            self._authenticate(challenges(header))
            resp = self._get(url, accept, self.authorization())
        if resp.status >= 300:
            raise self._error(resp, url)
        return resp

    def authorization(self) -> str | None:
        """The current ``Authorization`` value (a bearer token is renewed shortly before it expires)."""
        with self._lock:
            if self._header and time.time() > self._expires - _EARLY and self._challenge is not None:
                self._header, self._expires = self._bearer(self._challenge)
            return self._header

    def _authenticate(self, parsed: list[Challenge]) -> None:
        with self._lock:
            bearer = next((c for c in parsed if c.scheme == "bearer"), None)
            if bearer is not None:
                self._challenge = bearer
                self._header, self._expires = self._bearer(bearer)
                return
            if any(c.scheme == "basic" for c in parsed):
                login = self._find_login()
                if login is None or login.identity_token:
                    raise self._refused(401, "needs credentials")
                self._header = basic_header(login)
                return
            raise SourceError(
                f"{self.model.display}: the registry asks for an unsupported auth scheme", permanent=True
            )

    def _bearer(self, challenge: Challenge) -> tuple[str, float]:
        """A token for ``repository:REPO:pull`` from the challenge's realm (with the login, if any)."""
        realm = challenge.params.get("realm", "")
        if urlsplit(realm).scheme not in ("https", "http") or (
            urlsplit(realm).scheme == "http" and not self.plain
        ):
            raise SourceError(
                f"{self.model.display}: the registry's token realm is not https", permanent=True
            )
        query = {"scope": f"repository:{self.model.repository}:pull"}
        if "service" in challenge.params:
            query["service"] = challenge.params["service"]
        login = self._find_login()
        if login is not None and login.identity_token:  # an OAuth2 refresh token: POST the form
            grant = {"grant_type": "refresh_token", "refresh_token": login.identity_token}
            form = urlencode({**query, **grant, "client_id": "model-locality"})
            resp = self._raw("POST", realm, {"Content-Type": "application/x-www-form-urlencoded"}, form)
        else:
            auth = {"Authorization": basic_header(login)} if login is not None else {}
            resp = self._raw("GET", f"{realm}?{urlencode(query)}", auth)
        if resp.status in (401, 403):
            resp.close()
            raise self._refused(resp.status, "the token service refused")
        if resp.status >= 300:
            resp.close()
            raise SourceError(
                f"{self.model.display}: the token service answered HTTP {resp.status}",
                permanent=resp.status in PERMANENT_STATUSES,
            )
        try:
            doc = json.loads(resp.read(1 << 20))
            token = str(doc.get("token") or doc.get("access_token") or "")
            expires = float(doc.get("expires_in") or 60)
        except (ValueError, AttributeError, OSError, http.client.HTTPException):
            token, expires = "", 0.0
        finally:
            resp.close()
        if not token:
            raise SourceError(f"{self.model.display}: the token service gave no token", permanent=False)
        return f"Bearer {token}", time.time() + expires

    def _find_login(self) -> Login | None:
        if not self._looked_up:
            try:
                self._login = find_login(self.model.registry, self._files)
            except CredentialsError as exc:
                raise SourceError(f"{self.model.display}: {exc}", permanent=True) from None
            self._looked_up = True
        return self._login

    def _refused(self, status: int, what: str) -> SourceError:
        login = self._find_login() if status in (401, 403) else None
        if login is None:
            where = ", ".join(str(p) for p in self._files) or "no Docker config file"
            why = f"{what}: no login for {self.model.registry} in {where}"
        elif status == 401:
            why = f"{what}: the login for {self.model.registry} from {login.source} was refused"
        else:
            why = f"the login from {login.source} has no pull access"
        return SourceError(f"{self.model.display}: registry answered {status}: {why}", permanent=True)

    def _error(self, resp: http.client.HTTPResponse, url: str) -> SourceError:
        status = resp.status
        try:
            body = json.loads(resp.read(8192) or b"{}")
            codes = ", ".join(str(e.get("code")) for e in body.get("errors") or [] if isinstance(e, dict))
        except (ValueError, AttributeError, OSError, http.client.HTTPException):
            codes = ""
        resp.close()
        if status in (401, 403):
            return self._refused(status, "access denied")
        what = "blob " + url.rsplit("/", 1)[-1] if "/blobs/" in url else "manifest"
        if status == 404:
            return SourceError(
                f"{self.model.display}: {what} not found on {self.model.registry}"
                + (f" ({codes})" if codes else ""),
                permanent=True,
            )
        return SourceError(
            f"{self.model.display}: registry answered HTTP {status} for the {what}"
            + (f" ({codes})" if codes else ""),
            permanent=status in PERMANENT_STATUSES,
        )

    def _get(self, url: str, accept: str | None, auth: str | None) -> http.client.HTTPResponse:
        headers = {"Accept": accept} if accept else {}
        first = urlsplit(url).netloc
        for _ in range(6):
            same = urlsplit(url).netloc == first
            resp = self._raw("GET", url, {**headers, **({"Authorization": auth} if auth and same else {})})
            if resp.status not in _REDIRECTS:
                return resp
            resp.close()
            url = urljoin(url, resp.getheader("Location") or "")
        raise SourceError(f"{self.model.display}: too many redirects", permanent=True)

    def _raw(
        self, method: str, url: str, headers: dict[str, str], body: str | None = None
    ) -> http.client.HTTPResponse:
        parts = urlsplit(url)
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        conn: http.client.HTTPConnection
        if parts.scheme == "https":
            conn = http.client.HTTPSConnection(parts.netloc, timeout=self._timeouts.connect, context=_tls())
        elif parts.scheme == "http" and (self.plain or parts.netloc != urlsplit(self.base).netloc):
            conn = http.client.HTTPConnection(parts.netloc, timeout=self._timeouts.connect)
        else:
            raise SourceError(f"{self.model.display}: refusing plain http to {parts.netloc}", permanent=True)
        try:
            conn.connect()
            if conn.sock is not None:
                conn.sock.settimeout(self._timeouts.read)
            sent = {"User-Agent": "model-locality", "Connection": "close", **headers}
            conn.request(method, path, body=body, headers=sent)
            return conn.getresponse()
        except ssl.SSLCertVerificationError as exc:
            conn.close()
            raise SourceError(
                f"{self.model.display}: TLS certificate of {parts.netloc} not trusted ({exc.verify_message}; "
                "trust its CA in the system store or SSL_CERT_FILE)",
                permanent=True,
            ) from None
        except ssl.SSLError as exc:
            conn.close()
            raise SourceError(
                f"{self.model.display}: TLS to {parts.netloc} failed ({exc.reason}); a registry that speaks "
                f"plain HTTP must be listed in {INSECURE_SETTING}",
                permanent=True,
            ) from None
        except (OSError, http.client.HTTPException) as exc:
            conn.close()
            raise SourceError(
                f"{self.model.display}: registry {parts.netloc} not reachable: {type(exc).__name__}: {exc}",
                permanent=False,
            ) from None


def _tls() -> ssl.SSLContext:
    return ssl.create_default_context()  # the system store; OpenSSL reads SSL_CERT_FILE / SSL_CERT_DIR
