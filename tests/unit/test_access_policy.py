"""ModelAccessPolicy matching: which namespaces may fetch which URIs (pure core, table tests)."""

from __future__ import annotations

from typing import Any

import pytest

from locality.access_policy import AccessPolicy, InvalidPolicy, decide, parse_policy, prefix_matches


def policy(name: str, selector: Any, prefixes: list[str], secret: str | None = None) -> AccessPolicy:
    spec: dict[str, Any] = {"namespaceSelector": selector, "allowedURIPrefixes": prefixes}
    if secret:
        spec["credentialsSecretRef"] = {"name": secret}
    return parse_policy({"metadata": {"name": name}, "spec": spec})


ALLOW_ALL = policy("allow-all", {}, ["s3://", "http://", "https://"])
TEAM_A = policy(
    "team-a", {"matchLabels": {"team": "a"}}, ["s3://models/team-a", "https://hub.example/a/"], "team-a-s3"
)
TEAM_A_DEEP = policy(
    "team-a-deep", {"matchLabels": {"team": "a"}}, ["s3://models/team-a/private"], "private-s3"
)
NOT_SANDBOX = policy(
    "not-sandbox",
    {"matchExpressions": [{"key": "tier", "operator": "NotIn", "values": ["sandbox"]}]},
    ["s3://shared"],
)
HAS_GPU = policy("gpu", {"matchExpressions": [{"key": "gpu", "operator": "Exists"}]}, ["s3://big"])
NO_DEBUG = policy(
    "no-debug", {"matchExpressions": [{"key": "debug", "operator": "DoesNotExist"}]}, ["s3://prod"]
)

A = {"team": "a"}
B = {"team": "b"}
DECISIONS = {
    # name: (policies, labels, uri, allowed, policy that allowed, credentials)
    "no policies allow nothing": ([], A, "s3://models/team-a/x", False, None, None),
    "allow-all": ([ALLOW_ALL], B, "https://h/m.bin", True, "allow-all", None),
    "own prefix": ([TEAM_A], A, "s3://models/team-a/llama", True, "team-a", "team-a-s3"),
    "prefix itself": ([TEAM_A], A, "s3://models/team-a", True, "team-a", "team-a-s3"),
    "boundary: team-ab is not team-a": ([TEAM_A], A, "s3://models/team-ab/x", False, None, None),
    "other namespace's prefix": ([TEAM_A], B, "s3://models/team-a/llama", False, None, None),
    "https prefix with trailing slash": (
        [TEAM_A],
        A,
        "https://hub.example/a/m.bin?sig=1",
        True,
        "team-a",
        "team-a-s3",
    ),
    "https prefix, other path": ([TEAM_A], A, "https://hub.example/b/m.bin", False, None, None),
    "longest prefix names the credentials": (
        [TEAM_A, TEAM_A_DEEP],
        A,
        "s3://models/team-a/private/m",
        True,
        "team-a-deep",
        "private-s3",
    ),
    "policies add up": ([TEAM_A, ALLOW_ALL], B, "s3://models/team-a/x", True, "allow-all", None),
    "NotIn: label absent passes": ([NOT_SANDBOX], {}, "s3://shared/m", True, "not-sandbox", None),
    "NotIn: sandbox refused": ([NOT_SANDBOX], {"tier": "sandbox"}, "s3://shared/m", False, None, None),
    "Exists": ([HAS_GPU], {"gpu": ""}, "s3://big/m", True, "gpu", None),
    "Exists: absent": ([HAS_GPU], {}, "s3://big/m", False, None, None),
    "DoesNotExist": ([NO_DEBUG], {}, "s3://prod/m", True, "no-debug", None),
    "DoesNotExist: present": ([NO_DEBUG], {"debug": "1"}, "s3://prod/m", False, None, None),
    "scheme prefix does not cross schemes": (
        [policy("s3", {}, ["s3://"])],
        A,
        "https://h/m",
        False,
        None,
        None,
    ),
    "prefix case is normalised": (
        [policy("p", {}, ["S3://Models/team-a"])],
        A,
        "s3://models/team-a/x",
        True,
        "p",
        None,
    ),
}


@pytest.mark.parametrize("case", list(DECISIONS.values()), ids=list(DECISIONS))
def test_decide(case: tuple[list[AccessPolicy], dict[str, str], str, bool, str | None, str | None]) -> None:
    policies, labels, uri, allowed, by, secret = case
    decision = decide(policies, "ns", labels, uri)
    assert (decision.allowed, decision.policy, decision.credentials_secret) == (allowed, by, secret)


def test_refusal_names_the_namespace_and_redacts_the_uri() -> None:
    decision = decide([TEAM_A], "serving", B, "https://h/m.bin?X-Amz-Signature=abc")
    assert not decision.allowed
    assert "'serving'" in decision.reason and "abc" not in decision.reason and "REDACTED" in decision.reason


INVALID = {
    "no spec": {"metadata": {"name": "x"}},
    "no selector": {"spec": {"allowedURIPrefixes": ["s3://"]}},
    "prefixes not a list": {"spec": {"namespaceSelector": {}, "allowedURIPrefixes": "s3://"}},
    "prefix without scheme": {"spec": {"namespaceSelector": {}, "allowedURIPrefixes": ["models/"]}},
    "unknown operator": {
        "spec": {
            "namespaceSelector": {"matchExpressions": [{"key": "k", "operator": "Gt"}]},
            "allowedURIPrefixes": ["s3://"],
        }
    },
    "matchLabels not an object": {
        "spec": {"namespaceSelector": {"matchLabels": ["team"]}, "allowedURIPrefixes": ["s3://"]}
    },
    "matchExpressions not a list": {
        "spec": {"namespaceSelector": {"matchExpressions": {"key": "k"}}, "allowedURIPrefixes": ["s3://"]}
    },
    "In without values": {
        "spec": {
            "namespaceSelector": {"matchExpressions": [{"key": "k", "operator": "In"}]},
            "allowedURIPrefixes": ["s3://"],
        }
    },
}


@pytest.mark.parametrize("obj", list(INVALID.values()), ids=list(INVALID))
def test_invalid_policies_are_refused(obj: dict[str, Any]) -> None:
    with pytest.raises(InvalidPolicy):
        parse_policy(obj)


@pytest.mark.parametrize(
    ("prefix", "uri", "hit"),
    [
        ("s3://", "s3://b/k", True),
        ("s3://b", "s3://b", True),
        ("s3://b", "s3://bb/k", False),
        ("https://h/f.bin", "https://h/f.bin?v=1", True),
        ("https://h/f", "https://h/f.bin", False),
    ],
)
def test_prefix_matches(prefix: str, uri: str, hit: bool) -> None:
    assert prefix_matches(prefix, uri) is hit
