"""locality.kube and locality.informer against the fake API server (real kubernetes client over HTTP)."""

from __future__ import annotations

import asyncio
import contextlib
import random
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from locality.informer import Informer
from locality.kube import Conflict, Gone, Kube, KubeError, NotFound, WatchEvent
from tests.fixtures.fakekube import FakeKube
from tests.fixtures.polling import eventually


@contextlib.asynccontextmanager
async def running(informer: Informer) -> AsyncIterator[Informer]:
    task = asyncio.create_task(informer.run())
    try:
        await asyncio.wait_for(informer.synced.wait(), 10)
        yield informer
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def fast_informer(kube: Kube, kind: Any, **kwargs: Any) -> Informer:
    return Informer(kube, kind, backoff_initial=0.01, backoff_max=0.05, rng=random.Random(7), **kwargs)


# --- the edge -----------------------------------------------------------------------------


def test_connect_without_kubeconfig_outside_a_cluster_is_standalone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    assert Kube.connect(None) is None


def test_connect_with_a_missing_kubeconfig_is_a_clear_error(tmp_path: Any) -> None:
    with pytest.raises(KubeError, match="kubeconfig"):
        Kube.connect(str(tmp_path / "nope"))


async def test_list_returns_wire_dicts_and_resource_version(fake_kube: FakeKube, kube: Kube) -> None:
    fake_kube.add_node("gpu-1", labels={"pool": "gpu"})
    fake_kube.add_node("cpu-1", labels={"pool": "cpu"})
    items, rv = await kube.list("nodes", label_selector="pool=gpu")
    assert [n["metadata"]["name"] for n in items] == ["gpu-1"]
    assert items[0]["status"]["conditions"][0]["type"] == "Ready"  # camelCase, as on the wire
    assert int(rv) >= int(items[0]["metadata"]["resourceVersion"])


async def test_list_pods_by_node_field_selector(fake_kube: FakeKube, kube: Kube) -> None:
    fake_kube.add_pod("a", "p1", node_name="n1")
    fake_kube.add_pod("b", "p2", node_name="n2")
    fake_kube.add_pod("a", "p3")
    items, _ = await kube.list("pods", field_selector="spec.nodeName=n1")
    assert [(p["metadata"]["namespace"], p["metadata"]["name"]) for p in items] == [("a", "p1")]
    assert (await kube.get("pods", "p3", "a"))["status"]["phase"] == "Pending"


async def test_merge_patch_sets_and_removes_only_named_keys(fake_kube: FakeKube, kube: Kube) -> None:
    fake_kube.add_node("n1", labels={"keep": "1", "drop": "x"}, annotations={"other": "y"})
    node = await kube.patch_node_metadata(
        "n1", labels={"model-locality.io/m.1234abcd": "ready", "drop": None}, annotations={"a": "b"}
    )
    assert node["metadata"]["labels"] == {"keep": "1", "model-locality.io/m.1234abcd": "ready"}
    assert node["metadata"]["annotations"] == {"other": "y", "a": "b"}
    assert fake_kube.get("node", "n1")["metadata"]["labels"] == node["metadata"]["labels"]
    assert [r.content_type for r in fake_kube.writes()] == ["application/merge-patch+json"]


async def test_patch_with_nothing_to_change_writes_nothing(fake_kube: FakeKube, kube: Kube) -> None:
    fake_kube.add_node("n1")
    await kube.patch_node_metadata("n1")
    assert fake_kube.writes() == []


async def test_not_found_maps_to_our_error_with_the_cause_chained(kube: Kube) -> None:
    with pytest.raises(NotFound) as caught:
        await kube.get("nodes", "missing")
    assert caught.value.status == 404
    assert caught.value.__cause__ is not None
    with pytest.raises(NotFound):
        await kube.patch_node_metadata("missing", labels={"a": "b"})


async def test_create_existing_distribution_is_conflict(kube: Kube) -> None:
    body = {"metadata": {"name": "d1"}, "spec": {"uri": "s3://b/m", "replicas": 2}}
    created = await kube.create_distribution(body)
    assert created["kind"] == "ModelDistribution"
    with pytest.raises(Conflict) as caught:
        await kube.create_distribution(body)
    assert caught.value.status == 409


async def test_distribution_status_patch_touches_only_status(fake_kube: FakeKube, kube: Kube) -> None:
    await kube.create_distribution({"metadata": {"name": "d1"}, "spec": {"uri": "s3://b/m"}})
    patched = await kube.patch_distribution_status("d1", {"targets": ["n1"], "ready": 0})
    patched = await kube.patch_distribution_status("d1", {"ready": 1})
    assert patched["status"] == {"targets": ["n1"], "ready": 1}
    assert patched["spec"] == {"uri": "s3://b/m"}
    assert patched["metadata"]["generation"] == 1  # a status write is not a spec change
    await kube.delete_distribution("d1")
    with pytest.raises(NotFound):
        await kube.delete_distribution("d1")


async def test_injected_500_is_a_kube_error_with_status(fake_kube: FakeKube, kube: Kube) -> None:
    fake_kube.fail_next(1, path="/api/v1/nodes")
    with pytest.raises(KubeError) as caught:
        await kube.list("nodes")
    assert caught.value.status == 500
    assert (await kube.list("nodes"))[0] == []


async def test_hanging_request_times_out_as_kube_error(fake_kube: FakeKube, kube: Kube) -> None:
    fake_kube.hang_next(1, seconds=5.0, path="/api/v1/nodes")
    with pytest.raises(KubeError) as caught:
        await kube.list("nodes")
    assert caught.value.status is None  # no answer at all: a transport error


async def test_watch_streams_events_in_order(fake_kube: FakeKube, kube: Kube) -> None:
    _, rv = await kube.list("nodes")
    seen: list[tuple[str, str]] = []
    stream = kube.watch("nodes", resource_version=rv, timeout_seconds=30)

    async def consume() -> None:
        async for event in stream:
            if event.type != "BOOKMARK":
                seen.append((event.type, event.object["metadata"]["name"]))
            if len(seen) == 3:
                return

    task = asyncio.create_task(consume())
    await eventually(lambda: fake_kube.open_watches("nodes") == 1)
    fake_kube.add_node("n1")
    await kube.patch_node_metadata("n1", labels={"a": "b"})
    fake_kube.delete("node", "n1")
    await asyncio.wait_for(task, 10)
    await stream.aclose()
    assert seen == [("ADDED", "n1"), ("MODIFIED", "n1"), ("DELETED", "n1")]


async def test_watch_from_a_compacted_version_raises_gone(fake_kube: FakeKube, kube: Kube) -> None:
    _, rv = await kube.list("nodes")
    fake_kube.add_node("n1")
    fake_kube.compact()
    with pytest.raises(Gone) as caught:
        async for _ in kube.watch("nodes", resource_version=rv, timeout_seconds=5):
            pass
    assert caught.value.status == 410


async def test_dropped_watch_raises_kube_error(fake_kube: FakeKube, kube: Kube) -> None:
    _, rv = await kube.list("nodes")

    async def consume() -> list[WatchEvent]:
        return [event async for event in kube.watch("nodes", resource_version=rv, timeout_seconds=30)]

    task = asyncio.create_task(consume())
    await eventually(lambda: fake_kube.open_watches() == 1)
    assert fake_kube.drop_watches() == 1
    with pytest.raises(KubeError):
        await asyncio.wait_for(task, 10)


async def test_cancelled_watch_stops_its_thread(fake_kube: FakeKube, kube: Kube) -> None:
    _, rv = await kube.list("nodes")

    async def consume() -> None:
        async with contextlib.aclosing(kube.watch("nodes", resource_version=rv, timeout_seconds=60)) as s:
            async for _ in s:
                pass

    task = asyncio.create_task(consume())
    await eventually(lambda: fake_kube.open_watches() == 1)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    assert not [t for t in threading.enumerate() if t.name.startswith("kube-watch")]
    await eventually(lambda: fake_kube.open_watches() == 0)


async def test_cancel_while_the_watch_request_hangs(fake_kube: FakeKube, kube: Kube) -> None:
    _, rv = await kube.list("nodes")
    fake_kube.hang_next(1, seconds=2, watch=True)  # short: the worker thread waits it out at teardown

    async def consume() -> None:
        async with contextlib.aclosing(kube.watch("nodes", resource_version=rv, timeout_seconds=60)) as s:
            async for _ in s:
                pass

    task = asyncio.create_task(consume())
    await eventually(lambda: any(r.is_watch for r in fake_kube.requests))
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.wait_for(task, 5)
    assert task.cancelled()


# --- the informer -------------------------------------------------------------------------


def recorder() -> tuple[list[tuple[str, str]], Callable[[str, dict[str, Any]], Awaitable[None]]]:
    events: list[tuple[str, str]] = []

    async def on_event(kind: str, obj: dict[str, Any]) -> None:
        events.append((kind, obj["metadata"]["name"]))

    return events, on_event


async def test_informer_lists_then_follows_events(fake_kube: FakeKube, kube: Kube) -> None:
    fake_kube.add_pod("ns", "before", node_name="n1")
    fake_kube.add_pod("ns", "elsewhere", node_name="n2")
    events, on_event = recorder()
    informer = fast_informer(kube, "pods", field_selector="spec.nodeName=n1", on_event=on_event)
    async with running(informer):
        assert set(informer.items) == {"ns/before"}
        await eventually(lambda: fake_kube.open_watches("pods") == 1)
        fake_kube.add_pod("ns", "after", node_name="n1")
        fake_kube.set_pod_phase("ns", "after", "Running")
        fake_kube.delete("pod", "before", "ns")
        await eventually(lambda: set(informer.items) == {"ns/after"})
        await eventually(lambda: informer.items["ns/after"]["status"]["phase"] == "Running")
    assert events == [("ADDED", "before"), ("ADDED", "after"), ("MODIFIED", "after"), ("DELETED", "before")]


async def test_informer_survives_a_500_burst(fake_kube: FakeKube, kube: Kube) -> None:
    errors: list[Exception] = []
    fake_kube.fail_next(3, path="/api/v1/nodes")
    informer = fast_informer(kube, "nodes", on_error=errors.append)
    async with running(informer):
        fake_kube.add_node("n1")
        await eventually(lambda: "n1" in informer.items)
    assert informer.errors == 3
    assert [getattr(e, "status", None) for e in errors] == [500, 500, 500]


async def test_informer_relists_after_a_dropped_watch_and_emits_deletes(
    fake_kube: FakeKube, kube: Kube
) -> None:
    fake_kube.add_node("stays")
    fake_kube.add_node("goes")
    events, on_event = recorder()
    informer = fast_informer(kube, "nodes", on_event=on_event)
    async with running(informer):
        await eventually(lambda: fake_kube.open_watches("nodes") == 1)
        # While the watch is down and cannot come back, the world changes.
        fake_kube.fail_next(2, path="/api/v1/nodes")
        fake_kube.drop_watches()
        fake_kube.delete("node", "goes")
        fake_kube.add_node("new")
        await eventually(lambda: set(informer.items) == {"stays", "new"})
    assert ("DELETED", "goes") in events
    assert ("ADDED", "new") in events
    assert events[:2] == [("ADDED", "goes"), ("ADDED", "stays")]


async def test_informer_relists_after_gone(fake_kube: FakeKube, kube: Kube) -> None:
    errors: list[Exception] = []
    informer = fast_informer(kube, "modeldistributions", on_error=errors.append)
    async with running(informer):
        await eventually(lambda: fake_kube.open_watches() == 1)
        # No await between these: the informer cannot see d1 before its version is compacted,
        # so resuming after the clean end answers 410 and it must list again.
        fake_kube.end_watches()
        fake_kube.create("distribution", {"metadata": {"name": "d1"}, "spec": {}})
        fake_kube.compact()
        await eventually(lambda: "d1" in informer.items)
    assert [type(e) for e in errors] == [Gone]


async def test_informer_resumes_after_a_clean_watch_end_without_listing(
    fake_kube: FakeKube, kube: Kube
) -> None:
    informer = fast_informer(kube, "nodes")
    async with running(informer):
        await eventually(lambda: fake_kube.open_watches() == 1)
        fake_kube.end_watches()
        fake_kube.add_node("n1")
        await eventually(lambda: "n1" in informer.items)
    lists = [r for r in fake_kube.requests if r.path == "/api/v1/nodes" and not r.is_watch]
    assert len(lists) == 1
    assert informer.errors == 0


async def test_informer_handler_errors_do_not_stop_it(fake_kube: FakeKube, kube: Kube) -> None:
    calls: list[str] = []

    def on_event(kind: str, obj: dict[str, Any]) -> None:
        calls.append(obj["metadata"]["name"])
        raise RuntimeError("handler bug")

    informer = fast_informer(kube, "nodes", on_event=on_event)
    async with running(informer):
        await eventually(lambda: fake_kube.open_watches() == 1)
        fake_kube.add_node("n1")
        fake_kube.add_node("n2")
        await eventually(lambda: calls == ["n1", "n2"])
    assert set(informer.items) == {"n1", "n2"}


async def test_informer_lists_again_at_each_resync(fake_kube: FakeKube, kube: Kube) -> None:
    fake_kube.add_node("n1")
    events, on_event = recorder()
    informer = fast_informer(kube, "nodes", on_event=on_event, resync_seconds=0.3)

    def lists() -> int:
        return len([r for r in fake_kube.requests if r.path == "/api/v1/nodes" and not r.is_watch])

    async with running(informer):
        await eventually(lambda: lists() >= 3)
    assert events == [("ADDED", "n1")]  # a re-list of an unchanged world emits nothing
    assert informer.errors == 0
