"""Eviction planning as a table: watermarks, LRU order, pins, disk room."""

from __future__ import annotations

import pytest

from agent.store.eviction import Candidate, Plan, plan_eviction

MiB = 2**20


def m(model_id: str, size_mib: int, last_used: float, pinned: bool = False) -> Candidate:
    return Candidate(model_id, size_mib * MiB, last_used, pinned)


A, B, C = m("a", 30, 1.0), m("b", 30, 2.0), m("c", 30, 3.0)
PA = m("a", 30, 1.0, pinned=True)


@pytest.mark.parametrize(
    ("models", "used", "incoming", "free", "want"),
    [
        pytest.param([A, B, C], 90, 0, None, Plan((), True), id="at-high-nothing"),
        pytest.param([A, B, C], 95, 0, None, Plan(("a", "b"), True), id="gc-over-high-down-to-low"),
        pytest.param([A, B, C], 60, 40, None, Plan(("a", "b"), True), id="incoming-pushes-over-high"),
        pytest.param([PA, B, C], 95, 0, None, Plan(("b", "c"), True), id="pinned-skipped-lru-next"),
        pytest.param([C, B, A], 95, 0, None, Plan(("a", "b"), True), id="order-by-last-used-not-input"),
        pytest.param([m("x", 10, 1.0)], 120, 0, None, Plan(("x",), False), id="gc-over-quota-still-helps"),
        pytest.param([A, B], 60, 20, 10 * MiB, Plan(("a",), True), id="disk-short-frees-enough"),
        pytest.param([A, B], 60, 0, 0, Plan((), True), id="nothing-incoming-disk-full-is-fine"),
        pytest.param(
            [m("y", 10, 5.0), m("x", 10, 5.0)], 95, 0, None, Plan(("x", "y"), True), id="gc-tie-by-id"
        ),
    ],
)
def test_plans(models: list[Candidate], used: int, incoming: int, free: int | None, want: Plan) -> None:
    got = plan_eviction(
        models, used=used * MiB, quota=100 * MiB, high=0.9, low=0.5, incoming=incoming * MiB, free=free
    )
    assert (got.evict, got.fits) == (want.evict, want.fits)


def test_pins_make_room_impossible_evicts_nothing() -> None:
    models = [m("a", 40, 1.0, pinned=True), m("b", 40, 2.0, pinned=True), m("c", 10, 0.5)]
    plan = plan_eviction(models, used=90 * MiB, quota=100 * MiB, high=0.9, low=0.5, incoming=30 * MiB)
    assert plan.evict == () and not plan.fits
    assert "80.0 MiB of it pinned" in plan.reason


def test_disk_too_small_even_after_evicting_all() -> None:
    plan = plan_eviction(
        [A], used=30 * MiB, quota=100 * MiB, high=0.9, low=0.5, incoming=50 * MiB, free=5 * MiB
    )
    assert plan.evict == () and not plan.fits and "free on disk" in plan.reason


def test_inputs_not_mutated() -> None:
    models = [C, A, B]
    plan_eviction(models, used=90 * MiB, quota=100 * MiB, high=0.9, low=0.5)
    assert models == [C, A, B]
