"""Registry credentials, purely: the ``WWW-Authenticate`` challenge, and the Docker config files a
registry's login is looked up in (the first file that names the registry wins).

Files, in order: the agent's ``--registry-auth-file`` (a mounted ``kubernetes.io/dockerconfigjson``
Secret's ``.dockerconfigjson``), ``REGISTRY_AUTH_FILE`` (podman, skopeo), ``$DOCKER_CONFIG/config.json``,
``~/.docker/config.json``. An entry gives ``auth`` (base64 ``user:password``), or ``username`` and
``password``, or an ``identitytoken`` (an OAuth2 refresh token). Credential helpers (``credsStore``)
are not run. A secret never leaves this module in a message: errors name the file, not its content.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

_PARAM = re.compile(r'([A-Za-z][A-Za-z0-9_-]*)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]*))')
_HUB_KEYS = ("https://index.docker.io/v1/", "index.docker.io", "docker.io", "registry-1.docker.io")


class CredentialsError(ValueError):
    """A Docker config file that names the registry but cannot be used (the file is named)."""


@dataclass(frozen=True, slots=True)
class Challenge:
    """One ``WWW-Authenticate`` challenge: ``scheme`` lower-cased (``basic``, ``bearer``) and its params."""

    scheme: str
    params: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Login:
    """A registry login; ``repr`` hides the secrets (it may end up in a traceback)."""

    username: str = field(repr=False, default="")
    password: str = field(repr=False, default="")
    identity_token: str = field(repr=False, default="")
    source: str = ""  # the file it came from, for messages


def parse_challenges(header: str) -> list[Challenge]:
    """``Bearer realm="...",service="...",scope="a:b:pull,push", Basic realm="x"`` -> challenges."""
    out: list[Challenge] = []
    pos = 0
    text = header.strip()
    while pos < len(text):
        m = re.compile(r"\s*,?\s*([A-Za-z][A-Za-z0-9_-]*)\s*").match(text, pos)
        if m is None or not m.group(1):
            break
        scheme, pos = m.group(1).lower(), m.end()
        params: dict[str, str] = {}
        while (p := _PARAM.match(text, pos)) is not None:
            value = p.group(2) if p.group(2) is not None else p.group(3)
            params[p.group(1).lower()] = re.sub(r"\\(.)", r"\1", value)
            pos = p.end()
            sep = re.compile(r"\s*,\s*").match(text, pos)
            if sep is None:
                break
            nxt = _PARAM.match(text, sep.end())
            if nxt is None:  # the comma started the next challenge
                break
            pos = sep.end()
        out.append(Challenge(scheme, params))
    return out


def config_files(explicit: str | None, environ: Mapping[str, str], home: Path) -> list[Path]:
    """Where logins are looked up, first match wins (see the module docstring)."""
    files = [Path(p) for p in (explicit, environ.get("REGISTRY_AUTH_FILE")) if p]
    if environ.get("DOCKER_CONFIG"):
        files.append(Path(environ["DOCKER_CONFIG"]) / "config.json")
    files.append(home / ".docker" / "config.json")
    return files


def find_login(registry: str, files: Iterable[Path]) -> Login | None:
    """The login for ``registry`` (``host[:port]``) in the first of ``files`` that names it."""
    keys = _HUB_KEYS if registry == "docker.io" else (registry,)
    for path in files:
        auths = _auths(path)
        for key, entry in auths.items():
            if _host_of(key) in keys or key in keys:
                return _login(entry, path)
    return None


def _auths(path: Path) -> Mapping[str, object]:
    try:
        text = path.read_text()
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise CredentialsError(f"cannot read registry credentials {path}: {exc.strerror}") from None
    try:
        doc = json.loads(text)
    except ValueError:
        raise CredentialsError(f"registry credentials {path} are not valid JSON") from None
    auths = doc.get("auths") if isinstance(doc, dict) else None
    return auths if isinstance(auths, dict) else {}


def _host_of(key: str) -> str:
    """A config key as ``host[:port]``: keys may be URLs (``https://host/v1/``)."""
    host = key.split("://", 1)[-1].split("/", 1)[0]
    return host.lower()


def _login(entry: object, path: Path) -> Login:
    if not isinstance(entry, dict):
        raise CredentialsError(f"registry credentials {path}: an entry is not an object")
    source = str(path)
    if entry.get("identitytoken"):
        return Login(identity_token=str(entry["identitytoken"]), source=source)
    if entry.get("auth"):
        try:
            user, sep, password = base64.b64decode(str(entry["auth"]), validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            sep = ""
        if not sep:
            raise CredentialsError(f"registry credentials {path}: 'auth' is not base64 of user:password")
        return Login(user, password, source=source)
    if entry.get("username"):
        return Login(str(entry["username"]), str(entry.get("password", "")), source=source)
    raise CredentialsError(f"registry credentials {path}: the entry has no auth, username or identitytoken")


def basic_header(login: Login) -> str:
    return "Basic " + base64.b64encode(f"{login.username}:{login.password}".encode()).decode()
