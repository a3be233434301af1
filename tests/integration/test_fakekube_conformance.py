"""One conformance suite for the fake and the real API server, driven by the real ``kubernetes``
client (typed API objects, Watch): the fake is trusted only where both answer the same.

Tests taking ``cluster`` run on both (``[fake]``, ``[real]``; the real one skips without
``$KUBEBUILDER_ASSETS``); tests taking ``fake_kube`` exercise what only the fake can do
(fault injection, the request log, forgetting history on demand).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import urllib3
from kubernetes import client, watch

from tests.fixtures.clusters import Cluster, FakeCluster, RealCluster
from tests.fixtures.fakekube import FakeKube

GROUP, VERSION, PLURAL = "model-locality.io", "v1alpha1", "modeldistributions"
MERGE = "application/merge-patch+json"
STRATEGIC = "application/strategic-merge-patch+json"


# The real parameter is marked by hand: its fixtures are looked up at run time, so the plugin
# cannot see that it needs real_kube (a skip of it must fail a run that installed the kit).
@pytest.fixture(params=["fake", pytest.param("real", marks=pytest.mark.realkube)])
def cluster(request: pytest.FixtureRequest) -> Iterator[Cluster]:
    if request.param == "fake":
        yield FakeCluster(request.getfixturevalue("fake_kube"), request.getfixturevalue("kube_client"))
        return
    real = request.getfixturevalue("real_kube_crd")
    real_cluster = RealCluster(real, request.getfixturevalue("real_kube_client"))
    real_cluster.reset()
    yield real_cluster
    real_cluster.reset()


@pytest.fixture()
def core(cluster: Cluster) -> Any:
    return client.CoreV1Api(cluster.api)


@pytest.fixture()
def custom(cluster: Cluster) -> Any:
    return client.CustomObjectsApi(cluster.api)


@pytest.fixture()
def fake_core(kube_client: Any) -> Any:
    return client.CoreV1Api(kube_client)


def node_body(name: str, labels: dict[str, str] | None = None) -> Any:
    return client.V1Node(metadata=client.V1ObjectMeta(name=name, labels=labels or {}))


def names(items: Any) -> list[str]:
    return [item.metadata.name for item in items]


def watch_until(stream: Any, count: int) -> list[tuple[str, str]]:
    seen = []
    for event in stream:
        seen.append((event["type"], event["object"].metadata.name))
        if len(seen) == count:
            break
    return seen


def status_of(call: Any, *args: Any, **kwargs: Any) -> int:
    with pytest.raises(client.ApiException) as caught:
        call(*args, **kwargs)
    return int(caught.value.status)


# --- core/v1 -----------------------------------------------------------------------------


def test_node_create_get_list_delete(core: Any) -> None:
    created = core.create_node(node_body("n1", {"pool": "gpu"}))
    assert created.metadata.uid and created.metadata.creation_timestamp
    assert created.metadata.resource_version
    assert core.read_node("n1").metadata.labels == {"pool": "gpu"}
    listed = core.list_node()
    assert names(listed.items) == ["n1"]
    assert int(listed.metadata.resource_version) >= int(created.metadata.resource_version)
    core.delete_node("n1")
    assert core.list_node().items == []
    assert status_of(core.read_node, "n1") == 404


def test_create_existing_node_is_409_already_exists(core: Any) -> None:
    core.create_node(node_body("n1"))
    with pytest.raises(client.ApiException) as caught:
        core.create_node(node_body("n1"))
    assert caught.value.status == 409
    assert "AlreadyExists" in caught.value.body


@pytest.mark.parametrize(
    "content_type", [pytest.param(MERGE, id="merge"), pytest.param(STRATEGIC, id="strategic")]
)
def test_patch_node_labels(core: Any, cluster: Cluster, content_type: str) -> None:
    cluster.add_node("n1", labels={"keep": "1", "drop": "x"}, annotations={"a": "1"})
    before = cluster.node("n1")
    patched = core.patch_node(
        "n1", {"metadata": {"labels": {"new": "2", "drop": None}}}, _content_type=content_type
    )
    assert patched.metadata.labels == {"keep": "1", "new": "2"}
    assert patched.metadata.annotations == {"a": "1"}
    assert int(patched.metadata.resource_version) > int(before["metadata"]["resourceVersion"])


@pytest.mark.parametrize("content_type", [MERGE, STRATEGIC, "application/json-patch+json"])
def test_the_client_sends_the_patch_type_asked_for(
    fake_core: Any, fake_kube: FakeKube, content_type: str
) -> None:
    fake_kube.add_node("n1")
    body: Any = {"metadata": {"labels": {"a": "1"}}}
    if content_type.startswith("application/json-patch"):
        body = [{"op": "add", "path": "/metadata/labels/a", "value": "1"}]
    fake_core.patch_node("n1", body, _content_type=content_type)
    assert fake_kube.requests[-1].content_type == content_type


def test_json_patch_of_node_labels(core: Any, cluster: Cluster) -> None:
    cluster.add_node("n1", labels={"a": "1"})
    ops = [
        {"op": "add", "path": "/metadata/labels/b", "value": "2"},
        {"op": "remove", "path": "/metadata/labels/a"},
    ]
    assert core.patch_node("n1", ops).metadata.labels == {"b": "2"}


def test_json_patch_test_op_failure_is_422(core: Any, cluster: Cluster) -> None:
    cluster.add_node("n1", labels={"a": "1"})
    ops = [{"op": "test", "path": "/metadata/labels/a", "value": "2"}]
    assert status_of(core.patch_node, "n1", ops) == 422


def test_strategic_merge_replaces_node_taints_list(core: Any, cluster: Cluster) -> None:
    """Node taints have no patch strategy: a strategic merge patch replaces the list."""
    cluster.add_node("n1")
    first = {"key": "a", "value": "1", "effect": "NoSchedule"}
    second = {"key": "b", "value": "2", "effect": "NoSchedule"}
    core.patch_node("n1", {"spec": {"taints": [first]}}, _content_type=STRATEGIC)
    patched = core.patch_node("n1", {"spec": {"taints": [second]}}, _content_type=STRATEGIC)
    assert [(t.key, t.value) for t in patched.spec.taints] == [("b", "2")]


def test_node_spec_change_leaves_generation_alone(core: Any, cluster: Cluster) -> None:
    """Nodes do not use metadata.generation (the real server never sets it)."""
    cluster.add_node("n1")
    labelled = core.patch_node("n1", {"metadata": {"labels": {"a": "b"}}})
    cordoned = core.patch_node("n1", {"spec": {"unschedulable": True}})
    assert cordoned.spec.unschedulable is True
    assert labelled.metadata.generation == cordoned.metadata.generation


def test_main_resource_write_ignores_status(core: Any, cluster: Cluster) -> None:
    cluster.add_node("n1")
    core.patch_node("n1", {"status": {"conditions": [{"type": "Ready", "status": "False"}]}})
    ready = [c for c in cluster.node("n1")["status"]["conditions"] if c["type"] == "Ready"]
    assert ready[0]["status"] == "True"


def test_node_status_subresource_keeps_spec_but_takes_metadata(core: Any, cluster: Cluster) -> None:
    """Node /status ignores spec, yet (the real server's node status strategy) applies label
    changes: status writers must not send metadata they do not mean."""
    cluster.add_node("n1", labels={"a": "1"})
    body = {"metadata": {"labels": {"a": "2"}}, "spec": {"unschedulable": True}}
    after = core.patch_node_status("n1", {**body, "status": {"allocatable": {"pods": "7"}}})
    assert after.status.allocatable["pods"] == "7"
    assert not after.spec.unschedulable
    assert after.metadata.labels == {"a": "2"}


def test_distribution_status_subresource_keeps_metadata(custom: Any) -> None:
    custom.create_cluster_custom_object(GROUP, VERSION, PLURAL, distribution("d1"))
    body = {"metadata": {"labels": {"team": "other"}}, "status": {"ready": 1}}
    after = custom.patch_cluster_custom_object_status(GROUP, VERSION, PLURAL, "d1", body)
    assert after["status"] == {"ready": 1} and after["metadata"]["labels"] == {"team": "ml"}


def test_list_pods_by_node_field_selector(core: Any, cluster: Cluster) -> None:
    cluster.add_pod("a", "p1", node_name="n1")
    cluster.add_pod("b", "p2", node_name="n1")
    cluster.add_pod("a", "p3", node_name="n2")
    cluster.add_pod("a", "pending")
    assert names(core.list_pod_for_all_namespaces(field_selector="spec.nodeName=n1").items) == ["p1", "p2"]
    assert names(core.list_pod_for_all_namespaces(field_selector="spec.nodeName=").items) == ["pending"]
    assert names(core.list_namespaced_pod("a", field_selector="spec.nodeName!=n1").items) == ["p3", "pending"]
    assert names(core.list_namespaced_pod("a", field_selector="metadata.name=p1").items) == ["p1"]


def test_bind_and_phase_show_through_the_client(core: Any, cluster: Cluster) -> None:
    cluster.add_pod("ns", "p", annotations={"model-locality.io/models": "s3://b/m"})
    cluster.bind_pod("ns", "p", "n1")
    cluster.set_pod_phase("ns", "p", "Running")
    pod = core.read_namespaced_pod("p", "ns")
    assert (pod.spec.node_name, pod.status.phase) == ("n1", "Running")
    assert pod.metadata.annotations == {"model-locality.io/models": "s3://b/m"}


@pytest.mark.parametrize(
    ("selector", "expected"),
    [
        pytest.param("pool=gpu", ["a", "b"], id="equals"),
        pytest.param("pool!=gpu", ["c", "d"], id="not-equals"),
        pytest.param("zone", ["a", "c"], id="exists"),
        pytest.param("!zone", ["b", "d"], id="not-exists"),
        pytest.param("zone in (z1,z2)", ["a", "c"], id="in"),
        pytest.param("zone notin (z1)", ["b", "c", "d"], id="notin"),
        pytest.param("pool=gpu,zone", ["a"], id="and"),
    ],
)
def test_label_selectors(core: Any, selector: str, expected: list[str]) -> None:
    core.create_node(node_body("a", {"pool": "gpu", "zone": "z1"}))
    core.create_node(node_body("b", {"pool": "gpu"}))
    core.create_node(node_body("c", {"pool": "cpu", "zone": "z2"}))
    core.create_node(node_body("d"))
    assert names(core.list_node(label_selector=selector).items) == expected


def test_node_field_selectors(core: Any) -> None:
    core.create_node(node_body("a"))
    core.create_node(node_body("b"))
    core.patch_node("b", {"spec": {"unschedulable": True}})
    assert names(core.list_node(field_selector="metadata.name=a").items) == ["a"]
    assert names(core.list_node(field_selector="spec.unschedulable=true").items) == ["b"]


@pytest.mark.parametrize(
    ("kind", "selector"),
    [
        pytest.param("field", "spec.bogus=1", id="unknown-field"),
        pytest.param("label", "a in (", id="bad-label-syntax"),
    ],
)
def test_bad_selector_is_400(core: Any, kind: str, selector: str) -> None:
    assert status_of(core.list_node, **{f"{kind}_selector": selector}) == 400


def test_stale_resource_version_is_409_conflict(core: Any, cluster: Cluster) -> None:
    cluster.add_node("n1")
    stale = core.read_node("n1")
    core.patch_node("n1", {"metadata": {"labels": {"a": "b"}}})
    stale.metadata.labels = {"c": "d"}
    assert status_of(core.replace_node, "n1", stale) == 409
    body = {"metadata": {"resourceVersion": stale.metadata.resource_version, "labels": {"x": "y"}}}
    assert status_of(core.patch_node, "n1", body, _content_type=MERGE) == 409
    assert cluster.node("n1")["metadata"]["labels"] == {"a": "b"}


# --- the ModelDistribution custom resource ------------------------------------------------


def distribution(name: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "ModelDistribution",
        "metadata": {"name": name, "labels": {"team": "ml"}},
        "spec": {"uri": "s3://b/m", **spec},
    }


def test_distribution_crud_and_status_subresource(custom: Any, cluster: Cluster) -> None:
    body = {**distribution("d1", replicas=2), "status": {"ready": 5}}
    created = custom.create_cluster_custom_object(GROUP, VERSION, PLURAL, body)
    assert "status" not in created  # create ignores status (status subresource)
    assert created["metadata"]["generation"] == 1
    assert custom.get_cluster_custom_object(GROUP, VERSION, PLURAL, "d1")["spec"]["replicas"] == 2
    listed = custom.list_cluster_custom_object(GROUP, VERSION, PLURAL, label_selector="team=ml")
    assert listed["kind"] == "ModelDistributionList" and names_of(listed) == ["d1"]
    after = custom.patch_cluster_custom_object_status(
        GROUP, VERSION, PLURAL, "d1", {"status": {"targets": ["n1"]}, "spec": {"replicas": 9}}
    )
    assert after["status"] == {"targets": ["n1"]} and after["spec"]["replicas"] == 2
    assert after["metadata"]["generation"] == 1  # a status write is not a spec change
    after = custom.patch_cluster_custom_object(
        GROUP, VERSION, PLURAL, "d1", {"spec": {"replicas": 3}, "status": {"targets": []}}
    )
    assert after["status"] == {"targets": ["n1"]} and after["spec"]["replicas"] == 3
    assert after["metadata"]["generation"] == 2
    custom.delete_cluster_custom_object(GROUP, VERSION, PLURAL, "d1")
    assert cluster.distributions() == []
    assert status_of(custom.get_cluster_custom_object, GROUP, VERSION, PLURAL, "d1") == 404


def test_distribution_json_patch_and_no_strategic_merge(custom: Any) -> None:
    custom.create_cluster_custom_object(GROUP, VERSION, PLURAL, distribution("d1", replicas=2))
    ops = [{"op": "replace", "path": "/spec/replicas", "value": 4}]
    json_patch = "application/json-patch+json"
    after = custom.patch_cluster_custom_object(GROUP, VERSION, PLURAL, "d1", ops, _content_type=json_patch)
    assert after["spec"]["replicas"] == 4
    # Custom resources have no Go struct tags to merge by: strategic merge is refused.
    patch = {"spec": {"replicas": 5}}
    call = custom.patch_cluster_custom_object
    assert status_of(call, GROUP, VERSION, PLURAL, "d1", patch, _content_type=STRATEGIC) == 415


def test_distribution_stale_update_is_409(custom: Any) -> None:
    custom.create_cluster_custom_object(GROUP, VERSION, PLURAL, distribution("d1"))
    stale = custom.get_cluster_custom_object(GROUP, VERSION, PLURAL, "d1")
    custom.patch_cluster_custom_object_status(GROUP, VERSION, PLURAL, "d1", {"status": {"ready": 1}})
    stale["status"] = {"ready": 2}
    call = custom.replace_cluster_custom_object_status
    assert status_of(call, GROUP, VERSION, PLURAL, "d1", stale) == 409


def names_of(listing: dict[str, Any]) -> list[str]:
    return [item["metadata"]["name"] for item in listing["items"]]


# --- watch --------------------------------------------------------------------------------


def test_watch_sees_added_modified_deleted_in_order(core: Any) -> None:
    rv = core.list_node().metadata.resource_version
    core.create_node(node_body("n1"))
    core.patch_node("n1", {"metadata": {"labels": {"a": "b"}}})
    core.delete_node("n1")
    stream = watch.Watch().stream(core.list_node, resource_version=rv, timeout_seconds=5)
    assert watch_until(stream, 3) == [("ADDED", "n1"), ("MODIFIED", "n1"), ("DELETED", "n1")]


def test_watch_resumes_from_a_resource_version(core: Any) -> None:
    middle = core.create_node(node_body("n1")).metadata.resource_version
    core.create_node(node_body("n2"))
    stream = watch.Watch().stream(core.list_node, resource_version=middle, timeout_seconds=5)
    assert watch_until(stream, 1) == [("ADDED", "n2")]


def test_watch_without_version_starts_with_current_state(core: Any) -> None:
    core.create_node(node_body("n1"))
    core.create_node(node_body("n2"))
    stream = watch.Watch().stream(core.list_node, timeout_seconds=5)
    assert sorted(watch_until(stream, 2)) == [("ADDED", "n1"), ("ADDED", "n2")]


def test_watch_with_label_selector_sees_leaving_as_deleted(core: Any) -> None:
    rv = core.list_node().metadata.resource_version
    core.create_node(node_body("n1", {"pool": "gpu"}))
    core.create_node(node_body("other"))
    core.patch_node("n1", {"metadata": {"labels": {"pool": None}}})
    stream = watch.Watch().stream(
        core.list_node, resource_version=rv, label_selector="pool=gpu", timeout_seconds=5
    )
    assert watch_until(stream, 2) == [("ADDED", "n1"), ("DELETED", "n1")]


def test_watch_of_pods_on_a_node(core: Any, cluster: Cluster) -> None:
    rv = core.list_pod_for_all_namespaces().metadata.resource_version
    cluster.add_pod("ns", "p1")
    cluster.bind_pod("ns", "p1", "n1")
    cluster.add_pod("ns", "p2", node_name="n2")
    stream = watch.Watch().stream(
        core.list_pod_for_all_namespaces,
        resource_version=rv,
        field_selector="spec.nodeName=n1",
        timeout_seconds=5,
    )
    assert watch_until(stream, 1) == [("ADDED", "p1")]


def test_watch_of_distributions(custom: Any) -> None:
    rv = custom.list_cluster_custom_object(GROUP, VERSION, PLURAL)["metadata"]["resourceVersion"]
    custom.create_cluster_custom_object(GROUP, VERSION, PLURAL, distribution("d1"))
    stream = watch.Watch().stream(
        custom.list_cluster_custom_object, GROUP, VERSION, PLURAL, resource_version=rv, timeout_seconds=5
    )
    event = next(iter(stream))
    assert (event["type"], event["object"]["metadata"]["name"]) == ("ADDED", "d1")


def test_watch_from_an_expired_version_is_410(core: Any, cluster: Cluster) -> None:
    rv = cluster.expired_version()
    with pytest.raises(client.ApiException) as caught:
        # timeout_seconds disables the client's own retry-after-410, so the error surfaces.
        list(watch.Watch().stream(core.list_node, resource_version=rv, timeout_seconds=5))
    assert caught.value.status == 410
    assert "too old resource version" in str(caught.value.reason)


def test_watch_too_old_version_triggers_the_client_relist_path(fake_core: Any, fake_kube: FakeKube) -> None:
    """Without timeout_seconds, Watch retries once after a 410 from its last version; the
    second 410 then surfaces: the same server answer a reflector's re-list path sees."""
    rv = fake_core.list_node().metadata.resource_version
    fake_kube.compact()
    fake_kube.add_node("n1")
    fake_kube.compact()
    with pytest.raises(client.ApiException) as caught:
        list(watch.Watch().stream(fake_core.list_node, resource_version=rv))
    assert caught.value.status == 410
    assert len([r for r in fake_kube.requests if r.is_watch]) == 2


def test_watch_ends_at_timeout_seconds(core: Any) -> None:
    rv = core.list_node().metadata.resource_version
    started = time.monotonic()
    assert list(watch.Watch().stream(core.list_node, resource_version=rv, timeout_seconds=1)) == []
    assert time.monotonic() - started < 10


def bookmarks_of(core: Any, rv: str, timeout: int) -> Any:
    return watch.Watch().stream(
        core.list_node,
        resource_version=rv,
        label_selector="pool=gpu",
        allow_watch_bookmarks=True,
        timeout_seconds=timeout,
        deserialize=False,
    )


def test_watch_bookmark_carries_a_version_the_selection_did_not_show(core: Any) -> None:
    """A change outside the watch's selector, made while it runs, reaches the watcher only as
    a BOOKMARK's resourceVersion (the real server sends it in the last ~2 s before the end)."""
    rv = core.list_node().metadata.resource_version
    created: list[str] = []
    later = threading.Timer(
        0.3, lambda: created.append(core.create_node(node_body("other")).metadata.resource_version)
    )
    later.start()
    try:
        stream = bookmarks_of(core, rv, timeout=4)
        event = next(iter(stream))
        stream.close()
    finally:
        later.join()
    assert event["type"] == "BOOKMARK" and event["object"]["kind"] == "Node"
    assert int(event["object"]["metadata"]["resourceVersion"]) >= int(created[0])


def test_no_bookmark_when_nothing_happened_after_the_replay(core: Any) -> None:
    """The replay already covered "other": there is no newer version to bookmark."""
    rv = core.list_node().metadata.resource_version
    core.create_node(node_body("other"))
    assert list(bookmarks_of(core, rv, timeout=2)) == []


# --- faults (the fake only) ---------------------------------------------------------------


def test_injected_500(fake_core: Any, fake_kube: FakeKube) -> None:
    fake_kube.fail_next(2, method="GET", path="/api/v1/nodes")
    for _ in range(2):
        with pytest.raises(client.ApiException) as caught:
            fake_core.list_node()
        assert caught.value.status == 500
        assert "InternalError" in caught.value.body
    assert fake_core.list_node().items == []


def test_injected_fault_matches_method_and_path_only(fake_core: Any, fake_kube: FakeKube) -> None:
    fake_kube.add_node("n1")
    fake_kube.fail_next(1, method="PATCH", path="/nodes/n1", status=503)
    assert fake_core.read_node("n1").metadata.name == "n1"
    assert status_of(fake_core.patch_node, "n1", {"metadata": {"labels": {"a": "b"}}}) == 503
    assert fake_core.patch_node("n1", {"metadata": {"labels": {"a": "b"}}}).metadata.labels == {"a": "b"}


def test_dropped_watch(fake_core: Any, fake_kube: FakeKube) -> None:
    rv = fake_core.list_node().metadata.resource_version
    stream = watch.Watch().stream(fake_core.list_node, resource_version=rv, timeout_seconds=30)
    errors: list[BaseException] = []

    def consume() -> None:
        try:
            list(stream)
        except BaseException as err:
            errors.append(err)

    reader = threading.Thread(target=consume)
    reader.start()
    deadline = time.monotonic() + 10
    while fake_kube.open_watches() == 0 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert fake_kube.drop_watches() == 1
    reader.join(10)
    assert not reader.is_alive()
    assert len(errors) == 1 and isinstance(errors[0], urllib3.exceptions.ProtocolError)


def test_hanging_request_hits_the_client_timeout(fake_core: Any, fake_kube: FakeKube) -> None:
    # The stock client retries a read timeout (urllib3's default Retry), so hang every attempt.
    fake_kube.hang_next(10, seconds=10, path="/api/v1/nodes")
    with pytest.raises(urllib3.exceptions.HTTPError):
        fake_core.list_node(_request_timeout=0.5)


def test_request_log_shows_no_write(fake_core: Any, fake_kube: FakeKube) -> None:
    fake_kube.add_node("n1")
    fake_core.read_node("n1")
    fake_core.list_node(label_selector="a=b")
    assert fake_kube.writes() == []
    assert [(r.method, r.path, r.query) for r in fake_kube.requests] == [
        ("GET", "/api/v1/nodes/n1", {}),
        ("GET", "/api/v1/nodes", {"labelSelector": "a=b"}),
    ]


def test_wrong_token_is_401(cluster: Cluster) -> None:
    host = cluster.api.configuration.host
    configuration = client.Configuration(host=host, api_key={"authorization": "Bearer nope"})
    configuration.ssl_ca_cert = cluster.api.configuration.ssl_ca_cert
    with client.ApiClient(configuration) as api:
        assert status_of(client.CoreV1Api(api).list_node) == 401
