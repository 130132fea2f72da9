"""Every method's schedule, hand-checked: sparsity at given steps and the topology-update steps.

Each method builds one :class:`~sparsetrain.schedules.Schedule` from its options;
``sparsity_at``, ``update_steps``, ``is_update_step`` and ``plan()`` read it. The expected values
below are worked out from the papers' rules (see each method's docstring), not from the code.
"""

from __future__ import annotations

import math

import pytest

from sparsetrain.methods.registry import create_method, list_methods
from sparsetrain.schedules import Schedule


def _sig(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def _cubic(s: float, t: float, t0: float, t1: float, s0: float = 0.0) -> float:
    return s + (s0 - s) * (1.0 - (t - t0) / (t1 - t0)) ** 3


# (method, options, total steps, {step: planned sparsity}, update steps over the total)
CASES: list[tuple[str, dict, int, dict[int, float], list[int]]] = [
    # GMP: cubic from begin_step to end_step (default 0.75·total), pruning every interval and
    # at end_step itself
    (
        "gmp",
        {"update_interval": 25},
        100,
        {0: 0.0, 25: _cubic(0.8, 25, 0, 75), 50: _cubic(0.8, 50, 0, 75), 75: 0.8, 100: 0.8},
        [25, 50, 75],
    ),
    ("gmp", {"update_interval": 20}, 100, {10: _cubic(0.8, 10, 0, 75)}, [20, 40, 60, 75]),
    (
        "gmp",
        {"update_interval": 15, "begin_step": 10, "end_step": 50, "initial_sparsity": 0.5},
        100,
        {0: 0.5, 10: 0.5, 30: 0.8 - 0.3 / 8, 50: 0.8, 99: 0.8},
        [25, 40, 50],
    ),
    ("gmp", {"update_interval": 4, "begin_step": 5, "end_step": 5}, 20, {4: 0.0, 6: 0.8}, [5]),
    # GraNet: GMP's pruning, plus regrowth on the same cadence until one interval before the
    # end (after end_step too by default)
    (
        "granet",
        {"update_interval": 10},
        100,
        {75: 0.8, 30: _cubic(0.8, 30, 0, 75)},
        [10, 20, 30, 40, 50, 60, 70, 75, 80, 90],
    ),
    (
        "granet",
        {"update_interval": 10, "regrow_after_pruning": False},
        100,
        {},
        [10, 20, 30, 40, 50, 60, 70, 75],
    ),
    ("granet", {"update_interval": 10, "end_step": 35}, 40, {35: 0.8}, [10, 20, 30, 35]),
    # DST family: constant sparsity, every interval until stop_fraction·total, and never in the
    # last interval (regrown weights train for at least one interval)
    ("rigl", {"update_interval": 100}, 1000, {0: 0.8, 1000: 0.8}, list(range(100, 701, 100))),
    ("set", {"update_interval": 10}, 100, {0: 0.8}, list(range(10, 91, 10))),
    ("mest", {"update_interval": 30}, 100, {50: 0.8}, [30, 60]),
    ("dst", {"update_interval": 15, "begin_step": 20, "end_step": 60}, 100, {}, [35, 50]),
    ("set", {"update_interval": 1, "end_step": 10}, 10, {}, list(range(1, 10))),
    # ST-3: cubic from begin_step to end_step (defaults 5/170 and 80/170 of the run), τ every
    # update_interval steps of the run plus the ramp's first step, until freeze_step (160/170)
    ("st3", {"update_interval": 40}, 170, {5: 0.0, 80: 0.8}, [6, 40, 80, 120, 160]),
    (
        "st3",
        {"update_interval": 4, "begin_step": 2, "end_step": 10, "freeze_step": 14},
        20,
        {0: 0.0, 2: 0.0, 6: 0.7, 10: 0.8, 20: 0.8},
        [3, 4, 8, 12, 14],
    ),
    ("st3_sigma", {"update_interval": 80}, 170, {}, [6, 80, 160]),
    # DNW: at the target from step 0 (or a cubic ramp), re-selecting every update_interval
    # steps, at the ramp's end and at the last step
    ("dnw", {"update_interval": 3}, 10, {0: 0.8, 10: 0.8}, [3, 6, 9, 10]),
    (
        "dnw",
        {"update_interval": 3, "begin_step": 0, "end_step": 4},
        10,
        {0: 0.0, 2: 0.7, 4: 0.8},
        [3, 4, 6, 9, 10],
    ),
    (
        "dnw",
        {"update_interval": 4, "begin_step": 3, "end_step": 3},
        10,
        {2: 0.0, 3: 0.8},
        [3, 4, 8, 10],
    ),
    # SR-STE: 1 - n/m from step 0, the N:M mask re-selected at every step
    ("srste", {"structure": "1:5"}, 10, {0: 0.8, 10: 0.8}, list(range(1, 11))),
    # static: the mask of attach (random) or of the first batch (SNIP & co, dense before it)
    ("static", {}, 10, {0: 0.8, 10: 0.8}, []),
    ("static", {"init": "snip"}, 10, {0: 0.0, 1: 0.8, 10: 0.8}, [1]),
    ("static", {"init": "magnitude"}, 10, {0: 0.0, 1: 0.8}, [1]),
    # OptG: E = ⌈8/2⌉ = 4 epochs, s(e) = 0.8·σ(e − 2), re-selected per epoch (not at the last
    # step) and held until the next selection; the last epoch (from step 6) forced to the target
    (
        "optg",
        {"steps_per_epoch": 2},
        8,
        {0: 0.8 * _sig(-2), 1: 0.8 * _sig(-2), 2: 0.8 * _sig(-1), 5: 0.4, 6: 0.8, 8: 0.8},
        [2, 4, 6],
    ),
    (
        "optg",
        {"steps_per_epoch": 2, "update_interval": 3, "final_epochs_at_target": 0},
        8,
        {
            2: 0.8 * _sig(-2),
            3: 0.8 * _sig(-1),
            5: 0.8 * _sig(-1),
            6: 0.8 * _sig(1),
            8: 0.8 * _sig(1),
        },
        [3, 6],
    ),
    (
        "optg",
        {"steps_per_epoch": 10, "update_interval": 4, "final_epochs_at_target": 2},
        45,  # E = 5: the forced epochs start at step 30, between two selections
        {29: 0.8 * _sig(-0.5), 30: 0.8, 31: 0.8, 45: 0.8},
        [4, 8, 12, 16, 20, 24, 28, 30, 32, 36, 40, 44],
    ),
    # methods whose sparsity is not scheduled: no topology update, constant planned sparsity
    ("dense", {}, 10, {0: 0.0, 10: 0.0}, []),
    ("scl", {}, 10, {5: 0.0}, []),
    ("str", {}, 10, {5: 0.0}, []),
]

_NO_SPARSITY = ("dense", "scl", "str")


def _method(name: str, options: dict, total: int):
    base = {} if name in _NO_SPARSITY else {"sparsity": 0.8}
    return create_method(name, **base, total_steps=total, **options)


def test_every_registered_method_is_covered() -> None:
    assert {c[0] for c in CASES} == set(list_methods())


@pytest.mark.parametrize(("name", "options", "total", "sparsity", "steps"), CASES)
def test_schedule(name: str, options: dict, total: int, sparsity: dict, steps: list[int]) -> None:
    method = _method(name, options, total)
    assert isinstance(method.schedule, Schedule)
    for step, expected in sparsity.items():
        assert method.sparsity_at(step) == pytest.approx(expected, abs=1e-12), step
    assert method.update_steps(total) == steps
    assert [s for s in range(1, total + 1) if method.is_update_step(s)] == steps
    plan = method.plan()
    assert plan.update_steps == steps
    assert plan.curve == [(s, method.sparsity_at(s)) for s, _ in plan.curve]


def test_plan_curve_of_gmp() -> None:
    plan = create_method("gmp", sparsity=0.8, total_steps=100, update_interval=25).plan(points=5)
    assert [s for s, _ in plan.curve] == [0, 25, 50, 75, 100]
    assert [v for _, v in plan.curve] == pytest.approx(
        [0.0, 0.8 * 19 / 27, 0.8 * 26 / 27, 0.8, 0.8], abs=1e-12
    )


def test_granet_regrowth_steps() -> None:
    m = _method("granet", {"update_interval": 10, "end_step": 35}, 40)
    assert [s for s in range(1, 41) if m.is_regrow_step(s)] == [10, 20, 30]


def test_st3_is_frozen_after_freeze_step() -> None:
    m = _method(
        "st3", {"update_interval": 4, "begin_step": 2, "end_step": 10, "freeze_step": 14}, 20
    )
    assert not any(m.is_update_step(s) for s in range(15, 30))


def test_update_steps_follow_the_planned_length() -> None:
    """``update_steps(n)`` plans a run of ``n`` steps (DNW: the last of them; OptG: not it)."""
    assert _method("dnw", {"update_interval": 3}, 10).update_steps(7) == [3, 6, 7]
    assert _method("optg", {"steps_per_epoch": 2}, 8).update_steps(4) == [2]
    assert _method("gmp", {"update_interval": 25}, 100).update_steps(60) == [25, 50]
