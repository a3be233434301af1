"""HTTP handlers of the scheduler verbs ``filter`` and ``prioritize``.

Node modes (the extender's ``nodeCacheCapable`` setting):

* ``nodeCacheCapable: true`` (``NodeNames``): nodes are looked up in the watch-backed node
  cache. A well-formed name the cache has not seen (a Node created a moment ago, or any name
  while the extender runs standalone without a cluster) holds no models: it scores 0, passes
  ``preferred`` pods and fails ``required`` ones with a reason. Only a malformed list (not a
  list of strings) is a 400: refusing the whole request would stall every pod over one new node.
* ``nodeCacheCapable: false`` (``Nodes``): the request's own Node objects are the truth for
  labels; model sizes the request does not mention come from the node cache when there is one.

Bad input (bad JSON, no ``Pod``, both or neither node lists, malformed entries, a body over
``--max-body-bytes``) is answered 4xx with ``{"error": ...}``; a pod annotation that cannot be
understood scores 0 and is logged once per pod, never an error.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from aiohttp import web

from locality.httpkit import read_body
from locality.identity import ModelRef
from scheduler_extender.index import NodeIndex, remember
from scheduler_extender.nodecache import NodeCache, ProblemLog
from scheduler_extender.nodes import node_state
from scheduler_extender.wire import (
    ExtenderArgs,
    NamesOnly,
    encode_filter,
    encode_pass_all,
    encode_prioritize,
    parse_args,
    split_names_only,
)

log = logging.getLogger(__name__)


@dataclass
class VerbContext:
    """What the verb handlers need; one per app."""

    cache: NodeCache
    max_body_bytes: int
    standalone: bool
    pod_problems: ProblemLog
    clock: Callable[[], float]
    observe_nodes: Callable[[str, int], None]
    _warned_at: float | None = None
    _last: tuple[bytes, ExtenderArgs] | None = None
    # Prioritize replies over every node that scores, per set of models: (the table, its JSON).
    _replies: dict[tuple[ModelRef, ...], tuple[dict[str, int], bytes]] = field(default_factory=dict)

    async def read_args(self, request: web.Request) -> ExtenderArgs:
        return self.args_of(await read_body(request, self.max_body_bytes))

    def args_of(self, raw: bytes) -> ExtenderArgs:
        """The parsed body; the last one is kept: kube-scheduler sends ``prioritize`` the very
        bytes it sent ``filter`` when the filter kept every node (a ``preferred`` pod), and one
        byte comparison saves decoding them again."""
        last = self._last
        if last is not None and last[0] == raw:
            return last[1]
        args = parse_args(raw)
        if args.pod.problem:
            self.pod_problems.report("pod", args.pod_key, "", args.pod.problem)
        self._last = (raw, args)
        return args

    def filter(self, args: ExtenderArgs) -> str:
        """The filter reply (JSON text) for one request."""
        self.observe_nodes("filter", len(args.names))
        passed, failed = self.index_for(args).filter(args.pod, args.names)
        return encode_filter(args, passed, failed)

    def prioritize(self, args: ExtenderArgs) -> str:
        """The prioritize reply (JSON text) for one request."""
        self.observe_nodes("prioritize", len(args.names))
        return encode_prioritize(args.names, self.index_for(args).scores(args.pod, args.names))

    def answer(self, verb: str, raw: bytes) -> bytes:
        """``filter`` or ``prioritize`` of a raw body (``errors.Invalid`` when malformed): the
        transport-free core that the aiohttp routes and the fast path (``fastpath.py``) share.

        kube-scheduler's own names-only requests are answered without decoding their names where
        the answer does not depend on them (``_names_free``); anything else is parsed in full."""
        names_only = split_names_only(raw)
        if names_only is not None:
            if names_only.pod.problem:
                self.pod_problems.report("pod", names_only.pod_key, "", names_only.pod.problem)
            reply = self._names_free(verb, names_only)
            if reply is not None:
                return reply
            args = names_only.args()  # the pod is decoded already: only the names are left
        else:
            args = self.args_of(raw)
        return (self.filter(args) if verb == "filter" else self.prioritize(args)).encode()

    def _names_free(self, verb: str, req: NamesOnly) -> bytes | None:
        """The answer when it needs no names: a filter that keeps every node (a ``preferred``
        pod: the request's own ``NodeNames`` go back), and a prioritize when the scheduler offers
        at least half the nodes (the scores of every node that scores: kube-scheduler ignores
        hosts it did not offer, extender-wire.md 1.6). None: the full path answers."""
        index = self.cache.index
        if verb == "filter":
            if req.pod.required:
                return None
        elif 2 * req.offered < len(index):
            return None  # a sample of a large cluster: score only the offered nodes
        if self.standalone:
            self._warn_standalone()
        self.observe_nodes(verb, req.offered)
        if verb == "filter":
            return encode_pass_all(req.names_json)
        if not req.pod.refs:
            return b"[]"
        table = index.table(req.pod)  # the same object until the index changes
        cached = self._replies.get(req.pod.refs)
        if cached is not None and cached[0] is table:
            return cached[1]
        reply = encode_prioritize(list(table), list(table.values())).encode()
        return remember(self._replies, req.pod.refs, (table, reply))[1]

    def index_for(self, args: ExtenderArgs) -> NodeIndex:
        if args.items is None:
            if self.standalone:
                self._warn_standalone()
            return self.cache.index
        states = [node_state(item) for item in args.items]
        for state in states:
            if state.problem:  # logged once per node version, like the cache does
                self.cache.problems.report("node", state.name, state.resource_version, state.problem)
        index = NodeIndex(states)
        index.add_missing_sizes(self.cache.index.sizes)
        return index

    def _warn_standalone(self) -> None:
        now = self.clock()
        if self._warned_at is None or now - self._warned_at > 60:
            self._warned_at = now
            log.warning(
                "nodeCacheCapable request while running standalone (no cluster): every node scores 0; "
                "give --kubeconfig / run in-cluster, or set nodeCacheCapable: false"
            )


CONTEXT = web.AppKey("verb_context", VerbContext)


async def filter_handler(request: web.Request) -> web.Response:
    ctx = request.app[CONTEXT]
    text = ctx.filter(await ctx.read_args(request))
    return web.Response(text=text, content_type="application/json")


async def prioritize_handler(request: web.Request) -> web.Response:
    ctx = request.app[CONTEXT]
    text = ctx.prioritize(await ctx.read_args(request))
    return web.Response(text=text, content_type="application/json")
