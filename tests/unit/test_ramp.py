"""Warm capacity from the ramp: the HPA scale-up simulation, pods per node, the node count
(named table rows, including the worked example of docs/time-to-ready.md)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from scheduler_extender.ramp import (
    DEFAULT_POLICIES,
    Policy,
    ScaleUp,
    Workload,
    from_deployment,
    from_hpa,
    gpus_per_pod,
    parse_scale_up,
    pods_per_node,
    replicas_after,
    warm_nodes,
)

SLOW = ScaleUp((Policy("Pods", 2, 60),))
CAREFUL = ScaleUp((Policy("Percent", 100, 15), Policy("Pods", 1, 15)), "Min")


@pytest.mark.parametrize(
    ("name", "current", "top", "rules", "seconds", "expected"),
    [
        ("defaults, syncs at 0, 15, 30 s: 2 -> 6 -> 12 -> 24", 2, 1000, ScaleUp(), 45, 24),
        ("defaults: +4 pods beats +100% while small", 1, 1000, ScaleUp(), 15, 5),
        ("defaults are capped at maxReplicas", 2, 20, ScaleUp(), 300, 20),
        ("no time: no growth", 3, 50, ScaleUp(), 0, 3),
        ("2 pods per 60 s over 120 s", 4, 50, SLOW, 120, 8),
        ("2 pods per 60 s over 121 s: one more sync", 4, 50, SLOW, 121, 10),
        ("Min of +100% and +1 pod per 15 s", 4, 50, CAREFUL, 60, 8),
        ("disabled", 4, 50, ScaleUp(DEFAULT_POLICIES, "Disabled"), 600, 4),
        ("10% of 10 rounds up to 1 pod", 10, 50, ScaleUp((Policy("Percent", 10, 15),)), 15, 11),
        ("current above max is held at max", 60, 50, ScaleUp(), 60, 50),
    ],
)  # fmt: skip
def test_replicas_after(  # noqa: PLR0917
    name: str, current: int, top: int, rules: ScaleUp, seconds: float, expected: int
) -> None:
    assert replicas_after(current, top, rules, seconds) == expected, name


@pytest.mark.parametrize(
    ("name", "gpus", "per_pod", "expected"),
    [
        ("8-GPU nodes, 2-GPU pods", [8, 8], 2, 4),
        ("the smallest GPU node counts", [8, 4], 2, 2),
        ("pod larger than a node still needs a node", [4], 8, 1),
        ("GPUs per pod unknown", [8], 0, 1),
        ("no GPU nodes", [0, 0], 1, 1),
    ],
)
def test_pods_per_node(name: str, gpus: list[int], per_pod: int, expected: int) -> None:
    assert pods_per_node(gpus, per_pod) == expected, name


def test_worked_example_of_the_docs() -> None:
    """docs/time-to-ready.md: 6 replicas, max 40, +4 pods per 30 s, cold start 90 s, 2 pods/node."""
    hpa = Workload("hpa", 6, 40, ScaleUp((Policy("Pods", 4, 30),)), gpus_per_pod=4)
    nodes, status = warm_nodes(hpa, 90.0, pods_per_node([8, 8, 8], 4))
    # syncs at 0, 15, 30, 45, 60, 75 s: +4 at 0, +4 at 30, +4 at 60 -> 18 replicas
    assert status["replicasAfterColdStart"] == 18
    assert status["podsPerNode"] == 2
    assert nodes == 9
    assert status["arithmetic"].startswith("ceil(R(90s) / podsPerNode) = ceil(18 / 2) = 9")
    default = replace(hpa, scale_up=ScaleUp())  # the HPA default: 6 -> 12 -> 24 -> 40 (the cap)
    assert warm_nodes(default, 90.0, 2)[0] == 20
    assert warm_nodes(default, 20.0, 2)[0] == 12  # a 20 s cold start: two syncs, 24 replicas


@pytest.mark.parametrize(
    ("name", "workload", "cold", "expected"),
    [
        ("no autoscaler: its replicas", Workload("dep", 5, gpus_per_pod=1), 300.0, 5),
        ("at least one node", Workload("dep", 0), 300.0, 1),
        ("maxReplicas caps it", Workload("hpa", 2, 10, ScaleUp()), 300.0, 10),
        ("a longer cold start needs more warm nodes", Workload("hpa", 4, 50, SLOW), 300.0, 14),
        ("a shorter one fewer", Workload("hpa", 4, 50, SLOW), 60.0, 6),
    ],
)
def test_warm_nodes(name: str, workload: Workload, cold: float, expected: int) -> None:
    nodes, _ = warm_nodes(workload, cold, 1)
    assert nodes == expected, name


def deployment(replicas: int, gpus: str | None = "2") -> dict[str, Any]:
    limits = {"nvidia.com/gpu": gpus} if gpus else {}
    return {
        "metadata": {"namespace": "ml", "name": "serve"},
        "spec": {
            "replicas": replicas,
            "template": {
                "spec": {"containers": [{"name": "s", "resources": {"limits": limits}}, {"name": "side"}]}
            },
        },
        "status": {"replicas": replicas},
    }


def test_workloads_from_objects() -> None:
    dep = from_deployment(deployment(3))
    assert (dep.current, dep.max_replicas, dep.scale_up, dep.gpus_per_pod) == (3, None, None, 2)
    hpa = {
        "metadata": {"namespace": "ml", "name": "serve"},
        "spec": {
            "minReplicas": 2,
            "maxReplicas": 30,
            "scaleTargetRef": {"kind": "Deployment", "name": "serve"},
            "behavior": {"scaleUp": {"policies": [{"type": "Pods", "value": 2, "periodSeconds": 60}]}},
        },
        "status": {"currentReplicas": 5, "desiredReplicas": 7},
    }
    got = from_hpa(hpa, deployment(5))
    assert (got.current, got.max_replicas, got.gpus_per_pod) == (7, 30, 2)
    assert got.scale_up == SLOW
    assert got.source == "HorizontalPodAutoscaler ml/serve -> Deployment serve"
    assert from_hpa(hpa, None).gpus_per_pod == 0


@pytest.mark.parametrize(
    ("name", "behavior", "expected"),
    [
        ("absent: defaults", None, ScaleUp()),
        ("empty scaleUp: defaults", {"scaleUp": {}}, ScaleUp()),
        ("select Min kept", {"scaleUp": {"selectPolicy": "Min"}}, ScaleUp(DEFAULT_POLICIES, "Min")),
        ("unknown select: Max", {"scaleUp": {"selectPolicy": "Most"}}, ScaleUp()),
        ("junk policies dropped", {"scaleUp": {"policies": [{"type": "Foo", "value": 1}, "x"]}}, ScaleUp()),
    ],
)
def test_parse_scale_up(name: str, behavior: object, expected: ScaleUp) -> None:
    assert parse_scale_up(behavior) == expected, name


def test_gpus_per_pod_reads_limits_then_requests() -> None:
    spec = {
        "containers": [
            {"resources": {"limits": {"nvidia.com/gpu": "2"}}},
            {"resources": {"requests": {"nvidia.com/gpu": 1}}},
            {"resources": {"limits": {"nvidia.com/gpu": "lots"}}},
        ]
    }
    assert gpus_per_pod(spec) == 3
