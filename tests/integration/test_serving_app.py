"""The serving app over HTTP with the real all-MiniLM-L6-v2 (loaded once for the module)."""

from __future__ import annotations

import asyncio
import base64
import math
import struct
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from prometheus_client.parser import text_string_to_metric_families

from serving.app import STATE, Deps, create_app, drain
from serving.config import Settings
from serving.startup import Embedder, StartupError
from tests.fixtures.polling import eventually as until

Client = TestClient[Any, Any]
MakeClient = Callable[..., Awaitable[Client]]


@pytest.fixture(scope="module")
def embedder(minilm: Path) -> Embedder:
    from serving import model

    return model.load(minilm, device="cpu")


class Gated:
    """The real model behind a gate: ``embed`` blocks while the gate is closed (test-controlled)."""

    def __init__(self, inner: Embedder, *, closed: bool = False) -> None:
        self.inner = inner
        self.dimension = inner.dimension
        self.device = inner.device
        self.open = threading.Event()
        if not closed:
            self.open.set()
        self.entered = threading.Event()
        self.calls: list[int] = []
        self.garbage = False

    def embed(self, texts: Sequence[str]) -> tuple[list[list[float]], list[int]]:
        self.calls.append(len(texts))
        self.entered.set()
        if not self.open.wait(timeout=30):
            raise RuntimeError("test gate never opened")
        if self.garbage:  # what a model with damaged weights or a sick GPU might answer
            return self.inner.embed(["something else entirely"] * len(texts))
        return self.inner.embed(texts)


def settings(minilm: Path, **changes: Any) -> Settings:
    return replace(Settings(model_dir=minilm, model_name="all-MiniLM-L6-v2", max_wait=0.001), **changes)


def deps(minilm: Path, model: Embedder) -> Deps:
    async def resolve() -> Path:
        return minilm

    return Deps(resolve=resolve, load=lambda _: model)


async def ready_client(aiohttp_client: MakeClient, s: Settings, d: Deps) -> Client:
    client = await aiohttp_client(create_app(s, d))

    async def is_ready() -> bool:
        return (await client.get("/readyz")).status == 200

    await until(is_ready)
    return client


async def metric(client: Client, name: str, labels: dict[str, str] | None = None) -> float:
    text = await (await client.get("/metrics")).text()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and (labels is None or labels.items() <= sample.labels.items()):
                return float(sample.value)
    raise AssertionError(f"no sample {name} {labels}")


async def embed(client: Client, texts: list[str]) -> list[list[float]]:
    resp = await client.post("/v1/embeddings", json={"input": texts, "model": "all-MiniLM-L6-v2"})
    assert resp.status == 200, await resp.text()
    body = await resp.json()
    assert [d["index"] for d in body["data"]] == list(range(len(texts)))
    return [d["embedding"] for d in body["data"]]


def cos(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True))  # vectors are unit length


async def test_similar_sentences_are_closer_than_unrelated(
    aiohttp_client: MakeClient, minilm: Path, embedder: Embedder
) -> None:
    client = await ready_client(aiohttp_client, settings(minilm), deps(minilm, embedder))
    cat, kitten, tax = await embed(
        client, ["A cat sits on the mat.", "A kitten is resting on a rug.", "Quarterly tax filings are due."]
    )
    assert len(cat) == 384
    assert math.isclose(sum(x * x for x in cat), 1.0, rel_tol=1e-4)
    assert cos(cat, kitten) > cos(cat, tax) + 0.2
    resp = await client.post("/v1/embeddings", json={"input": "A cat sits on the mat."})
    body = await resp.json()
    assert body["object"] == "list" and body["model"] == "all-MiniLM-L6-v2"
    assert body["usage"]["prompt_tokens"] == body["usage"]["total_tokens"] > 2
    assert cos(body["data"][0]["embedding"], cat) > 0.9999


async def test_base64_encoding_matches_floats(
    aiohttp_client: MakeClient, minilm: Path, embedder: Embedder
) -> None:
    client = await ready_client(aiohttp_client, settings(minilm), deps(minilm, embedder))
    [floats] = await embed(client, ["hello there"])
    resp = await client.post("/v1/embeddings", json={"input": ["hello there"], "encoding_format": "base64"})
    raw = base64.b64decode((await resp.json())["data"][0]["embedding"])
    decoded = struct.unpack(f"<{len(raw) // 4}f", raw)
    assert max(abs(a - b) for a, b in zip(decoded, floats, strict=True)) < 1e-6


async def test_concurrent_requests_merge_into_one_batch(
    aiohttp_client: MakeClient, minilm: Path, embedder: Embedder
) -> None:
    gated = Gated(embedder)
    # A long max_wait and max_batch = the total inputs: the batch closes exactly when all arrived.
    s = settings(minilm, max_batch=8, max_wait=10.0)
    client = await ready_client(aiohttp_client, s, deps(minilm, gated))
    gated.calls.clear()
    texts = [[f"sentence number {i}"] for i in range(6)] + [["two at once", "in one request"]]
    results = await asyncio.gather(*(embed(client, t) for t in texts))
    assert [len(r) for r in results] == [1] * 6 + [2]
    assert gated.calls == [8]
    assert await metric(client, "model_locality_serving_batch_size_count") == 1
    assert await metric(client, "model_locality_serving_batch_size_sum") == 8
    # Batching does not mix answers up: each vector is the one its own text gets alone.
    [alone] = await embed(client, ["sentence number 3"])
    assert cos(results[3][0], alone) > 0.9999


async def test_readiness_flips_only_after_warm_up(
    aiohttp_client: MakeClient, minilm: Path, embedder: Embedder
) -> None:
    gated = Gated(embedder, closed=True)
    load_entered, load_gate = threading.Event(), threading.Event()

    def load(_: Path) -> Embedder:  # held by the test: the load gauge must cover the whole wait
        load_entered.set()
        if not load_gate.wait(timeout=30):
            raise RuntimeError("test gate never opened")
        return gated

    client = await aiohttp_client(create_app(settings(minilm), replace(deps(minilm, gated), load=load)))
    try:
        await until(lambda: is_set(load_entered))
        held_from = time.perf_counter()
        assert (await client.get("/readyz")).status == 503
        assert await metric(client, "model_locality_serving_startup_phase_seconds", {"phase": "load"}) == 0
        held = time.perf_counter() - held_from
    finally:
        load_gate.set()
    try:
        await until(lambda: is_set(gated.entered))  # warm-up is running
        assert (await client.get("/readyz")).status == 503
        assert (await client.get("/healthz")).status == 200  # alive while starting
        resp = await client.post("/v1/embeddings", json={"input": "too early"})
        assert resp.status == 503 and "not ready" in (await resp.json())["error"]["message"]
        # The load phase is over and its gauge covers at least the time the test held the load
        # (so it is above its initial 0); warm-up is not over.
        assert await metric(client, "model_locality_serving_startup_phase_seconds", {"phase": "load"}) >= held
        assert await metric(client, "model_locality_serving_startup_phase_seconds", {"phase": "warmup"}) == 0
        assert await metric(client, "model_locality_serving_ready") == 0
    finally:
        gated.open.set()

    async def is_ready() -> bool:
        return (await client.get("/readyz")).status == 200

    await until(is_ready)
    assert await metric(client, "model_locality_serving_startup_phase_seconds", {"phase": "warmup"}) > 0
    assert await metric(client, "model_locality_serving_ready") == 1


async def test_queue_full_answers_429_with_retry_after(
    aiohttp_client: MakeClient, minilm: Path, embedder: Embedder
) -> None:
    gated = Gated(embedder)
    s = settings(minilm, max_batch=1, max_queue=2, max_inputs=2)
    client = await ready_client(aiohttp_client, s, deps(minilm, gated))
    gated.open.clear()
    gated.entered.clear()
    first = asyncio.create_task(embed(client, ["occupies the model"]))
    try:
        await until(lambda: is_set(gated.entered))
        second = asyncio.create_task(embed(client, ["waits", "in the queue"]))
        await until(lambda: _depth(client, 2))
        resp = await client.post("/v1/embeddings", json={"input": "one too many"})
        assert resp.status == 429
        assert int(resp.headers["Retry-After"]) >= 1
        assert "queue full" in (await resp.json())["error"]["message"]
        assert await metric(client, "model_locality_serving_in_flight_requests") == 2
    finally:
        gated.open.set()
    assert len(await first) == 1 and len(await second) == 2
    assert await metric(client, "model_locality_serving_requests_total", {"code": "429"}) == 1
    assert len(await embed(client, ["room again"])) == 1


async def is_set(event: threading.Event) -> bool:
    return event.is_set()


async def _depth(client: Client, want: int) -> bool:
    return await metric(client, "model_locality_serving_queue_depth") == want


BAD_BODIES = {
    "not json": b"{not json",
    "json array": b'["a", "b"]',
    "missing input": b'{"model": "all-MiniLM-L6-v2"}',
    "unknown field": b'{"input": "a", "temperature": 1}',
    "null input": b'{"input": null}',
    "empty list": b'{"input": []}',
    "number input": b'{"input": 42}',
    "token ids": b'{"input": [101, 2023, 102]}',
    "nested token ids": b'{"input": [[101, 102]]}',
    "empty string": b'{"input": ["ok", "  "]}',
    "mixed types": b'{"input": ["ok", {"a": 1}]}',
    "too many inputs": b'{"input": ["x", "y", "z", "w", "v"]}',
    "too long input": b'{"input": "' + b"a" * 101 + b'"}',
    "bad encoding": b'{"input": "a", "encoding_format": "int8"}',
    "other dimensions": b'{"input": "a", "dimensions": 128}',
    "user not a string": b'{"input": "a", "user": 7}',
    "bad utf-8": b'{"input": "' + bytes([0xFF, 0xFE]) + b'"}',
}


async def test_bad_bodies_get_400_with_a_reason(
    aiohttp_client: MakeClient, minilm: Path, embedder: Embedder
) -> None:
    s = settings(minilm, max_inputs=4, max_chars=100)
    client = await ready_client(aiohttp_client, s, deps(minilm, embedder))
    for name, body in BAD_BODIES.items():
        resp = await client.post("/v1/embeddings", data=body, headers={"Content-Type": "application/json"})
        assert resp.status == 400, name
        error = (await resp.json())["error"]  # OpenAI's shape on /v1/ routes
        assert error["type"] == "invalid_request_error", name
        assert error["message"] and "Traceback" not in error["message"], name
    assert await metric(client, "model_locality_serving_requests_total", {"code": "400"}) == len(BAD_BODIES)
    assert 'code="500"' not in await (await client.get("/metrics")).text()


async def test_other_model_name_is_404_and_size_limit_413(
    aiohttp_client: MakeClient, minilm: Path, embedder: Embedder
) -> None:
    s = settings(minilm, max_body_bytes=4096)
    client = await ready_client(aiohttp_client, s, deps(minilm, embedder))
    resp = await client.post("/v1/embeddings", json={"input": "a", "model": "text-embedding-3-small"})
    assert resp.status == 404 and "all-MiniLM-L6-v2" in (await resp.json())["error"]["message"]
    resp = await client.post("/v1/embeddings", json={"input": "a" * 5000})
    assert resp.status == 413
    listed = await (await client.get("/v1/models")).json()
    assert [m["id"] for m in listed["data"]] == ["all-MiniLM-L6-v2"]


async def test_healthz_fails_when_the_model_answers_garbage(
    aiohttp_client: MakeClient, minilm: Path, embedder: Embedder
) -> None:
    gated = Gated(embedder)
    client = await ready_client(aiohttp_client, settings(minilm), deps(minilm, gated))
    resp = await client.get("/healthz")
    assert resp.status == 200 and (await resp.json())["status"] == "ok"
    gated.garbage = True
    resp = await client.get("/healthz")
    assert resp.status == 503
    assert "drifted" in (await resp.json())["error"]
    assert await metric(client, "model_locality_serving_healthy") == 0
    gated.garbage = False
    assert (await client.get("/healthz")).status == 200


class NaNModel:
    """Loads fine and answers NaN: what a broken fp16 overflow looks like."""

    dimension = 4
    device = "cpu"

    def embed(self, texts: Sequence[str]) -> tuple[list[list[float]], list[int]]:
        return [[math.nan] * 4 for _ in texts], [1] * len(texts)


async def test_nan_at_warm_up_fails_start_up(aiohttp_client: MakeClient, minilm: Path) -> None:
    fatal: list[str] = []
    d = replace(deps(minilm, NaNModel()), on_fatal=fatal.append)
    client = await aiohttp_client(create_app(settings(minilm), d))

    async def failed() -> bool:
        return bool(fatal)

    await until(failed)
    assert "NaN" in fatal[0]
    for probe in ("/readyz", "/healthz"):
        resp = await client.get(probe)
        assert resp.status == 503 and "NaN" in (await resp.json())["error"]
    assert client.app is not None and client.app[STATE].loaded is None


async def test_wait_for_cache_failure_is_reported(aiohttp_client: MakeClient, minilm: Path) -> None:
    fatal: list[str] = []

    async def resolve() -> Path:
        raise StartupError("agent says: fetch failed (403 from S3)")

    d = Deps(resolve=resolve, load=lambda _: NaNModel(), on_fatal=fatal.append)
    client = await aiohttp_client(create_app(settings(minilm), d))

    async def failed() -> bool:
        return bool(fatal)

    await until(failed)
    assert fatal == ["agent says: fetch failed (403 from S3)"]
    assert (await client.get("/readyz")).status == 503


async def test_drain_refuses_new_work_and_lets_admitted_requests_finish(
    aiohttp_client: MakeClient, minilm: Path, embedder: Embedder
) -> None:
    gated = Gated(embedder)
    client = await ready_client(aiohttp_client, settings(minilm), deps(minilm, gated))
    assert client.app is not None
    gated.open.clear()
    gated.entered.clear()
    admitted = asyncio.create_task(embed(client, ["admitted before the signal"]))
    try:
        await until(lambda: is_set(gated.entered))
        draining = asyncio.create_task(drain(client.app, grace_seconds=30))
        await until(lambda: _status(client, "/readyz", 503))
        resp = await client.post("/v1/embeddings", json={"input": "after the signal"})
        assert resp.status == 503 and "shutting down" in (await resp.json())["error"]["message"]
        assert not draining.done()  # still waiting for the admitted request
    finally:
        gated.open.set()
    assert len(await admitted) == 1
    await asyncio.wait_for(draining, 10)


async def _status(client: Client, path: str, want: int) -> bool:
    return (await client.get(path)).status == want
