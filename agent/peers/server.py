"""The peer endpoint: other agents read chunk maps and verified chunk bytes from this agent.

Its own listener (``--peer-port``, default 8472), apart from the REST API: every route needs an
agent's token (``agent.peers.auth``), nothing here is open. Routes:

- ``GET /v1/peer/models/{id}?revision=R[&since=V][&wait=S]``: the chunk map of that revision (404
  when not held), with its version token ``version``. With ``since`` (a token this agent gave),
  only the chunks verified since (``"delta": true``) when it names the same fetch, else the whole
  map; when nothing changed, the answer waits up to ``wait`` seconds (at most ``MAX_WAIT``) for a
  change, then says 304. Without ``since``, a revision not held yet is waited for the same way (its
  fetch may start here any moment), then 404;
- ``GET /v1/peer/models/{id}/files/{path}?revision=R`` with ``Range: bytes=A-B``: 206 and those
  bytes, when every chunk they touch is verified here (404 otherwise); 503 when the node is at its
  concurrent-upload limit. Bytes go out through ``sendfile`` paced by the node's upload rate.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
from pathlib import Path

from aiohttp import web
from aiohttp.typedefs import Middleware

from agent.peers.auth import PeerGate
from agent.peers.chunkmap import ChunkMap
from agent.peers.holdings import Holdings
from agent.peers.limits import Uploads
from agent.peers.metrics import PeerMetrics
from locality import errors
from locality.auth import bearer_of
from locality.httpkit import Handler, error_middleware
from locality.identity import UnsafePath, safe_relpath

log = logging.getLogger(__name__)
_RANGE = re.compile(r"^bytes=(\d+)-(\d+)$")
SLICE = 1 << 20  # bytes per sendfile call (the pacing granularity)
MAX_WAIT = 30.0  # seconds a map request may wait for a change

HOLDINGS = web.AppKey("holdings", Holdings)
GATE: web.AppKey[PeerGate] = web.AppKey("gate")
UPLOADS = web.AppKey("uploads", Uploads)
METRICS = web.AppKey("peer_metrics", PeerMetrics)


def peer_app(holdings: Holdings, gate: PeerGate, uploads: Uploads, metrics: PeerMetrics) -> web.Application:
    app = web.Application(middlewares=[error_middleware, _auth(gate, metrics)])
    app[HOLDINGS], app[GATE], app[UPLOADS], app[METRICS] = holdings, gate, uploads, metrics
    app.router.add_get("/v1/peer/models/{id}", chunk_map, name="peer-map")
    app.router.add_get("/v1/peer/models/{id}/files/{path:.+}", chunk_bytes, name="peer-bytes")
    return app


def _auth(gate: PeerGate, metrics: PeerMetrics) -> Middleware:
    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        token = bearer_of(request.headers.get("Authorization", ""))
        try:
            if token is None:
                raise errors.Unauthenticated(
                    "missing bearer token: only model-locality agents read from agents"
                )
            await gate.admit(token)
        except errors.Unauthenticated:
            metrics.peer_refused.labels("unauthenticated").inc()
            raise
        except errors.Forbidden:
            metrics.peer_refused.labels("forbidden").inc()
            raise
        return await handler(request)

    return middleware


def _revision(request: web.Request) -> str:
    revision = request.query.get("revision", "")
    if not revision:
        raise errors.Invalid("the revision query parameter is required")
    return revision


def _held(request: web.Request) -> tuple[ChunkMap, Path]:
    found = request.app[HOLDINGS].find(request.match_info["id"], _revision(request))
    if found is None:
        raise errors.NotFound("this agent holds no such model revision")
    return found


async def chunk_map(request: web.Request) -> web.Response:
    model_id, revision = request.match_info["id"], _revision(request)
    since = request.query.get("since") or None
    try:
        wait = min(MAX_WAIT, max(0.0, float(request.query.get("wait", "0"))))
    except ValueError as exc:
        raise errors.Invalid("wait is a number of seconds") from exc
    holdings = request.app[HOLDINGS]
    feed = holdings.feed(model_id, revision)
    if feed is None and since is None and wait > 0:
        feed = await holdings.wait_arrival(model_id, revision, wait)
    elif feed is not None and since == feed.token and wait > 0:
        await feed.wait_change(wait)
        feed = holdings.feed(model_id, revision)
    if feed is None:
        raise errors.NotFound("this agent holds no such model revision")
    if since == feed.token:
        return web.Response(status=304)
    return web.json_response(feed.answer(since))


async def chunk_bytes(request: web.Request) -> web.StreamResponse:
    held, directory = _held(request)
    path = request.match_info["path"]
    file = held.files.get(path)
    if file is None:
        raise errors.NotFound("no such file in this model revision")
    try:
        safe_relpath(path)
    except UnsafePath as exc:
        raise errors.Invalid(str(exc)) from exc
    start, end = _range(request.headers.get("Range", ""), file.size)
    first, last = start // held.chunk_bytes, end // held.chunk_bytes
    if any((path, i) not in held.chunks for i in range(first, last + 1)):
        raise errors.NotFound("those bytes are not verified here (yet)")
    uploads = request.app[UPLOADS]
    if not uploads.try_start():
        request.app[METRICS].peer_refused.labels("busy").inc()
        raise errors.Unavailable("busy: this node is at its concurrent upload limit")
    try:
        return await _send(request, directory / path, start, end, file.size)
    finally:
        uploads.done()


def _range(header: str, size: int) -> tuple[int, int]:
    match = _RANGE.match(header.strip())
    if match is None:
        raise errors.Invalid("a single Range: bytes=A-B is required")
    start, end = int(match[1]), int(match[2])
    if not start <= end < size:
        raise errors.Invalid(f"range {start}-{end} is outside the file (size {size})")
    return start, end


async def _send(request: web.Request, path: Path, start: int, end: int, size: int) -> web.StreamResponse:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as exc:
        raise errors.NotFound(f"file gone: {exc.strerror}") from exc
    with os.fdopen(fd, "rb") as f:
        resp = web.StreamResponse(status=206)
        resp.content_length = end - start + 1
        resp.headers["Content-Range"] = f"bytes {start}-{end}/{size}"
        resp.content_type = "application/octet-stream"
        await resp.prepare(request)
        uploads, metrics = request.app[UPLOADS], request.app[METRICS]
        transport = request.transport
        loop = asyncio.get_running_loop()
        offset = start
        while offset <= end:
            n = min(SLICE, end + 1 - offset)
            await uploads.pace(n)
            if transport is None or transport.is_closing():
                raise ConnectionResetError("the peer went away")
            await loop.sendfile(transport, f, offset, n)
            offset += n
            metrics.peer_bytes.labels("sent").inc(n)
        await resp.write_eof()
    return resp
