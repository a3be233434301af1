"""A policy naming credentialsSecretRef allows nothing yet: never the agent's own credentials instead."""

from __future__ import annotations

import pytest

from agent.cluster.access import without_credentials
from locality.access_policy import AccessPolicy, Decision, decide, parse_policy

URI = "s3://models/team-a/llama"


def _policy(name: str, prefixes: list[str], secret: str | None = None) -> AccessPolicy:
    spec: dict[str, object] = {"namespaceSelector": {}, "allowedURIPrefixes": prefixes}
    if secret:
        spec["credentialsSecretRef"] = {"name": secret}
    return parse_policy({"metadata": {"name": name}, "spec": spec})


ROWS = {
    "no credentials: allowed": ([_policy("all", ["s3://"])], True),
    "deciding policy names credentials: refused": (
        [_policy("team-a", ["s3://models/team-a"], "a-s3")],
        False,
    ),
    "a wider policy without credentials loses to the longer prefix": (
        [_policy("all", ["s3://"]), _policy("team-a", ["s3://models/team-a"], "a-s3")],
        False,
    ),
    "credentials on an unrelated prefix do not matter": (
        [_policy("all", ["s3://"]), _policy("team-b", ["s3://models/team-b"], "b-s3")],
        True,
    ),
}


@pytest.mark.parametrize(("policies", "allowed"), list(ROWS.values()), ids=list(ROWS))
def test_credentials_fail_closed(policies: list[AccessPolicy], allowed: bool) -> None:
    decision = without_credentials(decide(policies, "ns", {}, URI))
    assert decision.allowed is allowed
    if not allowed:
        assert "credentialsSecretRef" in decision.reason and "does not support" in decision.reason


def test_refusals_stay_as_they_were() -> None:
    refused = Decision(False, "no ModelAccessPolicy allows it")
    assert without_credentials(refused) is refused
