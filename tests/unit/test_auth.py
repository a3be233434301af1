"""locality.auth: principals from TokenReviews, caches, the static token, the chain, fail-closed."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any

import pytest

from locality import errors
from locality.auth import (
    Action,
    Chain,
    KubernetesAuth,
    Principal,
    Rule,
    StaticToken,
    TtlCache,
    bearer_of,
    principal_from_review,
    sa_namespace,
)
from locality.kube import KubeError

SA = "system:serviceaccount:serving:minilm"


@pytest.mark.parametrize(
    ("username", "namespace"),
    [
        (SA, "serving"),
        ("system:serviceaccount:ns:", None),
        ("system:serviceaccount:a:b:c", None),
        ("alice@example.com", None),
        ("system:node:gpu-a", None),
    ],
)
def test_sa_namespace(username: str, namespace: str | None) -> None:
    assert sa_namespace(username) == namespace


REVIEWS: dict[str, tuple[dict[str, Any], str]] = {
    "not authenticated": (
        {"authenticated": False, "error": "invalid bearer token\nmore"},
        "invalid bearer token",
    ),
    "other audience": ({"authenticated": True, "audiences": ["api"], "user": {"username": SA}}, "audience"),
    "no user": ({"authenticated": True, "audiences": ["model-locality"], "user": {}}, "no user"),
}


@pytest.mark.parametrize(("status", "words"), list(REVIEWS.values()), ids=list(REVIEWS))
def test_refused_reviews(status: dict[str, Any], words: str) -> None:
    result = principal_from_review(status, "model-locality")
    assert isinstance(result, str) and words in result and "\n" not in result


def test_accepted_review() -> None:
    status = {
        "authenticated": True,
        "audiences": ["model-locality"],
        "user": {"username": SA, "uid": "u1", "groups": ["system:serviceaccounts"], "extra": {"k": ["v"]}},
    }
    who = principal_from_review(status, "model-locality")
    assert who == Principal(SA, "u1", ("system:serviceaccounts",), (("k", ("v",)),))
    assert isinstance(who, Principal) and who.namespace == "serving"


def test_ttl_cache_expires_and_evicts_least_recently_used() -> None:
    now = [0.0]
    cache: TtlCache[str] = TtlCache(2, lambda: now[0])
    cache.put("a", "A", 10)
    cache.put("b", "B", 1)
    assert cache.get("a") == "A"  # a is now the most recent
    now[0] = 5.0
    cache.put("c", "C", 10)  # evicts b
    assert cache.get("b") is None and cache.get("a") == "A"
    now[0] = 10.0  # a expires (put at 0 for 10 s), c lives until 15
    assert cache.get("a") is None and cache.get("c") == "C" and len(cache) == 1


class Reviews:
    """A scripted review API (our own protocol, not the kubernetes client): counts calls."""

    def __init__(self) -> None:
        self.token_calls = 0
        self.access_calls = 0
        self.allowed: set[tuple[str, str, str]] = set()
        self.down = False

    async def token_review(self, token: str, audiences: Sequence[str]) -> dict[str, Any]:
        self.token_calls += 1
        if self.down:
            raise KubeError("Kubernetes API unreachable: ConnectionRefusedError")
        if token != "good":
            return {"authenticated": False, "error": "invalid bearer token"}
        return {"authenticated": True, "audiences": audiences, "user": {"username": SA}}

    async def subject_access_review(
        self, *, user: str, verb: str, resource: str, namespace: str = "", **_: Any
    ) -> dict[str, Any]:
        self.access_calls += 1
        if self.down:
            raise KubeError("Kubernetes API 503: etcd", 503)
        return {"allowed": (verb, resource, namespace) in self.allowed}


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_kubernetes_auth_caches_allow_longer_than_deny() -> None:
    now = [0.0]
    api = Reviews()
    auth = KubernetesAuth(api, clock=lambda: now[0])
    create = Action("create", "modelrequests", "serving")
    who = run(auth.authenticate("good"))
    with pytest.raises(
        errors.Forbidden, match=r"may not create modelrequests\.model-locality\.io in namespace 'serving'"
    ):
        run(auth.authorize(who, create))
    api.allowed.add(("create", "modelrequests", "serving"))
    with pytest.raises(errors.Forbidden):
        run(auth.authorize(who, create))  # the denial is cached ...
    now[0] = 2.5
    run(auth.authorize(who, create))  # ... for 2 s only
    run(auth.authenticate("good"))
    assert (api.token_calls, api.access_calls) == (1, 2)
    now[0] = 13.0
    run(auth.authenticate("good"))
    assert api.token_calls == 2  # the allow expired after 10 s


def test_bad_tokens_are_401_and_cached_briefly() -> None:
    now = [0.0]
    api = Reviews()
    auth = KubernetesAuth(api, clock=lambda: now[0])
    for _ in range(3):
        with pytest.raises(errors.Unauthenticated, match="invalid bearer token"):
            run(auth.authenticate("forged"))
    assert api.token_calls == 1
    now[0] = 2.1
    with pytest.raises(errors.Unauthenticated):
        run(auth.authenticate("forged"))
    assert api.token_calls == 2


def test_api_server_down_is_unavailable_never_allowed() -> None:
    api = Reviews()
    auth = KubernetesAuth(api)
    who = run(auth.authenticate("good"))
    api.down = True
    with pytest.raises(errors.Unavailable, match="SubjectAccessReview failed"):
        run(auth.authorize(who, Action("create", "modelrequests", "serving")))
    with pytest.raises(errors.Unavailable, match="TokenReview failed"):
        run(auth.authenticate("other"))
    api.down = False
    with pytest.raises(errors.Forbidden):  # the failure was not cached as an answer
        run(auth.authorize(who, Action("create", "modelrequests", "serving")))


def test_static_token_is_constant_time_and_all_powerful() -> None:
    static = StaticToken("s3cret")
    with pytest.raises(errors.Unauthenticated):
        run(static.authenticate("s3cre"))
    who = run(static.authenticate("s3cret"))
    run(static.authorize(who, Action("delete", "modelrequests")))
    with pytest.raises(errors.Forbidden):
        run(static.authorize(Principal(SA), Action("delete", "modelrequests")))


def test_chain_keeps_the_static_token_away_from_the_api_server() -> None:
    api = Reviews()
    chain = Chain(StaticToken("s3cret"), KubernetesAuth(api))
    assert run(chain.authenticate("s3cret")).source == "static"
    assert api.token_calls == 0
    who = run(chain.authenticate("good"))
    assert who.source == "kubernetes" and api.token_calls == 1
    with pytest.raises(errors.Forbidden):
        run(chain.authorize(who, Action("delete", "modelrequests")))
    with pytest.raises(ValueError, match="no authenticator"):
        Chain(None, None)


@pytest.mark.parametrize(
    ("header", "token"),
    [("Bearer abc", "abc"), ("bearer  abc ", "abc"), ("Basic abc", None), ("Bearer ", None), ("", None)],
)
def test_bearer_of(header: str, token: str | None) -> None:
    assert bearer_of(header) == token


def test_rule_scopes() -> None:
    sa, user = Principal(SA), Principal("alice")
    caller = Rule("create", "modelrequests", scope="caller")
    named = Rule("delete", "modeldistributions", name_from="name")
    match: Mapping[str, str] = {"name": "d1"}
    assert caller.action(sa, match) == Action("create", "modelrequests", "serving")
    assert caller.action(user, match) == Action("create", "modelrequests", "")  # not an SA: cluster-wide
    assert named.action(sa, match) == Action("delete", "modeldistributions", "", "d1")
