"""The fake API server driven by the real ``kubernetes`` client (typed API objects, Watch)."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
import urllib3
from kubernetes import client, watch

from tests.fixtures.fakekube import FakeKube

GROUP, VERSION, PLURAL = "model-locality.io", "v1alpha1", "modeldistributions"


@pytest.fixture()
def core(kube_client: Any) -> Any:
    return client.CoreV1Api(kube_client)


@pytest.fixture()
def custom(kube_client: Any) -> Any:
    return client.CustomObjectsApi(kube_client)


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
    with pytest.raises(client.ApiException) as caught:
        core.read_node("n1")
    assert caught.value.status == 404


def test_create_existing_node_is_409_already_exists(core: Any) -> None:
    core.create_node(node_body("n1"))
    with pytest.raises(client.ApiException) as caught:
        core.create_node(node_body("n1"))
    assert caught.value.status == 409
    assert "AlreadyExists" in caught.value.body


@pytest.mark.parametrize(
    "content_type",
    [
        pytest.param("application/merge-patch+json", id="merge"),
        pytest.param("application/strategic-merge-patch+json", id="strategic-merge"),
    ],
)
def test_patch_node_labels(core: Any, fake_kube: FakeKube, content_type: str) -> None:
    fake_kube.add_node("n1", labels={"keep": "1", "drop": "x"}, annotations={"a": "1"})
    before = fake_kube.get("node", "n1")
    patched = core.patch_node(
        "n1", {"metadata": {"labels": {"new": "2", "drop": None}}}, _content_type=content_type
    )
    assert patched.metadata.labels == {"keep": "1", "new": "2"}
    assert patched.metadata.annotations == {"a": "1"}
    assert int(patched.metadata.resource_version) > int(before["metadata"]["resourceVersion"])
    assert fake_kube.requests[-1].content_type == content_type


def test_json_patch_of_node_labels(core: Any, fake_kube: FakeKube) -> None:
    fake_kube.add_node("n1", labels={"a": "1"})
    ops = [
        {"op": "add", "path": "/metadata/labels/b", "value": "2"},
        {"op": "remove", "path": "/metadata/labels/a"},
    ]
    assert core.patch_node("n1", ops).metadata.labels == {"b": "2"}
    assert fake_kube.requests[-1].content_type == "application/json-patch+json"


def test_node_spec_change_bumps_generation_but_label_change_does_not(core: Any, fake_kube: FakeKube) -> None:
    fake_kube.add_node("n1")
    assert core.patch_node("n1", {"metadata": {"labels": {"a": "b"}}}).metadata.generation == 1
    assert core.patch_node("n1", {"spec": {"unschedulable": True}}).metadata.generation == 2


def test_main_resource_write_ignores_status(core: Any, fake_kube: FakeKube) -> None:
    fake_kube.add_node("n1", ready=True)
    core.patch_node("n1", {"status": {"conditions": [{"type": "Ready", "status": "False"}]}})
    assert fake_kube.get("node", "n1")["status"]["conditions"][0]["status"] == "True"


def test_list_pods_by_node_field_selector(core: Any, fake_kube: FakeKube) -> None:
    fake_kube.add_pod("a", "p1", node_name="n1")
    fake_kube.add_pod("b", "p2", node_name="n1")
    fake_kube.add_pod("a", "p3", node_name="n2")
    fake_kube.add_pod("a", "pending")
    assert names(core.list_pod_for_all_namespaces(field_selector="spec.nodeName=n1").items) == ["p1", "p2"]
    assert names(core.list_pod_for_all_namespaces(field_selector="spec.nodeName=").items) == ["pending"]
    assert names(core.list_namespaced_pod("a", field_selector="spec.nodeName!=n1").items) == ["p3", "pending"]
    assert names(core.list_namespaced_pod("a", field_selector="metadata.name=p1").items) == ["p1"]


def test_bind_and_phase_helpers_show_through_the_client(core: Any, fake_kube: FakeKube) -> None:
    fake_kube.add_pod("ns", "p", annotations={"model-locality.io/models": "s3://b/m"})
    fake_kube.bind_pod("ns", "p", "n1")
    fake_kube.set_pod_phase("ns", "p", "Running")
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
def test_label_selectors(core: Any, fake_kube: FakeKube, selector: str, expected: list[str]) -> None:
    fake_kube.add_node("a", labels={"pool": "gpu", "zone": "z1"})
    fake_kube.add_node("b", labels={"pool": "gpu"})
    fake_kube.add_node("c", labels={"pool": "cpu", "zone": "z2"})
    fake_kube.add_node("d")
    assert names(core.list_node(label_selector=selector).items) == expected


def test_bad_selector_is_400(core: Any) -> None:
    with pytest.raises(client.ApiException) as caught:
        core.list_node(field_selector="spec.bogus=1")
    assert caught.value.status == 400


def test_stale_resource_version_is_409_conflict(core: Any, fake_kube: FakeKube) -> None:
    fake_kube.add_node("n1")
    stale = core.read_node("n1")
    core.patch_node("n1", {"metadata": {"labels": {"a": "b"}}})
    stale.metadata.labels = {"c": "d"}
    with pytest.raises(client.ApiException) as caught:
        core.replace_node("n1", stale)
    assert caught.value.status == 409
    with pytest.raises(client.ApiException) as caught:
        core.patch_node(
            "n1",
            {"metadata": {"resourceVersion": stale.metadata.resource_version, "labels": {"x": "y"}}},
            _content_type="application/merge-patch+json",
        )
    assert caught.value.status == 409
    assert fake_kube.get("node", "n1")["metadata"]["labels"] == {"a": "b"}


# --- the ModelDistribution custom resource ------------------------------------------------


def test_distribution_crud_and_status_subresource(custom: Any, fake_kube: FakeKube) -> None:
    body = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "ModelDistribution",
        "metadata": {"name": "d1", "labels": {"team": "ml"}},
        "spec": {"uri": "s3://b/m", "replicas": 2},
        "status": {"ignored": True},
    }
    created = custom.create_cluster_custom_object(GROUP, VERSION, PLURAL, body)
    assert "status" not in created  # create ignores status (status subresource)
    assert custom.get_cluster_custom_object(GROUP, VERSION, PLURAL, "d1")["spec"]["replicas"] == 2
    listed = custom.list_cluster_custom_object(GROUP, VERSION, PLURAL, label_selector="team=ml")
    assert listed["kind"] == "ModelDistributionList" and names_of(listed) == ["d1"]
    after = custom.patch_cluster_custom_object_status(
        GROUP, VERSION, PLURAL, "d1", {"status": {"targets": ["n1"]}, "spec": {"replicas": 9}}
    )
    assert after["status"] == {"targets": ["n1"]} and after["spec"]["replicas"] == 2
    after = custom.patch_cluster_custom_object(
        GROUP, VERSION, PLURAL, "d1", {"spec": {"replicas": 3}, "status": {"targets": []}}
    )
    assert after["status"] == {"targets": ["n1"]} and after["spec"]["replicas"] == 3
    assert after["metadata"]["generation"] == 2
    custom.delete_cluster_custom_object(GROUP, VERSION, PLURAL, "d1")
    assert fake_kube.objects("distribution") == []
    with pytest.raises(client.ApiException) as caught:
        custom.get_cluster_custom_object(GROUP, VERSION, PLURAL, "d1")
    assert caught.value.status == 404


def names_of(listing: dict[str, Any]) -> list[str]:
    return [item["metadata"]["name"] for item in listing["items"]]


# --- watch --------------------------------------------------------------------------------


def test_watch_sees_added_modified_deleted_in_order(core: Any, fake_kube: FakeKube) -> None:
    rv = core.list_node().metadata.resource_version
    fake_kube.add_node("n1")
    core.patch_node("n1", {"metadata": {"labels": {"a": "b"}}})
    core.delete_node("n1")
    stream = watch.Watch().stream(core.list_node, resource_version=rv, timeout_seconds=5)
    assert watch_until(stream, 3) == [("ADDED", "n1"), ("MODIFIED", "n1"), ("DELETED", "n1")]


def test_watch_resumes_from_a_resource_version(core: Any, fake_kube: FakeKube) -> None:
    fake_kube.add_node("n1")
    middle = fake_kube.store.rv
    fake_kube.add_node("n2")
    stream = watch.Watch().stream(core.list_node, resource_version=str(middle), timeout_seconds=5)
    assert watch_until(stream, 1) == [("ADDED", "n2")]


def test_watch_without_version_starts_with_current_state(core: Any, fake_kube: FakeKube) -> None:
    fake_kube.add_node("n1")
    fake_kube.add_node("n2")
    stream = watch.Watch().stream(core.list_node, timeout_seconds=5)
    assert watch_until(stream, 2) == [("ADDED", "n1"), ("ADDED", "n2")]


def test_watch_with_label_selector_sees_leaving_as_deleted(core: Any, fake_kube: FakeKube) -> None:
    rv = core.list_node().metadata.resource_version
    fake_kube.add_node("n1", labels={"pool": "gpu"})
    fake_kube.add_node("other")
    core.patch_node("n1", {"metadata": {"labels": {"pool": None}}})
    stream = watch.Watch().stream(
        core.list_node, resource_version=rv, label_selector="pool=gpu", timeout_seconds=5
    )
    assert watch_until(stream, 2) == [("ADDED", "n1"), ("DELETED", "n1")]


def test_watch_of_pods_on_a_node(core: Any, fake_kube: FakeKube) -> None:
    rv = core.list_pod_for_all_namespaces().metadata.resource_version
    fake_kube.add_pod("ns", "p1")
    fake_kube.bind_pod("ns", "p1", "n1")
    fake_kube.add_pod("ns", "p2", node_name="n2")
    stream = watch.Watch().stream(
        core.list_pod_for_all_namespaces,
        resource_version=rv,
        field_selector="spec.nodeName=n1",
        timeout_seconds=5,
    )
    assert watch_until(stream, 1) == [("ADDED", "p1")]


def test_watch_of_distributions(custom: Any, fake_kube: FakeKube) -> None:
    rv = custom.list_cluster_custom_object(GROUP, VERSION, PLURAL)["metadata"]["resourceVersion"]
    fake_kube.create("distribution", {"metadata": {"name": "d1"}, "spec": {}})
    stream = watch.Watch().stream(
        custom.list_cluster_custom_object, GROUP, VERSION, PLURAL, resource_version=rv, timeout_seconds=5
    )
    event = next(iter(stream))
    assert (event["type"], event["object"]["metadata"]["name"]) == ("ADDED", "d1")


def test_watch_from_a_too_old_version_is_410(core: Any, fake_kube: FakeKube) -> None:
    rv = core.list_node().metadata.resource_version
    fake_kube.add_node("n1")
    fake_kube.compact()
    with pytest.raises(client.ApiException) as caught:
        # timeout_seconds disables the client's own retry-after-410, so the error surfaces.
        list(watch.Watch().stream(core.list_node, resource_version=rv, timeout_seconds=5))
    assert caught.value.status == 410


def test_watch_too_old_version_triggers_the_client_relist_path(core: Any, fake_kube: FakeKube) -> None:
    """Without timeout_seconds, Watch retries once after a 410 from its last version; the
    second 410 then surfaces: the same server answer a reflector's re-list path sees."""
    rv = core.list_node().metadata.resource_version
    fake_kube.compact()
    fake_kube.add_node("n1")
    fake_kube.compact()
    with pytest.raises(client.ApiException) as caught:
        list(watch.Watch().stream(core.list_node, resource_version=rv))
    assert caught.value.status == 410
    assert len([r for r in fake_kube.requests if r.is_watch]) == 2


def test_watch_ends_at_timeout_seconds(core: Any, fake_kube: FakeKube) -> None:
    started = time.monotonic()
    assert list(watch.Watch().stream(core.list_node, resource_version="1", timeout_seconds=1)) == []
    assert time.monotonic() - started < 10


def test_watch_bookmarks_carry_the_current_version(core: Any, fake_kube: FakeKube) -> None:
    fake_kube.add_node("n1")
    rv = core.list_node().metadata.resource_version
    stream = watch.Watch().stream(
        core.list_node, resource_version=rv, allow_watch_bookmarks=True, timeout_seconds=3, deserialize=False
    )
    event = next(iter(stream))
    assert event["type"] == "BOOKMARK"
    assert event["object"]["metadata"]["resourceVersion"] == rv


# --- faults -------------------------------------------------------------------------------


def test_injected_500(core: Any, fake_kube: FakeKube) -> None:
    fake_kube.fail_next(2, method="GET", path="/api/v1/nodes")
    for _ in range(2):
        with pytest.raises(client.ApiException) as caught:
            core.list_node()
        assert caught.value.status == 500
        assert "InternalError" in caught.value.body
    assert core.list_node().items == []


def test_injected_fault_matches_method_and_path_only(core: Any, fake_kube: FakeKube) -> None:
    fake_kube.add_node("n1")
    fake_kube.fail_next(1, method="PATCH", path="/nodes/n1", status=503)
    assert core.read_node("n1").metadata.name == "n1"
    with pytest.raises(client.ApiException) as caught:
        core.patch_node("n1", {"metadata": {"labels": {"a": "b"}}})
    assert caught.value.status == 503
    assert core.patch_node("n1", {"metadata": {"labels": {"a": "b"}}}).metadata.labels == {"a": "b"}


def test_dropped_watch(core: Any, fake_kube: FakeKube) -> None:
    rv = core.list_node().metadata.resource_version
    stream = watch.Watch().stream(core.list_node, resource_version=rv, timeout_seconds=30)
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


def test_hanging_request_hits_the_client_timeout(core: Any, fake_kube: FakeKube) -> None:
    # The stock client retries a read timeout (urllib3's default Retry), so hang every attempt.
    fake_kube.hang_next(10, seconds=10, path="/api/v1/nodes")
    with pytest.raises(urllib3.exceptions.HTTPError):
        core.list_node(_request_timeout=0.5)


def test_request_log_shows_no_write(core: Any, fake_kube: FakeKube) -> None:
    fake_kube.add_node("n1")
    core.read_node("n1")
    core.list_node(label_selector="a=b")
    assert fake_kube.writes() == []
    assert [(r.method, r.path, r.query) for r in fake_kube.requests] == [
        ("GET", "/api/v1/nodes/n1", {}),
        ("GET", "/api/v1/nodes", {"labelSelector": "a=b"}),
    ]


def test_wrong_token_is_401(fake_kube: FakeKube) -> None:
    configuration = client.Configuration(host=fake_kube.url, api_key={"authorization": "Bearer nope"})
    with client.ApiClient(configuration) as api, pytest.raises(client.ApiException) as caught:
        client.CoreV1Api(api).list_node()
    assert caught.value.status == 401
