"""Which containers of an engine pod read the model (``readers``), and what the ones that do get:
our variables first in their env, so ``$(VAR)`` in args and in their own env values expand."""

from __future__ import annotations

from typing import Any

import jsonpatch
import pytest

from locality.identity import model_ref
from scheduler_extender.injection import (
    CONTAINERS_ANNOTATION,
    DEFAULT_CONTAINER_ANNOTATION,
    DIR_ENV,
    URI_ENV,
    WAIT_CONTAINER,
    Install,
    inject,
    readers,
)

URI = "hf://Qwen/Qwen2.5-0.5B-Instruct"
REF = model_ref(URI)
MODEL_DIR = f"/var/lib/model-locality/models/{REF.id}"
ENGINE_ARGS = {"name": "engine", "image": "e:1", "args": ["--model", f"$({DIR_ENV})"]}
SIDECAR = {"name": "proxy", "image": "p:1", "args": ["--port", "9000"]}
LOGGER = {"name": "logger", "image": "l:1"}


def c(name: str, **fields: Any) -> dict[str, Any]:
    return {"name": name, "image": f"{name}:1", **fields}


def spec(*containers: dict[str, Any], inits: tuple[dict[str, Any], ...] = ()) -> dict[str, Any]:
    body: dict[str, Any] = {"containers": list(containers)}
    if inits:
        body["initContainers"] = list(inits)
    return body


@pytest.mark.parametrize(
    ("pod_spec", "annotations", "expected"),
    [
        pytest.param(spec(c("server")), {}, None, id="one container, no hint: every container"),
        pytest.param(spec(c("a"), c("b")), {}, None, id="several, no hint: every container (as before)"),
        pytest.param(spec(ENGINE_ARGS, SIDECAR), {}, {"engine"}, id="the container whose args use ours"),
        pytest.param(
            spec(c("engine", command=["sh", "-c", f'exec serve "$({DIR_ENV})"']), SIDECAR),
            {},
            {"engine"},
            id="a reference inside a shell command",
        ),
        pytest.param(
            spec(c("tgi", env=[{"name": "MODEL_ID", "value": f"$({DIR_ENV})"}]), SIDECAR),
            {},
            {"tgi"},
            id="a reference in an env value",
        ),
        pytest.param(
            spec(
                c("engine", args=[f"--uri=$({URI_ENV})"]), c("multi", args=["$(MODEL_LOCALITY_MODEL_DIRS)"])
            ),
            {},
            {"engine", "multi"},
            id="the URI and DIRS variables count too",
        ),
        pytest.param(
            spec(c("engine", args=["--model", "$(MODEL_LOCALITY_MODEL_DIRECTORY)"]), SIDECAR),
            {},
            None,
            id="a variable that is not ours is no reference",
        ),
        pytest.param(
            spec(SIDECAR, c("server")),
            {DEFAULT_CONTAINER_ANNOTATION: "server"},
            {"server"},
            id="kubectl default-container",
        ),
        pytest.param(
            spec(SIDECAR, c("server")),
            {DEFAULT_CONTAINER_ANNOTATION: "gone"},
            None,
            id="a default-container that is not in the pod is ignored",
        ),
        pytest.param(
            spec(SIDECAR, c("server"), inits=(c("init"),)),
            {DEFAULT_CONTAINER_ANNOTATION: "init"},
            None,
            id="a default-container naming an init container is ignored",
        ),
        pytest.param(
            spec(ENGINE_ARGS, c("server")),
            {DEFAULT_CONTAINER_ANNOTATION: "server"},
            {"engine"},
            id="a reference beats default-container",
        ),
        pytest.param(
            spec(ENGINE_ARGS, SIDECAR, inits=(c("convert"),)),
            {CONTAINERS_ANNOTATION: " engine , convert "},
            {"engine", "convert"},
            id="the annotation names them, init containers included",
        ),
        pytest.param(
            spec(ENGINE_ARGS, SIDECAR),
            {CONTAINERS_ANNOTATION: "proxy"},
            {"proxy"},
            id="the annotation beats a reference",
        ),
        pytest.param(
            spec(c("server"), inits=(c(WAIT_CONTAINER, args=[f"$({DIR_ENV})"]),)),
            {},
            None,
            id="a wait container is never a reader",
        ),
    ],
)
def test_readers(pod_spec: dict[str, Any], annotations: dict[str, str], expected: set[str] | None) -> None:
    chosen, problem = readers(pod_spec, annotations)
    assert problem == ""
    assert chosen == (None if expected is None else frozenset(expected))


@pytest.mark.parametrize(
    "value",
    [
        pytest.param("enigne", id="a typo"),
        pytest.param("engine,ghost", id="one of two unknown"),
        pytest.param(" , ", id="no name at all"),
        pytest.param(WAIT_CONTAINER, id="our own wait container"),
        pytest.param(["engine"], id="not a string"),
    ],
)
def test_containers_annotation_that_names_nothing_real_means_no_patch(value: object) -> None:
    pod = engine_pod(spec(ENGINE_ARGS, SIDECAR), {CONTAINERS_ANNOTATION: value})
    outcome = inject(pod, Install(), {})
    assert outcome.patch == ()
    assert len(outcome.warnings) == 1
    assert "not injected" in outcome.warnings[0] and CONTAINERS_ANNOTATION in outcome.warnings[0]
    assert "['engine', 'proxy']" in outcome.warnings[0]  # says what the pod has


def engine_pod(pod_spec: dict[str, Any], annotations: dict[str, Any] | None = None) -> dict[str, Any]:
    meta = {
        "name": "p",
        "namespace": "ns",
        "annotations": {"model-locality.io/models": URI, **(annotations or {})},
    }
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": pod_spec}


def applied(pod: dict[str, Any]) -> dict[str, Any]:
    result = jsonpatch.apply_patch(pod, list(inject(pod, Install(), {}).patch))
    assert isinstance(result, dict)
    return result


def test_only_the_engine_gets_env_and_mounts_the_sidecars_are_left_as_written() -> None:
    out = applied(engine_pod(spec(ENGINE_ARGS, SIDECAR, LOGGER)))
    engine, proxy, logger = out["spec"]["containers"]
    assert proxy == SIDECAR and logger == LOGGER
    assert engine["env"] == [{"name": DIR_ENV, "value": MODEL_DIR}, {"name": URI_ENV, "value": URI}]
    assert engine["volumeMounts"] == [
        {"name": f"model-{REF.id}", "mountPath": MODEL_DIR, "readOnly": True},
        {
            "name": f"record-{REF.id}",
            "mountPath": f"/var/lib/model-locality/records/{REF.id}.json",
            "readOnly": True,
        },
    ]
    # scheduling and the wait step as always
    assert [c["name"] for c in out["spec"]["initContainers"]] == [WAIT_CONTAINER]


def test_ours_go_first_so_the_users_env_can_use_them() -> None:
    tgi = c("tgi", env=[{"name": "PORT", "value": "80"}, {"name": "MODEL_ID", "value": f"$({DIR_ENV})"}])
    out = applied(engine_pod(spec(tgi)))
    names = [e["name"] for e in out["spec"]["containers"][0]["env"]]
    assert names == [DIR_ENV, URI_ENV, "PORT", "MODEL_ID"]


def test_the_users_own_variable_keeps_its_place_and_value() -> None:
    engine = c(
        "engine", args=[f"$({DIR_ENV})"], env=[{"name": "X", "value": "1"}, {"name": DIR_ENV, "value": "/m"}]
    )
    out = applied(engine_pod(spec(engine)))
    assert out["spec"]["containers"][0]["env"] == [
        {"name": URI_ENV, "value": URI},
        {"name": "X", "value": "1"},
        {"name": DIR_ENV, "value": "/m"},
    ]


def test_second_pass_on_an_engine_pod_adds_nothing() -> None:
    first = applied(engine_pod(spec(ENGINE_ARGS, SIDECAR), {CONTAINERS_ANNOTATION: "engine"}))
    assert inject(first, Install(), {}).patch == ()
    first = applied(engine_pod(spec(ENGINE_ARGS, SIDECAR)))
    assert inject(first, Install(), {}).patch == ()
