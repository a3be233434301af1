"""The access gate parses its ModelAccessPolicies once per change of the informer, not per request,
and a change (added, modified, deleted) is seen by the next decision."""

from __future__ import annotations

from typing import Any

from agent.cluster.access import AccessGate


def policy(name: str, prefix: str, rv: str) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "resourceVersion": rv},
        "spec": {"namespaceSelector": {}, "allowedURIPrefixes": [prefix]},
    }


async def test_policies_are_parsed_once_per_change() -> None:
    gate = AccessGate(kube=None)  # type: ignore[arg-type]  # the informer is driven by hand here
    informer = gate.informer
    await informer._apply("ADDED", policy("a", "s3://models/", "1"))
    first = gate.policies()
    assert [p.name for p in first] == ["a"]
    assert gate.policies() is first  # no re-parse without a change
    await informer._apply("ADDED", policy("b", "https://hub.example/", "2"))
    assert sorted(p.name for p in gate.policies()) == ["a", "b"]
    await informer._apply("MODIFIED", policy("a", "s3://other/", "3"))
    assert {p.name: p.prefixes for p in gate.policies()}["a"] == ("s3://other/",)
    await informer._apply("DELETED", policy("b", "https://hub.example/", "4"))
    assert [p.name for p in gate.policies()] == ["a"]
