"""Fuzzed request bodies never make the extender answer 5xx, and it keeps serving afterwards."""

from __future__ import annotations

import asyncio
import http.client
import json
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from locality import errors
from locality.contract import LOCALITY_ANNOTATION, MODELS_ANNOTATION
from locality.identity import model_ref
from scheduler_extender.app import Deps, create_app
from scheduler_extender.config import Settings
from scheduler_extender.nodecache import NodeCache
from scheduler_extender.specs import InvalidSpec, parse_spec
from scheduler_extender.wire import parse_args

A = model_ref("s3://models/org/llama-3-8b")

json_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=20,
)
annotation_values = (
    st.sampled_from(
        [A.uri, f"{A.uri},{A.uri}", "ftp://x", "", ",,,", "s3://", "required", "preferred", "\x00", "a" * 300]
    )
    | json_values
)
pods = (
    st.fixed_dictionaries(
        {},
        optional={
            "metadata": st.fixed_dictionaries(
                {},
                optional={
                    "name": json_values,
                    "annotations": st.dictionaries(
                        st.sampled_from([MODELS_ANNOTATION, LOCALITY_ANNOTATION, "x"]),
                        annotation_values,
                        max_size=3,
                    )
                    | json_values,
                },
            )
            | json_values
        },
    )
    | json_values
)
names = st.lists(st.sampled_from(["node-1", "node-2", "ghost", ""]) | st.text(max_size=8), max_size=6)
node_items = st.lists(
    st.fixed_dictionaries({"metadata": st.fixed_dictionaries({"name": st.text(max_size=8) | json_values})})
    | json_values,
    max_size=4,
)
extender_args = st.fixed_dictionaries(
    {},
    optional={
        "Pod": pods,
        "Nodes": st.none() | st.fixed_dictionaries({"items": node_items}) | json_values,
        "NodeNames": st.none() | names | json_values,
    },
)
bodies = (
    st.binary(max_size=200)
    | json_values.map(lambda v: json.dumps(v).encode())
    | extender_args.map(lambda v: json.dumps(v).encode())
)


class Server:
    """The extender app on a free port, served from its own thread and loop."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.port = 0
        self._runner: web.AppRunner | None = None
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def start(self) -> None:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(10)

    async def _start(self) -> None:
        cache = NodeCache()
        cache.replace(
            [
                {"metadata": {"name": "node-1", "labels": {A.label_key: "ready"}}},
                {"metadata": {"name": "node-2", "annotations": {MODELS_ANNOTATION: "{garbage"}}},
            ]
        )
        app = create_app(Settings(max_body_bytes=64 * 1024), Deps(node_cache=cache))
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = int(self._runner.addresses[0][1])

    def stop(self) -> None:
        assert self._runner is not None
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    srv = Server()
    srv.start()
    yield srv
    srv.stop()


def post(server: Server, path: str, body: bytes) -> tuple[int, Any]:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        conn.request("POST", path, body=body, headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read())
    finally:
        conn.close()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=bodies, verb=st.sampled_from(["filter", "prioritize"]))
def test_fuzzed_bodies_never_5xx(server: Server, body: bytes, verb: str) -> None:
    status, reply = post(server, f"/{verb}", body)
    assert status < 500, reply
    if status == 200:
        shape = reply if verb == "prioritize" else reply["FailedNodes"]
        assert isinstance(shape, list | dict)
    else:
        assert status in (400, 413) and isinstance(reply["error"], str)


def test_still_serving_after_fuzzing(server: Server) -> None:
    body = {
        "Pod": {"metadata": {"annotations": {MODELS_ANNOTATION: A.uri}}},
        "Nodes": None,
        "NodeNames": ["node-1"],
    }
    assert post(server, "/prioritize", json.dumps(body).encode()) == (200, [{"Host": "node-1", "Score": 10}])


@settings(max_examples=300, deadline=None)
@given(
    body=st.binary(max_size=100)
    | json_values.map(lambda v: json.dumps(v).encode())
    | extender_args.map(lambda v: json.dumps(v).encode())
)
def test_parse_args_raises_only_bad_request(body: bytes) -> None:
    try:
        parse_args(body)
    except errors.Invalid:
        pass


specs = (
    st.fixed_dictionaries(
        {},
        optional={
            "uri": st.sampled_from([A.uri, "ftp://x", "s3://", "https://h/p?q=1"]) | json_values,
            "replicas": st.sampled_from([1, 0, -1, "all", "All", True, 2.0]) | json_values,
            "nodeSelector": st.dictionaries(
                st.text(max_size=10), st.text(max_size=10) | json_values, max_size=3
            )
            | json_values,
            "other": json_values,
        },
    )
    | json_values
)


@settings(max_examples=300, deadline=None)
@given(spec=specs)
def test_parse_spec_raises_only_invalid_spec(spec: object) -> None:
    try:
        parsed = parse_spec(spec)
    except InvalidSpec:
        return
    assert parsed.replicas == "all" or (isinstance(parsed.replicas, int) and parsed.replicas >= 1)
