"""Which namespaces may ask for which models: ModelAccessPolicy objects, matched purely.

A ``ModelAccessPolicy`` (cluster-scoped, ``model-locality.io/v1alpha1``) selects namespaces by
labels (``spec.namespaceSelector``, a Kubernetes label selector; ``{}`` selects all) and lists
the URI prefixes they may fetch (``spec.allowedURIPrefixes``); ``spec.credentialsSecretRef.name``
optionally names a Secret in the agent's namespace to fetch those URIs with. Policies add up,
like RBAC: a request is allowed when any policy selecting its namespace has a matching prefix
(the longest matching prefix names the credentials). No policy at all allows nothing.
A prefix matches at a path boundary: ``s3://models/team-a`` covers ``s3://models/team-a/x``,
not ``s3://models/team-ab``; ``s3://`` covers every S3 URI; ``oci://reg/models/llama`` covers
its tags and digests (``oci://reg/models/llama:v1``), ``oci://reg/models/`` every repository below.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from locality.identity import redact_uri

_OPERATORS = frozenset({"In", "NotIn", "Exists", "DoesNotExist"})


class InvalidPolicy(ValueError):
    """A ModelAccessPolicy that cannot be used (it then allows nothing)."""


@dataclass(frozen=True, slots=True)
class Requirement:
    key: str
    operator: str
    values: frozenset[str] = frozenset()

    def matches(self, labels: Mapping[str, str]) -> bool:
        if self.operator == "Exists":
            return self.key in labels
        if self.operator == "DoesNotExist":
            return self.key not in labels
        inside = self.key in labels and labels[self.key] in self.values
        return inside if self.operator == "In" else not inside


@dataclass(frozen=True, slots=True)
class AccessPolicy:
    name: str
    requirements: tuple[Requirement, ...]
    prefixes: tuple[str, ...]
    credentials_secret: str | None = None

    def selects(self, labels: Mapping[str, str]) -> bool:
        return all(r.matches(labels) for r in self.requirements)


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    reason: str  # one line, safe to show (the URI is redacted)
    policy: str | None = None
    credentials_secret: str | None = None


def normalize_prefix(prefix: str) -> str:
    """Lower-case scheme and authority (as ``identity.normalize_uri`` does for URIs)."""
    scheme, sep, rest = prefix.strip().partition("://")
    if not sep:
        raise InvalidPolicy(f"URI prefix {prefix[:100]!r} has no scheme (e.g. s3://bucket/path)")
    authority, slash, path = rest.partition("/")
    return f"{scheme.lower()}://{authority.lower()}{slash}{path}"


def prefix_matches(prefix: str, uri: str) -> bool:
    """True when normalised ``uri`` lies under ``prefix`` (at a ``/`` or ``?`` boundary)."""
    if prefix.endswith("://"):
        return uri.startswith(prefix)
    base = prefix.rstrip("/")
    if not uri.startswith(base):
        return False
    rest = uri[len(base) :]
    return rest == "" or rest[0] in _boundaries(base)


def _boundaries(base: str) -> str:
    """Where a prefix may end: at ``/`` and ``?``; for ``oci://`` naming a repository also before its
    ``:TAG`` or ``@DIGEST`` (``oci://reg/models/llama`` covers ``oci://reg/models/llama:v1``)."""
    scheme, _, rest = base.partition("://")
    return "/?:@" if scheme == "oci" and "/" in rest else "/?"


def _requirements(selector: Any) -> tuple[Requirement, ...]:
    if not isinstance(selector, Mapping):
        raise InvalidPolicy("spec.namespaceSelector must be a label selector ({} selects every namespace)")
    labels, exprs = selector.get("matchLabels") or {}, selector.get("matchExpressions") or []
    if not isinstance(labels, Mapping) or not isinstance(exprs, list):
        raise InvalidPolicy("namespaceSelector needs matchLabels as an object and matchExpressions as a list")
    reqs = [Requirement(str(k), "In", frozenset({str(v)})) for k, v in labels.items()]
    for expr in exprs:
        if not isinstance(expr, Mapping) or expr.get("operator") not in _OPERATORS or not expr.get("key"):
            raise InvalidPolicy(f"bad matchExpression {str(expr)[:100]}")
        values = frozenset(str(v) for v in expr.get("values") or [])
        if (expr["operator"] in ("In", "NotIn")) != bool(values):
            raise InvalidPolicy(f"matchExpression on {expr['key']!r}: In/NotIn need values, Exists none")
        reqs.append(Requirement(str(expr["key"]), str(expr["operator"]), values))
    return tuple(reqs)


def parse_policy(obj: Mapping[str, Any]) -> AccessPolicy:
    """A policy from its API object, or ``InvalidPolicy``."""
    name = str((obj.get("metadata") or {}).get("name") or "?")
    spec = obj.get("spec")
    if not isinstance(spec, Mapping):
        raise InvalidPolicy(f"policy {name}: no spec")
    prefixes = spec.get("allowedURIPrefixes")
    if not isinstance(prefixes, list) or not all(isinstance(p, str) and p for p in prefixes):
        raise InvalidPolicy(f"policy {name}: spec.allowedURIPrefixes must be a list of URI prefixes")
    ref = spec.get("credentialsSecretRef")
    secret = str(ref.get("name")) if isinstance(ref, Mapping) and ref.get("name") else None
    try:
        return AccessPolicy(
            name, _requirements(spec.get("namespaceSelector")), tuple(map(normalize_prefix, prefixes)), secret
        )
    except InvalidPolicy as exc:
        raise InvalidPolicy(f"policy {name}: {exc}") from None


def decide(policies: Iterable[AccessPolicy], namespace: str, labels: Mapping[str, str], uri: str) -> Decision:
    """May ``namespace`` (with ``labels``) fetch normalised ``uri``? The longest matching prefix wins."""
    best: tuple[int, str, AccessPolicy] | None = None
    for policy in sorted(policies, key=lambda p: p.name):
        if not policy.selects(labels):
            continue
        for prefix in policy.prefixes:
            if prefix_matches(prefix, uri) and (best is None or len(prefix) > best[0]):
                best = (len(prefix), prefix, policy)
    if best is None:
        return Decision(
            False, f"no ModelAccessPolicy allows namespace {namespace!r} to fetch {redact_uri(uri)}"
        )
    _, prefix, policy = best
    return Decision(
        True, f"allowed by ModelAccessPolicy {policy.name} ({prefix})", policy.name, policy.credentials_secret
    )
