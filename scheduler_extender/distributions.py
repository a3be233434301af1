"""Cluster pre-distribution REST: ``/v1/distributions`` over the ModelDistribution resource.

``POST {"uri", "nodeSelector"?, "replicas"?: N | "all"}`` -> 201 with a generated name
(``<slug>-<8 hex>``); ``GET`` list / one with per-node state; ``DELETE`` -> 204. The objects
live in the Kubernetes API (``locality.kube``), so ``kubectl apply`` of the same object works and a
restarted extender loses nothing. Every call, reads included, needs the bearer token: model URIs
may carry signed query strings. ``replicas`` defaults to ``"all"``, as in the CRD.
``GET /v1/models/{id}/startup``: the model's measured time to ready (``startup.py``), readable by
whoever may list distributions.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from locality import errors
from locality.auth import Authenticator, Rule, rules_table
from locality.authmw import auth_middleware
from locality.httpkit import read_body
from locality.jsonbody import decode_json
from locality.kube import Conflict, Kube, KubeError, NotFound
from scheduler_extender.nodecache import NodeCache
from scheduler_extender.specs import InvalidSpec, Spec, as_object, node_view, parse_spec
from scheduler_extender.startup import StartupTracker
from scheduler_extender.targets import choose_targets

log = logging.getLogger(__name__)

MAX_BODY = 64 * 1024
_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")
_MODEL_ID = re.compile(r"^[0-9a-f]{16}$")


@dataclass
class DistContext:
    """What the distribution handlers need."""

    kube: Kube | None
    cache: NodeCache
    new_suffix: Callable[[], str]
    poke: Callable[[], None]  # wake the reconciler (a new or deleted distribution)
    startup: StartupTracker | None = None  # time-to-ready samples of injected pods

    def require_kube(self) -> Kube:
        if self.kube is None:
            raise errors.Unavailable("no Kubernetes API: the extender runs standalone (give --kubeconfig)")
        return self.kube


DIST = web.AppKey("dist_context", DistContext)


# RBAC of each route on model-locality.io (cluster-wide): the same verbs kubectl would need.
RULES = rules_table(
    [
        ("POST", "distributions-create", Rule("create", "modeldistributions")),
        ("GET", "distributions-list", Rule("list", "modeldistributions")),
        ("GET", "distributions-get", Rule("get", "modeldistributions", name_from="name")),
        ("DELETE", "distributions-delete", Rule("delete", "modeldistributions", name_from="name")),
        ("GET", "models-startup", Rule("list", "modeldistributions")),
    ]
)


def create_subapp(authenticator: Authenticator, ctx: DistContext) -> web.Application:
    """The ``/v1/`` sub-application; its auth middleware guards only these routes (reads too:
    model URIs may carry signed query strings)."""
    app = web.Application(
        middlewares=[auth_middleware(authenticator, RULES, ("GET", "POST", "PUT", "PATCH", "DELETE"))]
    )
    app[DIST] = ctx
    app.router.add_post("/distributions", create, name="distributions-create")
    app.router.add_get("/distributions", list_all, name="distributions-list")
    app.router.add_get("/distributions/{name}", get_one, name="distributions-get")
    app.router.add_delete("/distributions/{name}", delete, name="distributions-delete")
    app.router.add_get("/models/{model}/startup", startup_summary, name="models-startup")
    return app


async def startup_summary(request: web.Request) -> web.Response:
    """Time to ready of one model (16 hex digits, ``modelId`` in a distribution's status)."""
    model = request.match_info["model"]
    if not _MODEL_ID.match(model):
        raise errors.Invalid(f"{model[:100]!r} is not a model id (16 hex digits, e.g. status.modelId)")
    tracker = request.app[DIST].startup
    if tracker is None:
        raise errors.Unavailable("time to ready is not tracked here")
    return web.json_response(tracker.summary(model))


async def create(request: web.Request) -> web.Response:
    ctx = request.app[DIST]
    try:
        spec = parse_spec(await read_object(request))
    except InvalidSpec as exc:
        raise errors.Invalid(str(exc)) from None
    kube = ctx.require_kube()
    for _ in range(3):  # a generated name can collide (1 in 4 billion); try another
        name = f"{spec.ref.slug}-{ctx.new_suffix()}"
        try:
            obj = await kube.create_distribution({"metadata": {"name": name}, "spec": spec.as_dict()})
            break
        except Conflict:
            continue
        except KubeError as exc:
            raise _api_error(exc) from None
    else:
        raise errors.Conflict("could not find a free distribution name; try again")
    ctx.poke()
    return web.json_response(view(obj, ctx.cache, spec), status=201)


async def list_all(request: web.Request) -> web.Response:
    ctx = request.app[DIST]
    try:
        items, _ = await ctx.require_kube().list("modeldistributions")
    except KubeError as exc:
        raise _api_error(exc) from None
    items.sort(key=lambda o: str(as_object(o.get("metadata")).get("name", "")))
    return web.json_response({"items": [view(o, ctx.cache) for o in items]})


async def get_one(request: web.Request) -> web.Response:
    ctx = request.app[DIST]
    name = _name(request)
    try:
        obj = await ctx.require_kube().get("modeldistributions", name)
    except NotFound:
        raise errors.NotFound(f"no distribution named {name!r}") from None
    except KubeError as exc:
        raise _api_error(exc) from None
    return web.json_response(view(obj, ctx.cache))


async def delete(request: web.Request) -> web.Response:
    ctx = request.app[DIST]
    name = _name(request)
    try:
        await ctx.require_kube().delete_distribution(name)
    except NotFound:
        raise errors.NotFound(f"no distribution named {name!r}") from None
    except KubeError as exc:
        raise _api_error(exc) from None
    ctx.poke()
    return web.Response(status=204)


async def read_object(request: web.Request) -> dict[str, Any]:
    """A JSON object body of at most ``MAX_BODY`` bytes; 400/413 otherwise (never a 500)."""
    body = decode_json(await read_body(request, MAX_BODY))
    if not isinstance(body, dict):
        raise errors.Invalid("body must be a JSON object")
    return body


def _name(request: web.Request) -> str:
    name = request.match_info["name"]
    if not _NAME.match(name):
        raise errors.Invalid(f"{name[:100]!r} is not a valid distribution name")
    return name


def _api_error(exc: KubeError) -> errors.LocalityError:
    log.warning("Kubernetes API call failed: %s", exc)
    return errors.Unavailable(f"Kubernetes API call failed: {exc}")


def view(obj: dict[str, Any], cache: NodeCache, spec: Spec | None = None) -> dict[str, Any]:
    """The REST shape of one distribution, with per-node state from the node cache.

    Targets come from the status the extender wrote; before the first status write they are
    computed now with the same pure function, so a fresh POST already answers its targets.
    """
    meta = as_object(obj.get("metadata"))
    status = as_object(obj.get("status"))
    raw_spec = obj.get("spec")
    out: dict[str, Any] = {"name": meta.get("name"), "created": meta.get("creationTimestamp")}
    try:
        spec = spec or parse_spec(raw_spec)
    except InvalidSpec as exc:
        return {**out, "spec": raw_spec, "error": f"invalid spec: {exc}"}
    index = cache.index
    targets = status.get("targets")
    if not isinstance(targets, list):
        targets = list(choose_targets(spec.want(index.sizes.get(spec.ref.id)), index))
    nodes = node_view(spec.ref.id, spec.ref.label_key, targets, index)
    return {
        **out,
        "uri": spec.ref.uri,
        "modelId": spec.ref.id,
        "label": spec.ref.label_key,
        "replicas": spec.replicas,
        "nodeSelector": dict(spec.node_selector),
        "targets": targets,
        "desired": status.get("desired"),
        "ready": sum(1 for t in targets if nodes.get(t, {}).get("state") == "ready"),
        "nodes": nodes,
        "conditions": status.get("conditions") or [],
        **({"workload": spec.as_dict()["workload"], "auto": status.get("auto")} if spec.workload else {}),
    }
