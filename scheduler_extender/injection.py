"""What the admission webhook adds to an annotated pod, as an RFC 6902 JSON Patch (pure).

``inject(pod, install, sizes)`` reads the pod's ``model-locality.io/models`` annotation and returns
the operations that add, each only when the user has not written it already:

- scheduling: ``schedulerName`` (mode ``scheduler``; only when the pod names none, and the API
  server defaults a missing one to ``default-scheduler`` before admission, so that counts as none);
  or (mode ``affinity``) one preferred nodeAffinity term per model, ``<label key> In [ready]``,
  weighted by the model's share of the pod's bytes, plus required terms for ``locality: required``;
- the wait init containers (``model-agent wait URI``, one per model, first in ``initContainers``), with the
  node's IP and a projected ServiceAccount token of audience ``model-locality``;
- read-only hostPath mounts of exactly the requested models' directories and their records (never
  the whole cache), and ``MODEL_LOCALITY_MODEL_DIR`` (+ ``_URI``) or ``MODEL_LOCALITY_MODEL_DIRS``
  first in the env (so the container's own env and ``$(VAR)`` in its args can use them), in the
  containers that read the model (``readers``); the other containers are left as written;
- the NetworkPolicy client label and the ``model-locality.io/injected`` marker annotation.

Idempotent: every addition is checked against the pod as it is, so a second pass adds nothing.
Nothing the user wrote is removed or replaced (a field, env var, volume or container of the same
name wins). Bad annotations mean no patch and a reason; the pod then starts without locality.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from locality.contract import READY, pod_models
from locality.identity import DOMAIN, ModelRef
from scheduler_extender.scoring import model_weights

Mode = Literal["scheduler", "affinity"]
MODES: tuple[Mode, ...] = ("scheduler", "affinity")

INJECTED_ANNOTATION = f"{DOMAIN}/injected"
CLIENT_LABEL = f"{DOMAIN}/agent-client"
WAIT_CONTAINER = "model-locality-wait"
TOKEN_VOLUME = "model-locality-token"
DIR_ENV = "MODEL_LOCALITY_MODEL_DIR"
URI_ENV = "MODEL_LOCALITY_MODEL_URI"
DIRS_ENV = "MODEL_LOCALITY_MODEL_DIRS"
CONTAINERS_ANNOTATION = f"{DOMAIN}/containers"  # comma-separated names of the containers that read
DEFAULT_CONTAINER_ANNOTATION = "kubectl.kubernetes.io/default-container"
_REFERENCES = tuple(f"$({name})" for name in (DIR_ENV, URI_ENV, DIRS_ENV))
DEFAULT_SCHEDULERS = (None, "", "default-scheduler")
_NODE_AFFINITY = ("spec", "affinity", "nodeAffinity")
_PREFERRED = (*_NODE_AFFINITY, "preferredDuringSchedulingIgnoredDuringExecution")
_REQUIRED = (*_NODE_AFFINITY, "requiredDuringSchedulingIgnoredDuringExecution")


@dataclass(frozen=True, slots=True)
class Install:
    """The install's settings the webhook injects with (extender flags, see ``config.py``)."""

    mode: Mode = "scheduler"
    agent_image: str = "ghcr.io/model-locality/model-locality:0.1.0"
    agent_port: int = 8470
    cache_dir: str = "/var/lib/model-locality"  # on the host, and at the same path in every pod
    scheduler_name: str = "model-locality-scheduler"
    wait_timeout_seconds: int = 1800
    token_audience: str = "model-locality"
    token_dir: str = "/var/run/secrets/model-locality"  # the token is <token_dir>/token
    token_seconds: int = 3600


@dataclass(frozen=True, slots=True)
class Outcome:
    """The patch (empty: nothing to add) and what is worth telling the pod's author."""

    patch: tuple[dict[str, Any], ...] = ()
    warnings: tuple[str, ...] = ()
    refs: tuple[ModelRef, ...] = ()

    @property
    def mutated(self) -> bool:
        return bool(self.patch)


def inject(
    pod: Mapping[str, Any], install: Install, sizes: Mapping[str, int], *, opted_in: bool = True
) -> Outcome:
    """The JSON Patch for ``pod`` (not modified); ``sizes`` maps model id -> bytes (0/absent: unknown)."""
    meta = pod.get("metadata")
    spec = pod.get("spec")
    if not opted_in or not isinstance(meta, dict) or not isinstance(spec, dict):
        return Outcome()
    wanted = pod_models(meta.get("annotations") if isinstance(meta.get("annotations"), dict) else None)
    if wanted.invalid or (wanted.problem and not wanted.refs):
        return Outcome(warnings=(f"model-locality: not injected: {wanted.problem}",))
    if not wanted.refs:
        return Outcome()
    chosen, problem = readers(spec, meta.get("annotations") or {})
    if problem:
        return Outcome(warnings=(f"model-locality: not injected: {problem}",))
    patcher = Patcher(pod)
    _schedule(patcher, install, wanted.refs, wanted.required, sizes)
    _wait_container(patcher, install, wanted.refs)
    _models(patcher, install, wanted.refs, chosen)
    patcher.put(("metadata", "labels", CLIENT_LABEL), "true")
    if patcher.ops:
        patcher.put(("metadata", "annotations", INJECTED_ANNOTATION), install.mode)
    warnings = (f"model-locality: {wanted.problem}",) if wanted.problem else ()
    return Outcome(tuple(patcher.ops), warnings, wanted.refs)


def readers(spec: Mapping[str, Any], annotations: Mapping[str, Any]) -> tuple[frozenset[str] | None, str]:
    """The names of the containers that get the models' env and mounts (None: every container
    but the wait ones), and a problem ("" when none). First match wins:

    1. ``model-locality.io/containers: a,b``: exactly those (init containers may be named);
    2. the containers whose command, args or env use ``$(MODEL_LOCALITY_MODEL_DIR)``, ``_URI`` or ``_DIRS``;
    3. ``kubectl.kubernetes.io/default-container``, when it names a container of the pod;
    4. every container and init container (a pod with one container: that one).
    """
    candidates = {
        str(c.get("name")): c
        for key in ("initContainers", "containers")
        for c in _dicts(spec.get(key))
        if not str(c.get("name")).startswith(WAIT_CONTAINER)
    }
    raw = annotations.get(CONTAINERS_ANNOTATION)
    if raw is not None:
        asked = {n.strip() for n in raw.split(",") if n.strip()} if isinstance(raw, str) else set()
        if not asked or not asked <= candidates.keys():
            return None, f"{CONTAINERS_ANNOTATION}={raw!r}: the pod's containers are {sorted(candidates)}"
        return frozenset(asked), ""
    using = frozenset(name for name, c in candidates.items() if _uses_ours(c))
    if using:
        return using, ""
    default = annotations.get(DEFAULT_CONTAINER_ANNOTATION)
    if _named(spec.get("containers"), str(default)) and default in candidates:
        return frozenset((str(default),)), ""
    return None, ""


def _uses_ours(container: Mapping[str, Any]) -> bool:
    """Whether the container refers to one of our variables (command, args or an env value)."""
    words = [w for key in ("command", "args") for w in container.get(key) or [] if isinstance(w, str)]
    words += [str(e.get("value", "")) for e in _dicts(container.get("env"))]
    return any(ref in word for word in words for ref in _REFERENCES)


def model_dir(install: Install, ref: ModelRef) -> str:
    return f"{install.cache_dir.rstrip('/')}/models/{ref.id}"


def record_path(install: Install, ref: ModelRef) -> str:
    return f"{install.cache_dir.rstrip('/')}/records/{ref.id}.json"


def affinity_weights(refs: Sequence[ModelRef], sizes: Mapping[str, int]) -> tuple[int, ...]:
    """weight_m = clamp(round(100 * bytes_m / sum(bytes)), 1, 100), bytes as in ``model_weights``.

    NodeAffinity sums the weights of the terms a node matches and normalises to 0..100, so a node
    holding more of the pod's bytes ranks higher, as with the extender's score.
    """
    weights = model_weights(refs, sizes)
    total = sum(weights)
    return tuple(min(100, max(1, round(100 * w / total))) for w in weights)


def _schedule(
    p: Patcher, install: Install, refs: Sequence[ModelRef], required: bool, sizes: Mapping[str, int]
) -> None:
    if install.mode == "scheduler":
        if p.get(("spec", "schedulerName")) in DEFAULT_SCHEDULERS:
            p.put(("spec", "schedulerName"), install.scheduler_name, replace=True)
        return
    preferred = p.get(_PREFERRED)
    taken = _keys_in([t.get("preference") for t in _dicts(preferred)])
    for ref, weight in zip(refs, affinity_weights(refs, sizes), strict=True):
        if ref.label_key not in taken:
            p.append(_PREFERRED, {"weight": weight, "preference": {"matchExpressions": [_ready(ref)]}})
    if required:
        _require(p, refs)


def _require(p: Patcher, refs: Sequence[ModelRef]) -> None:
    """Required terms: ours alone, or ANDed into each of the user's (terms are ORed)."""
    terms = p.get((*_REQUIRED, "nodeSelectorTerms"))
    if not isinstance(terms, list) or not terms:
        p.put((*_REQUIRED, "nodeSelectorTerms"), [{"matchExpressions": [_ready(r) for r in refs]}])
        return
    for i, term in enumerate(terms):
        if not isinstance(term, dict):
            continue
        have = _keys_in([term])
        for ref in refs:
            if ref.label_key not in have:
                p.append((*_REQUIRED, "nodeSelectorTerms", i, "matchExpressions"), _ready(ref))


def _wait_container(p: Patcher, install: Install, refs: Sequence[ModelRef]) -> None:
    if not _named(p.get(("spec", "volumes")), TOKEN_VOLUME):
        p.append(("spec", "volumes"), _token_volume(install))
    names = {c.get("name") for key in ("initContainers", "containers") for c in _dicts(p.get(("spec", key)))}
    if WAIT_CONTAINER in names:  # the user's own wait step
        return
    for i, ref in enumerate(refs):  # one per model, first in line; the agent fetches them all at once
        name = wait_name(i)
        if name not in names:
            p.insert(("spec", "initContainers"), i, _wait(install, name, ref))


def wait_name(i: int) -> str:
    return WAIT_CONTAINER if i == 0 else f"{WAIT_CONTAINER}-{i + 1}"


def _wait(install: Install, name: str, ref: ModelRef) -> dict[str, Any]:
    return {
        "name": name,
        "image": install.agent_image,
        "command": ["model-agent"],
        "args": ["wait", ref.uri, "--timeout", str(install.wait_timeout_seconds)],
        "env": [
            {"name": "HOST_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.hostIP"}}},
            {"name": "MODEL_LOCALITY_AGENT_URL", "value": f"http://$(HOST_IP):{install.agent_port}"},
            {"name": "MODEL_LOCALITY_AGENT_TOKEN_FILE", "value": f"{install.token_dir}/token"},
        ],
        "resources": {
            "requests": {"cpu": "10m", "memory": "64Mi"},
            "limits": {"cpu": "200m", "memory": "128Mi"},
        },
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "runAsNonRoot": True,
            "capabilities": {"drop": ["ALL"]},
        },
        "volumeMounts": [{"name": TOKEN_VOLUME, "mountPath": install.token_dir, "readOnly": True}],
    }


def _token_volume(install: Install) -> dict[str, Any]:
    token = {"audience": install.token_audience, "expirationSeconds": install.token_seconds, "path": "token"}
    return {"name": TOKEN_VOLUME, "projected": {"sources": [{"serviceAccountToken": token}]}}


def _models(p: Patcher, install: Install, refs: Sequence[ModelRef], chosen: frozenset[str] | None) -> None:
    """hostPath volumes (type unset: the directory appears only once the wait container is done;
    the kubelet's check would run before it) and read-only mounts at the same path as in the agent,
    in the ``chosen`` containers (None: all but the wait ones)."""
    mounts: list[tuple[str, str]] = []
    for ref in refs:
        for name, path in (
            (f"model-{ref.id}", model_dir(install, ref)),
            (f"record-{ref.id}", record_path(install, ref)),
        ):
            mounts.append((name, path))
            if not _named(p.get(("spec", "volumes")), name):
                p.append(("spec", "volumes"), {"name": name, "hostPath": {"path": path}})
    if len(refs) == 1:
        env = [(DIR_ENV, model_dir(install, refs[0])), (URI_ENV, refs[0].uri)]
    else:
        dirs = {r.uri: model_dir(install, r) for r in refs}
        env = [(DIRS_ENV, json.dumps(dirs, sort_keys=True, separators=(",", ":")))]
    for key in ("initContainers", "containers"):
        items = p.get(("spec", key))
        for i, container in enumerate(items if isinstance(items, list) else []):
            if not isinstance(container, dict) or str(container.get("name")).startswith(WAIT_CONTAINER):
                continue
            if chosen is None or container.get("name") in chosen:
                _container(p, ("spec", key, i), container, mounts, env)


def _container(
    p: Patcher,
    at: tuple[str | int, ...],
    container: Mapping[str, Any],
    mounts: Sequence[tuple[str, str]],
    env: Sequence[tuple[str, str]],
) -> None:
    have = _dicts(container.get("volumeMounts"))
    names = {m.get("name") for m in have}
    paths = {str(m.get("mountPath", "")).rstrip("/") for m in have}
    for name, path in mounts:
        if name not in names and path not in paths:
            p.append((*at, "volumeMounts"), {"name": name, "mountPath": path, "readOnly": True})
    first = 0  # ours go first: an env var can only use the ones listed before it
    for name, value in env:
        if not _named(container.get("env"), name):
            p.insert((*at, "env"), first, {"name": name, "value": value})
            first += 1


def _ready(ref: ModelRef) -> dict[str, Any]:
    return {"key": ref.label_key, "operator": "In", "values": [READY]}


def _dicts(value: object) -> list[dict[str, Any]]:
    """The dict items of a list (the API server sent it, but a field may be junk or missing)."""
    return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []


def _named(items: object, name: str) -> bool:
    return any(item.get("name") == name for item in _dicts(items))


def _keys_in(selectors: Sequence[object]) -> set[str]:
    """Label keys used by the matchExpressions of node selector terms."""
    return {
        str(e.get("key")) for s in selectors if isinstance(s, dict) for e in _dicts(s.get("matchExpressions"))
    }


def pointer(parts: Sequence[str | int]) -> str:
    """An RFC 6901 JSON Pointer: ``~`` -> ``~0``, ``/`` -> ``~1``."""
    return "".join("/" + str(part).replace("~", "~0").replace("/", "~1") for part in parts)


class Patcher:
    """Builds ``add`` operations against a private copy of the pod, applying each as it goes,
    so that later checks see earlier additions and parents are created exactly once."""

    def __init__(self, obj: Mapping[str, Any]) -> None:
        self.doc: dict[str, Any] = copy.deepcopy(dict(obj))
        self.ops: list[dict[str, Any]] = []

    def get(self, parts: Sequence[str | int]) -> Any:
        node: Any = self.doc
        for part in parts:
            if isinstance(part, int):
                if not isinstance(node, list) or part >= len(node):
                    return None
            elif not isinstance(node, dict) or part not in node:
                return None
            node = node[part]
        return node

    def put(self, parts: Sequence[str | int], value: Any, *, replace: bool = False) -> None:
        """Set ``parts`` to ``value`` unless it is set already (``replace``: also when set);
        missing parents are created in the same operation."""
        node: Any = self.doc
        for i, part in enumerate(parts[:-1]):
            child = node.get(part) if isinstance(node, dict) else node[part]
            if not isinstance(child, dict | list):
                nested: Any = value
                for key in reversed(parts[i + 1 :]):
                    nested = {key: nested}
                self._add(parts[: i + 1], nested, node, part)
                return
            node = child
        last = parts[-1]
        if isinstance(node, dict) and last in node and node[last] is not None and not replace:
            return
        self._add(parts, value, node, last)

    def append(self, parts: Sequence[str | int], item: Any) -> None:
        """Append to the list at ``parts`` (created when missing)."""
        current = self.get(parts)
        if isinstance(current, list):
            current.append(copy.deepcopy(item))
            self.ops.append({"op": "add", "path": pointer(parts) + "/-", "value": item})
        else:
            self.put(parts, [item], replace=True)

    def insert(self, parts: Sequence[str | int], index: int, item: Any) -> None:
        """Insert at ``index`` of the list at ``parts`` (created when missing)."""
        current = self.get(parts)
        if isinstance(current, list):
            index = min(index, len(current))
            current.insert(index, copy.deepcopy(item))
            self.ops.append({"op": "add", "path": f"{pointer(parts)}/{index}", "value": item})
        else:
            self.put(parts, [item], replace=True)

    def _add(self, parts: Sequence[str | int], value: Any, parent: Any, key: str | int) -> None:
        parent[key] = copy.deepcopy(value)
        self.ops.append({"op": "add", "path": pointer(parts), "value": value})
