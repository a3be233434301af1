"""Model identity: URI normalisation, model id, slug, label key and safe relative paths.

This is the single place that turns a user's model URI into the names every component agrees on
(a contract: agents, extender and serving must derive the same names). It is pure: no I/O, no
clock, no settings.
"""

from __future__ import annotations

import posixpath
import re
import unicodedata
from dataclasses import dataclass
from urllib.parse import SplitResult, urlsplit, urlunsplit

import xxhash

from locality.hfuri import normalize_hf
from locality.ociuri import normalize_oci, parse_oci

DOMAIN = "model-locality.io"
LABEL_PREFIX = f"{DOMAIN}/"

MAX_URI_LENGTH = 2048
MAX_PATH_LENGTH = 1024  # S3 keys are at most 1024 bytes
MAX_SEGMENT_BYTES = 255  # NAME_MAX on every Linux filesystem we care about
SLUG_MAX = 40

# The shape of every label key ``model_ref`` derives; the one definition of "a label of ours".
_MODEL_LABEL = re.compile(r"^model-locality\.io/[a-z0-9]([a-z0-9-]{0,38}[a-z0-9])?\.[0-9a-f]{8}$")
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]$")
_SLUG_DROP = re.compile(r"[^a-z0-9]+")
_SCHEMES = ("s3", "http", "https", "hf", "oci")
_DEFAULT_PORTS = {"http": 80, "https": 443}


class InvalidURI(ValueError):
    """A model URI that cannot be normalised; the message says why."""


class UnsafePath(ValueError):
    """An object key that would not stay inside its model directory."""


@dataclass(frozen=True, slots=True)
class ModelRef:
    """A normalised model URI and the names derived from it."""

    uri: str
    scheme: str
    authority: str  # S3 bucket, HTTP host[:port], the Hugging Face org, or the OCI registry
    path: str  # S3 prefix/key, the HTTP path with query, REPO[@REV][?globs], or REPO(:TAG|@DIGEST)[?path=]
    id: str
    slug: str
    label_key: str


def model_ref(uri: str) -> ModelRef:
    """Normalise ``uri`` and derive id, slug and label key; raise ``InvalidURI`` when it cannot be."""
    normalized, scheme, authority, path = normalize_uri(uri)
    model_id = model_id_of(normalized)
    last = path.split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1] or authority
    if scheme == "hf":
        last = path.split("?", 1)[0].split("@", 1)[0]
    if scheme == "oci":
        last = parse_oci(authority, path).repository.rsplit("/", 1)[-1]
    slug = slugify(last)
    return ModelRef(
        uri=normalized,
        scheme=scheme,
        authority=authority,
        path=path,
        id=model_id,
        slug=slug,
        label_key=f"{LABEL_PREFIX}{slug}.{model_id[:8]}",
    )


def model_id_of(normalized_uri: str) -> str:
    """The model id: 16 lower-case hex digits of xxh3_64 over the normalised URI."""
    return xxhash.xxh3_64(normalized_uri.encode("utf-8")).hexdigest()


def slugify(segment: str) -> str:
    """Reduce a path segment to ``[a-z0-9-]``, at most 40 chars, no edge ``-``; ``model`` if empty."""
    folded = unicodedata.normalize("NFKD", segment).encode("ascii", "ignore").decode("ascii")
    slug = _SLUG_DROP.sub("-", folded.lower())[:SLUG_MAX].strip("-")
    return slug or "model"


def is_model_label(key: str) -> bool:
    """True for a label key shaped like our model labels (``model-locality.io/<slug>.<8 hex>``).

    Only such keys are ever removed from a Node, so an operator's own ``model-locality.io/...``
    label (e.g. a DaemonSet nodeSelector) survives.
    """
    return bool(_MODEL_LABEL.match(key))


def normalize_uri(uri: str) -> tuple[str, str, str, str]:
    """Return ``(normalized, scheme, authority, path)`` or raise ``InvalidURI``."""
    if not isinstance(uri, str) or not uri.strip():
        raise InvalidURI("model URI must be a non-empty string")
    if len(uri) > MAX_URI_LENGTH:
        raise InvalidURI(f"model URI is longer than {MAX_URI_LENGTH} characters")
    _reject_control(uri, "model URI")
    if "\\" in uri:
        raise InvalidURI("model URI must not contain a backslash")
    try:
        parts = urlsplit(uri.strip())
    except ValueError as exc:
        raise InvalidURI(f"model URI cannot be parsed: {exc}") from exc
    scheme = parts.scheme.lower()
    if scheme not in _SCHEMES:
        raise InvalidURI(f"unsupported scheme {parts.scheme!r}: use s3://, http://, https://, hf:// or oci://")
    if parts.fragment:
        raise InvalidURI("model URI must not carry a #fragment")
    if scheme == "s3":
        return _normalize_s3(parts.netloc, parts.path, parts.query)
    if scheme in ("hf", "oci"):
        normalize = normalize_hf if scheme == "hf" else normalize_oci
        try:
            return normalize(parts.netloc, parts.path, parts.query)
        except ValueError as exc:
            raise InvalidURI(str(exc)) from exc
    return _normalize_http(scheme, parts)


def _normalize_s3(netloc: str, path: str, query: str) -> tuple[str, str, str, str]:
    bucket = netloc.lower()
    if not _BUCKET.match(bucket) or ".." in bucket:
        raise InvalidURI(f"invalid S3 bucket name {netloc!r}")
    if query:
        raise InvalidURI("s3:// URIs take no query string")
    key = _normalize_path(path)
    normalized = f"s3://{bucket}/{key}" if key else f"s3://{bucket}"
    return normalized, "s3", bucket, key


def _normalize_http(scheme: str, parts: SplitResult) -> tuple[str, str, str, str]:
    if parts.username is not None or parts.password is not None:
        raise InvalidURI("credentials in the URI are not allowed; use a bearer token or presigned URL")
    host = (parts.hostname or "").lower()
    if not host:
        raise InvalidURI("http(s) URI needs a host")
    try:
        port = parts.port
    except ValueError as exc:
        raise InvalidURI(f"invalid port in URI: {exc}") from exc
    netloc = f"[{host}]" if ":" in host else host
    if port is not None and port != _DEFAULT_PORTS[scheme]:
        netloc = f"{netloc}:{port}"
    key = _normalize_path(parts.path)
    if not key:
        raise InvalidURI("http(s) URI must name a file, not the server root")
    normalized = urlunsplit((scheme, netloc, "/" + key, parts.query, ""))
    path = f"{key}?{parts.query}" if parts.query else key
    return normalized, scheme, netloc, path


def _normalize_path(path: str) -> str:
    """Collapse ``//``, drop the leading and trailing ``/``, refuse ``.`` and ``..`` segments."""
    segments = [s for s in path.split("/") if s]
    for segment in segments:
        if segment in (".", ".."):
            raise InvalidURI("model URI must not contain '.' or '..' path segments")
    key = "/".join(segments)
    if len(key.encode("utf-8")) > MAX_PATH_LENGTH:
        raise InvalidURI(f"model URI path is longer than {MAX_PATH_LENGTH} bytes")
    return key


def _reject_control(text: str, what: str) -> None:
    for char in text:
        if ord(char) < 0x20 or ord(char) == 0x7F:
            raise InvalidURI(f"{what} contains a control character (code {ord(char)})")


def safe_relpath(key: str) -> str:
    """Check a relative path inside a model (an object key below the prefix) and return it.

    Refused: empty, absolute, ``.``/``..`` or empty segments, NUL or other control characters,
    backslashes, segments over 255 bytes, and paths over 1024 bytes. A path that passes can be
    joined to the model directory and stays inside it (no segment can climb out).
    """
    if not key:
        raise UnsafePath("empty object path")
    if "\x00" in key:
        raise UnsafePath(f"object path {key!r} contains a NUL byte")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in key):
        raise UnsafePath(f"object path {key!r} contains a control character")
    if "\\" in key:
        raise UnsafePath(f"object path {key!r} contains a backslash")
    if key.startswith("/"):
        raise UnsafePath(f"object path {key!r} is absolute")
    segments = key.split("/")
    for segment in segments:
        if segment in ("", ".", ".."):
            raise UnsafePath(f"object path {key!r} has an empty, '.' or '..' segment")
        if len(segment.encode("utf-8")) > MAX_SEGMENT_BYTES:
            raise UnsafePath(f"object path {key!r} has a segment over {MAX_SEGMENT_BYTES} bytes")
    if len(key.encode("utf-8")) > MAX_PATH_LENGTH:
        raise UnsafePath(f"object path {key!r} is longer than {MAX_PATH_LENGTH} bytes")
    if posixpath.normpath(key) != key:
        raise UnsafePath(f"object path {key!r} is not in normal form")
    return key


# Query parameters whose values are secrets: AWS/GCS/Azure signatures and credentials, tokens, keys.
_SECRET_PARAM = re.compile(r"sig|token|secret|passw|credential|auth|key", re.IGNORECASE)
REDACTED = "REDACTED"


def redact_uri(uri: object) -> str:
    """``uri`` with what could be a secret replaced by ``REDACTED``: user:password in the
    authority, the values of signed query parameters (``X-Amz-Signature``, ``X-Amz-Credential``,
    ``X-Amz-Security-Token``, ``Signature``, ``sig``, ``token``, ``*key*``, ...) and a fragment.
    Total: never raises, whatever the input (it is used on URIs that failed to parse)."""
    text = str(uri)
    text, hashmark, fragment = text.partition("#")
    head, question, query = text.partition("?")
    scheme, sep, rest = head.partition("://")
    if sep:
        authority, slash, path = rest.partition("/")
        if "@" in authority:
            authority = f"{REDACTED}@{authority.rsplit('@', 1)[1]}"
        head = f"{scheme}{sep}{authority}{slash}{path}"
    if question:
        query = "&".join(_redact_param(part) for part in query.split("&"))
    return head + question + query + (f"#{REDACTED}" if hashmark and fragment else hashmark)


# A URI in free text ends before spaces and quotes, and never on the punctuation after it.
_URI_IN_TEXT = re.compile(r"\b[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>]*[^\s'\"<>.,;:)\]]")


def redact_text(text: object) -> str:
    """``text`` with every URI in it passed through ``redact_uri`` (log lines, error messages)."""
    return _URI_IN_TEXT.sub(lambda m: redact_uri(m.group(0)), str(text))


def _redact_param(part: str) -> str:
    name, eq, _value = part.partition("=")
    return f"{name}={REDACTED}" if eq and _SECRET_PARAM.search(name) else part
