"""The webhook's patch core: both modes, second pass, user-set fields, unannotated and bad pods."""

from __future__ import annotations

import copy
import json
from typing import Any

import jsonpatch
import pytest

from locality.identity import model_ref
from scheduler_extender.injection import (
    CLIENT_LABEL,
    DIR_ENV,
    DIRS_ENV,
    INJECTED_ANNOTATION,
    TOKEN_VOLUME,
    URI_ENV,
    WAIT_CONTAINER,
    Install,
    affinity_weights,
    inject,
    pointer,
)

A = "s3://models/org/small-a"
B = "s3://models/org/big-b"
RA, RB = model_ref(A), model_ref(B)
SCHED = Install(mode="scheduler")
AFF = Install(mode="affinity")
SIZES = {RA.id: 100, RB.id: 300}


def pod(models: str | None = A, *, locality: str | None = None, **spec: Any) -> dict[str, Any]:
    annotations = {} if models is None else {"model-locality.io/models": models}
    if locality:
        annotations["model-locality.io/locality"] = locality
    body = {"containers": [{"name": "server", "image": "srv:1"}], **spec}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "p", "namespace": "ns", "annotations": annotations},
        "spec": body,
    }


def applied(obj: dict[str, Any], install: Install = SCHED, sizes: dict[str, int] = SIZES) -> dict[str, Any]:
    outcome = inject(obj, install, sizes)
    result = jsonpatch.apply_patch(obj, list(outcome.patch))
    assert isinstance(result, dict)
    return result


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


def test_scheduler_mode_one_model() -> None:
    out = applied(pod())
    spec = out["spec"]
    assert spec["schedulerName"] == "model-locality-scheduler"
    assert "affinity" not in spec
    wait = spec["initContainers"][0]
    assert wait["name"] == WAIT_CONTAINER
    assert wait["args"] == ["wait", RA.uri, "--timeout", "1800"]
    env = env_of(wait)
    assert env["HOST_IP"] == {"fieldRef": {"fieldPath": "status.hostIP"}}
    assert env["MODEL_LOCALITY_AGENT_URL"] == "http://$(HOST_IP):8470"
    assert env["MODEL_LOCALITY_AGENT_TOKEN_FILE"] == "/var/run/secrets/model-locality/token"
    assert wait["volumeMounts"] == [
        {"name": TOKEN_VOLUME, "mountPath": "/var/run/secrets/model-locality", "readOnly": True}
    ]
    volumes = {v["name"]: v for v in spec["volumes"]}
    token = volumes[TOKEN_VOLUME]["projected"]["sources"][0]["serviceAccountToken"]
    assert token["audience"] == "model-locality"
    model_dir = f"/var/lib/model-locality/models/{RA.id}"
    assert volumes[f"model-{RA.id}"]["hostPath"] == {"path": model_dir}
    assert volumes[f"record-{RA.id}"]["hostPath"] == {"path": f"/var/lib/model-locality/records/{RA.id}.json"}
    server = spec["containers"][0]
    assert env_of(server) == {DIR_ENV: model_dir, URI_ENV: RA.uri}
    assert {m["mountPath"]: m["readOnly"] for m in server["volumeMounts"]} == {
        model_dir: True,
        f"/var/lib/model-locality/records/{RA.id}.json": True,
    }
    assert out["metadata"]["labels"] == {CLIENT_LABEL: "true"}
    assert out["metadata"]["annotations"][INJECTED_ANNOTATION] == "scheduler"


def test_never_the_whole_cache() -> None:
    out = applied(pod(f"{A},{B}"))
    paths = {v["hostPath"]["path"] for v in out["spec"]["volumes"] if "hostPath" in v}
    assert "/var/lib/model-locality" not in paths
    assert all(p.rsplit("/", 1)[-1].split(".")[0] in (RA.id, RB.id) for p in paths)
    assert len(paths) == 4


def test_several_models_get_one_json_env() -> None:
    out = applied(pod(f"{A}, {B}"))
    env = env_of(out["spec"]["containers"][0])
    assert set(env) == {DIRS_ENV}
    assert json.loads(env[DIRS_ENV]) == {
        RA.uri: f"/var/lib/model-locality/models/{RA.id}",
        RB.uri: f"/var/lib/model-locality/models/{RB.id}",
    }
    inits = out["spec"]["initContainers"]
    assert [(c["name"], c["args"][1]) for c in inits] == [
        (WAIT_CONTAINER, RA.uri),
        (f"{WAIT_CONTAINER}-2", RB.uri),
    ]
    assert all(DIRS_ENV not in env_of(c) for c in inits)


def test_affinity_mode_weights_from_sizes() -> None:
    out = applied(pod(f"{A},{B}"), AFF)
    assert "schedulerName" not in out["spec"]
    terms = out["spec"]["affinity"]["nodeAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    by_key = {t["preference"]["matchExpressions"][0]["key"]: t for t in terms}
    assert by_key[RA.label_key]["weight"] == 25
    assert by_key[RB.label_key]["weight"] == 75
    expr = by_key[RB.label_key]["preference"]["matchExpressions"][0]
    assert expr == {"key": RB.label_key, "operator": "In", "values": ["ready"]}
    assert "requiredDuringSchedulingIgnoredDuringExecution" not in out["spec"]["affinity"]["nodeAffinity"]
    assert out["metadata"]["annotations"][INJECTED_ANNOTATION] == "affinity"


@pytest.mark.parametrize(
    ("sizes", "expected"),
    [
        pytest.param({}, (50, 50), id="unknown sizes count equally"),
        pytest.param({RA.id: 1, RB.id: 10**12}, (1, 100), id="tiny model still weighs 1"),
        pytest.param({RB.id: 300}, (50, 50), id="unknown size takes the known mean"),
    ],
)
def test_affinity_weights(sizes: dict[str, int], expected: tuple[int, ...]) -> None:
    assert affinity_weights([RA, RB], sizes) == expected


def test_affinity_required_adds_required_terms() -> None:
    out = applied(pod(f"{A},{B}", locality="required"), AFF)
    required = out["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert required == {
        "nodeSelectorTerms": [
            {
                "matchExpressions": [
                    {"key": RA.label_key, "operator": "In", "values": ["ready"]},
                    {"key": RB.label_key, "operator": "In", "values": ["ready"]},
                ]
            }
        ]
    }


def test_affinity_required_is_anded_into_each_user_term() -> None:
    zone_a = {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}]}
    by_field = {"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["n1"]}]}
    affinity = {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [zone_a, by_field]}
        }
    }
    out = applied(pod(A, locality="required", affinity=affinity), AFF)
    terms = out["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][
        "nodeSelectorTerms"
    ]
    ours = {"key": RA.label_key, "operator": "In", "values": ["ready"]}
    assert terms[0]["matchExpressions"] == [*zone_a["matchExpressions"], ours]
    assert terms[1] == {**by_field, "matchExpressions": [ours]}


@pytest.mark.parametrize("install", [SCHED, AFF], ids=["scheduler", "affinity"])
@pytest.mark.parametrize("models", [A, f"{A},{B}"], ids=["one model", "two models"])
@pytest.mark.parametrize("locality", [None, "required"], ids=["preferred", "required"])
def test_second_pass_adds_nothing(install: Install, models: str, locality: str | None) -> None:
    first = applied(pod(models, locality=locality), install)
    assert inject(first, install, SIZES).patch == ()


def test_input_is_not_modified() -> None:
    original = pod(f"{A},{B}", locality="required", initContainers=[{"name": "x", "image": "x"}])
    before = copy.deepcopy(original)
    inject(original, AFF, SIZES)
    assert original == before


@pytest.mark.parametrize(
    "obj",
    [
        pytest.param(pod(None), id="no annotation"),
        pytest.param(pod(""), id="empty annotation"),
        pytest.param({**pod(), "metadata": {"name": "p"}}, id="no annotations at all"),
        pytest.param({"kind": "Pod"}, id="no metadata or spec"),
    ],
)
def test_unannotated_pods_are_left_alone(obj: dict[str, Any]) -> None:
    outcome = inject(obj, SCHED, SIZES)
    assert outcome.patch == () and outcome.warnings == ()


def test_namespace_not_opted_in() -> None:
    assert inject(pod(), SCHED, SIZES, opted_in=False).patch == ()


@pytest.mark.parametrize(
    ("models", "reason"),
    [
        pytest.param("ftp://models/x", "unsupported scheme", id="bad scheme"),
        pytest.param(f"{A},s3://models/../etc", "'..'", id="one bad URI among good ones"),
        pytest.param(",".join(f"s3://models/m{i}" for i in range(70)), "more than 64", id="too many"),
    ],
)
def test_bad_annotations_mean_no_patch_and_a_reason(models: str, reason: str) -> None:
    outcome = inject(pod(models), SCHED, SIZES)
    assert outcome.patch == ()
    assert len(outcome.warnings) == 1 and reason in outcome.warnings[0]
    assert "not injected" in outcome.warnings[0]


def test_annotation_that_is_not_a_string() -> None:
    obj = pod()
    obj["metadata"]["annotations"]["model-locality.io/models"] = ["s3://models/x"]
    outcome = inject(obj, SCHED, SIZES)
    assert outcome.patch == () and "not a string" in outcome.warnings[0]


def test_unknown_locality_injects_as_preferred_with_a_warning() -> None:
    outcome = inject(pod(A, locality="sometimes"), AFF, SIZES)
    assert outcome.mutated and "neither preferred nor required" in outcome.warnings[0]
    out = jsonpatch.apply_patch(pod(A, locality="sometimes"), list(outcome.patch))
    assert "requiredDuringSchedulingIgnoredDuringExecution" not in out["spec"]["affinity"]["nodeAffinity"]


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        pytest.param(None, "model-locality-scheduler", id="none"),
        pytest.param("default-scheduler", "model-locality-scheduler", id="API server default"),
        pytest.param("gpu-scheduler", "gpu-scheduler", id="user's own scheduler"),
    ],
)
def test_scheduler_name(given: str | None, expected: str) -> None:
    extra = {} if given is None else {"schedulerName": given}
    assert applied(pod(**extra))["spec"]["schedulerName"] == expected


def test_user_set_fields_win() -> None:
    model_dir = f"/var/lib/model-locality/models/{RA.id}"
    user_affinity = {
        "nodeAffinity": {
            "preferredDuringSchedulingIgnoredDuringExecution": [
                {
                    "weight": 7,
                    "preference": {"matchExpressions": [{"key": RA.label_key, "operator": "Exists"}]},
                }
            ]
        }
    }
    obj = pod(
        A,
        affinity=user_affinity,
        containers=[
            {
                "name": "server",
                "image": "srv:1",
                "env": [{"name": DIR_ENV, "value": "/mine"}],
                "volumeMounts": [{"name": "mine", "mountPath": model_dir}],
            }
        ],
        volumes=[
            {"name": TOKEN_VOLUME, "secret": {"secretName": "my-token"}},
            {"name": "mine", "emptyDir": {}},
        ],
    )
    obj["metadata"]["labels"] = {CLIENT_LABEL: "false"}
    out = applied(obj, AFF)
    spec = out["spec"]
    assert spec["affinity"] == user_affinity  # the user's term on our key stays, alone
    assert {v["name"]: v for v in spec["volumes"]}[TOKEN_VOLUME] == {
        "name": TOKEN_VOLUME,
        "secret": {"secretName": "my-token"},
    }
    server = spec["containers"][0]
    assert env_of(server)[DIR_ENV] == "/mine"
    assert [m for m in server["volumeMounts"] if m["mountPath"] == model_dir] == [
        {"name": "mine", "mountPath": model_dir}
    ]
    assert out["metadata"]["labels"] == {CLIENT_LABEL: "false"}


def test_users_own_wait_container_is_kept() -> None:
    mine = {"name": WAIT_CONTAINER, "image": "mine:1", "command": ["my-wait"]}
    out = applied(pod(initContainers=[mine]))
    assert out["spec"]["initContainers"] == [mine]


def test_wait_container_goes_first_and_user_inits_get_the_models() -> None:
    out = applied(pod(initContainers=[{"name": "convert", "image": "c:1"}]))
    inits = out["spec"]["initContainers"]
    assert [c["name"] for c in inits] == [WAIT_CONTAINER, "convert"]
    assert DIR_ENV in env_of(inits[1])
    assert "volumeMounts" not in inits[1] or all(m["readOnly"] for m in inits[1]["volumeMounts"])
    assert [m["name"] for m in inits[0]["volumeMounts"]] == [TOKEN_VOLUME]


def test_every_container_gets_env_and_mounts() -> None:
    out = applied(pod(containers=[{"name": "a", "image": "a"}, {"name": "b", "image": "b", "env": []}]))
    for container in out["spec"]["containers"]:
        assert DIR_ENV in env_of(container)
        assert len(container["volumeMounts"]) == 2


def test_install_settings_are_used() -> None:
    install = Install(
        mode="scheduler",
        agent_image="registry.example/agent:9",
        agent_port=9470,
        cache_dir="/mnt/nvme/cache/",
        scheduler_name="ml-sched",
        wait_timeout_seconds=60,
    )
    out = applied(pod(), install)
    wait = out["spec"]["initContainers"][0]
    assert wait["image"] == "registry.example/agent:9"
    assert env_of(wait)["MODEL_LOCALITY_AGENT_URL"] == "http://$(HOST_IP):9470"
    assert wait["args"][-1] == "60"
    assert out["spec"]["schedulerName"] == "ml-sched"
    assert env_of(out["spec"]["containers"][0])[DIR_ENV] == f"/mnt/nvme/cache/models/{RA.id}"


def test_pointer_escapes() -> None:
    assert pointer(["metadata", "annotations", "model-locality.io/injected"]) == (
        "/metadata/annotations/model-locality.io~1injected"
    )
    assert pointer(["a~b", 0]) == "/a~0b/0"


def test_patch_has_only_adds_and_does_not_touch_user_paths() -> None:
    obj = pod(f"{A},{B}", locality="required", affinity={"podAntiAffinity": {"x": 1}})
    for op in inject(obj, AFF, SIZES).patch:
        assert op["op"] == "add"
        assert not op["path"].startswith("/spec/affinity/podAntiAffinity")
