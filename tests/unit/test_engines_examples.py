"""manifests/examples/engines/ says what docs/engines.md says: per engine, the annotation and the
model directory in the engine's own flag, HF_HUB_OFFLINE=1, a GPU, probes on the engine's health
path, writable caches off the model directory, and a ScaledObject on the engine's own queue-depth
and latency metric names (as read from the engines' sources, /work/shared/engines.md)."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import pytest

from locality.contract import pod_models
from tests.fixtures.kustomize import render

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "manifests" / "examples" / "engines"
Obj = dict[str, Any]


@functools.cache
def objects() -> list[Obj]:
    return render(EXAMPLES)


def find(kind: str, name: str) -> Obj:
    (obj,) = [o for o in objects() if o["kind"] == kind and o["metadata"]["name"] == name]
    return obj


def template_of(kind: str, name: str, role: str) -> tuple[dict[str, str], Obj]:
    """(the annotations the pods get, the engine container) of one example."""
    obj = find(kind, name)
    if kind == "Deployment":
        tmpl = obj["spec"]["template"]
        return tmpl["metadata"]["annotations"], tmpl["spec"]["containers"][0]
    if kind == "LeaderWorkerSet":
        tmpl = obj["spec"]["leaderWorkerTemplate"][f"{role}Template"]
        return tmpl["metadata"]["annotations"], tmpl["spec"]["containers"][0]
    runtime = find("ServingRuntime", obj["spec"]["predictor"]["model"]["runtime"])
    return obj["metadata"]["annotations"], runtime["spec"]["containers"][0]


CACHE_ENV = ("HF_HOME", "VLLM_CACHE_ROOT", "VLLM_CONFIG_ROOT", "HUGGINGFACE_HUB_CACHE")
ENGINES = [
    # kind, name, LWS role, the flag that takes the directory, health path
    pytest.param("Deployment", "vllm-qwen", "", "--model=$(MODEL_LOCALITY_MODEL_DIR)", "/health", id="vllm"),
    pytest.param(
        "Deployment", "sglang-qwen", "", "--model-path=$(MODEL_LOCALITY_MODEL_DIR)", "/health", id="sglang"
    ),
    pytest.param("Deployment", "tgi-qwen", "", "--model-id=$(MODEL_LOCALITY_MODEL_DIR)", "/health", id="tgi"),
    pytest.param(
        "InferenceService", "qwen-kserve", "", "--model=$(MODEL_LOCALITY_MODEL_DIR)", "/health", id="kserve"
    ),
    pytest.param(
        "LeaderWorkerSet", "qwen-lws", "leader", "vllm serve $(MODEL_LOCALITY_MODEL_DIR)", "/health", id="lws"
    ),
]


@pytest.mark.parametrize(("kind", "name", "role", "flag", "health"), ENGINES)
def test_engine_pod_template(kind: str, name: str, role: str, flag: str, health: str) -> None:
    annotations, container = template_of(kind, name, role)
    wanted = pod_models(annotations)
    assert len(wanted.refs) == 1 and wanted.problem is None
    words = container.get("command", []) + container.get("args", [])
    assert any(flag in w for w in words), f"{flag!r} not in {words}"
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["HF_HUB_OFFLINE"] == "1"
    resources = find(kind, name)["spec"]["predictor"]["model"] if kind == "InferenceService" else container
    assert int(resources["resources"]["limits"]["nvidia.com/gpu"]) >= 1
    for probe in ("startupProbe", "readinessProbe"):
        assert container[probe]["httpGet"]["path"] == health
    mounts = {m["mountPath"] for m in container.get("volumeMounts", [])}
    caches = [v for k, v in env.items() if k in CACHE_ENV]
    assert caches and all(any(str(c).startswith(m) for m in mounts) for c in caches), "caches off a mount"
    assert "MODEL_LOCALITY_MODEL_DIR" not in env  # the webhook's to add, never written by hand


def test_kserve_gets_no_storage_initializer_and_its_predictor_asks_for_a_gpu() -> None:
    isvc = find("InferenceService", "qwen-kserve")
    model = isvc["spec"]["predictor"]["model"]
    assert "storageUri" not in model and "storageUris" not in isvc["spec"]["predictor"]
    assert model["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert isvc["metadata"]["annotations"]["serving.kserve.io/autoscalerClass"] == "external"


def test_lws_workers_ask_for_the_same_model_as_their_leader() -> None:
    leader, _ = template_of("LeaderWorkerSet", "qwen-lws", "leader")
    worker, _ = template_of("LeaderWorkerSet", "qwen-lws", "worker")
    assert pod_models(leader).refs == pod_models(worker).refs


@pytest.mark.parametrize(
    ("name", "queue", "latency"),
    [
        pytest.param("vllm-qwen", "vllm:num_requests_waiting", "vllm:e2e_request_latency_seconds", id="vllm"),
        pytest.param(
            "sglang-qwen", "sglang:num_queue_reqs", "sglang:e2e_request_latency_seconds", id="sglang"
        ),
        pytest.param("tgi-qwen", "tgi_queue_size", "tgi_request_duration", id="tgi"),
        pytest.param(
            "qwen-kserve", "vllm:num_requests_waiting", "vllm:e2e_request_latency_seconds", id="kserve"
        ),
        pytest.param("qwen-lws", "vllm:num_requests_waiting", "vllm:e2e_request_latency_seconds", id="lws"),
    ],
)
def test_scaled_object_reads_the_engines_own_metrics(name: str, queue: str, latency: str) -> None:
    scaled = find("ScaledObject", name)
    depth, p99 = scaled["spec"]["triggers"]
    assert (depth["metricType"], p99["metricType"]) == ("AverageValue", "Value")
    assert depth["metadata"]["query"].startswith(f"sum({queue}{{")
    assert f"histogram_quantile(0.99, sum by (le) (rate({latency}_bucket{{" in p99["metadata"]["query"]
    monitor = find("PodMonitor", name)
    assert monitor["spec"]["podMetricsEndpoints"][0]["path"] == "/metrics"


def test_sglang_listens_beyond_localhost_and_exports_metrics() -> None:
    _, container = template_of("Deployment", "sglang-qwen", "")
    assert "--host=0.0.0.0" in container["args"] and "--enable-metrics" in container["args"]
