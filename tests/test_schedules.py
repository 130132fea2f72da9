"""Schedules: polynomial/cubic, OptG's sigmoid ramp, cosine decay, the update cadence."""

from __future__ import annotations

import math

import pytest

from sparsetrain.schedules import (
    ConstantRamp,
    PolynomialRamp,
    Schedule,
    SigmoidRamp,
    StepRamp,
    UpdateSchedule,
    constant,
    cosine_decay,
    cubic,
    polynomial,
    sigmoid_ramp,
)


def test_constant() -> None:
    assert constant(0, 0.3) == 0.3
    assert constant(10**6, 0.3) == 0.3


def test_polynomial_cubic_values() -> None:
    kw = dict(initial=0.0, final=0.8, start=0, end=100)
    assert polynomial(0, **kw) == 0.0
    # 0.8 - 0.8 * (1 - 1/4)^3 = 0.8 - 0.8 * 27/64 = 0.4625
    assert polynomial(25, **kw) == pytest.approx(0.4625)
    # 0.8 - 0.8 * (1/2)^3 = 0.7
    assert polynomial(50, **kw) == pytest.approx(0.7)
    assert polynomial(100, **kw) == 0.8
    assert polynomial(150, **kw) == 0.8  # held after the end
    assert cubic(50, final=0.8, start=0, end=100) == pytest.approx(0.7)


def test_polynomial_window_and_power() -> None:
    kw = dict(initial=0.5, final=0.9, start=10, end=20)
    assert polynomial(5, **kw) == 0.5  # before the start: initial
    assert polynomial(10, **kw) == 0.5
    # 0.9 + (0.5 - 0.9) * (1 - 1/2)^3 = 0.85
    assert polynomial(15, **kw) == pytest.approx(0.85)
    assert polynomial(20, **kw) == 0.9
    # power 1: linear, halfway between 0.5 and 0.9
    assert polynomial(15, power=1.0, **kw) == pytest.approx(0.7)
    assert cubic(15, initial=0.5, final=0.9, start=10, end=20) == pytest.approx(0.85)


def test_polynomial_end_before_start() -> None:
    with pytest.raises(ValueError, match=r"schedule end \(10\) is before its start \(100\)"):
        polynomial(50, initial=0.0, final=0.5, start=100, end=10)


def test_sigmoid_ramp_spec_values() -> None:
    # spec §2.3, E = 160: s(80) = 50 % of target, s(75) ~ 0.7 %, s(85) ~ 99.3 %
    target = 0.9
    assert sigmoid_ramp(80, target=target, total_epochs=160) == pytest.approx(0.45)
    s75 = sigmoid_ramp(75, target=target, total_epochs=160) / target
    s85 = sigmoid_ramp(85, target=target, total_epochs=160) / target
    assert s75 == pytest.approx(1 / (1 + math.exp(5)))  # 0.006693
    assert round(100 * s75, 1) == 0.7
    assert round(100 * s85, 1) == 99.3
    assert s75 + s85 == pytest.approx(1.0)  # symmetric around E/2
    # E = 10: sigma(4) ~ 0.982 at the last epoch (spec's short-run note)
    assert sigmoid_ramp(9, target=1.0, total_epochs=10) == pytest.approx(1 / (1 + math.exp(-4)))
    # a steeper beta reaches the target sooner
    assert sigmoid_ramp(85, target=1.0, total_epochs=160, beta=2.0) == pytest.approx(
        1 / (1 + math.exp(-10))
    )


@pytest.mark.parametrize("beta", [0.0, -1.0])
def test_sigmoid_ramp_bad_beta(beta: float) -> None:
    with pytest.raises(ValueError, match=f"beta must be > 0, got {beta}"):
        sigmoid_ramp(1, target=0.9, total_epochs=10, beta=beta)


def test_cosine_decay() -> None:
    kw = dict(initial=0.5, final=0.005, total=100)
    assert cosine_decay(0, **kw) == pytest.approx(0.5)
    # midpoint: final + (initial - final) / 2 = 0.005 + 0.2475
    assert cosine_decay(50, **kw) == pytest.approx(0.2525)
    # quarter: final + 0.5 * 0.495 * (1 + cos(pi/4))
    assert cosine_decay(25, **kw) == pytest.approx(0.005 + 0.2475 * (1 + math.sqrt(0.5)))
    assert cosine_decay(100, **kw) == pytest.approx(0.005)
    assert cosine_decay(500, **kw) == pytest.approx(0.005)  # held afterwards
    assert cosine_decay(-3, **kw) == pytest.approx(0.5)  # clamped at the start
    assert cosine_decay(7, initial=0.5, final=0.1, total=0) == 0.1
    # RigL: zeta/2 * (1 + cos(pi t / T)) with zeta = 0.3
    assert cosine_decay(50, initial=0.3, final=0.0, total=100) == pytest.approx(0.15)


def test_update_schedule_with_window() -> None:
    s = UpdateSchedule(5, start=10, end=30)
    assert [t for t in range(0, 41) if s.is_update(t)] == [15, 20, 25, 30]
    assert s.steps(100) == [15, 20, 25, 30]
    assert s.steps(22) == [15, 20]
    assert s.steps(10) == []


def test_update_schedule_open_ended() -> None:
    s = UpdateSchedule(5)
    assert not s.is_update(0)
    assert [t for t in range(1, 21) if s.is_update(t)] == [5, 10, 15, 20]
    assert s.steps(20) == [5, 10, 15, 20]
    assert s.steps(19) == [5, 10, 15]
    # start not a multiple of the interval: counted from the start
    s2 = UpdateSchedule(4, start=3)
    assert s2.steps(15) == [7, 11, 15]
    assert all(s2.is_update(t) == (t in (7, 11, 15)) for t in range(16))


def test_update_schedule_empty_window() -> None:
    s = UpdateSchedule(1, start=5, end=5)
    assert s.steps(100) == []
    assert not any(s.is_update(t) for t in range(20))


@pytest.mark.parametrize("interval", [0, -1])
def test_update_schedule_interval_not_positive(interval: int) -> None:
    with pytest.raises(ValueError, match=f"update interval must be > 0, got {interval}"):
        UpdateSchedule(interval)


@pytest.mark.parametrize("interval", [2.5, 5.0, "5", True])
def test_update_schedule_interval_not_int(interval: object) -> None:
    with pytest.raises(TypeError, match="update interval must be an int"):
        UpdateSchedule(interval)  # type: ignore[arg-type]


def test_update_schedule_end_before_start() -> None:
    with pytest.raises(ValueError, match=r"schedule end \(10\) is before its start \(100\)"):
        UpdateSchedule(5, start=100, end=10)


def test_update_schedule_negative_start() -> None:
    with pytest.raises(ValueError, match="update start must be >= 0, got -1"):
        UpdateSchedule(5, start=-1)


# --------------------------------------------------------------------------- schedule objects


def test_update_schedule_phase_and_single_steps() -> None:
    """ST-3's cadence: τ on multiples of 4 of the run after step 2, plus steps 3 and 14."""
    s = UpdateSchedule(4, start=2, end=14, phase=0, at=(3, 14))
    assert s.steps(20) == [3, 4, 8, 12, 14]
    assert s.steps(10) == [3, 4, 8]
    assert [t for t in range(25) if s.is_update(t)] == [3, 4, 8, 12, 14]
    assert s.latest(2) is None and s.latest(7) == 4 and s.latest(100) == 14


def test_update_schedule_final_step_rules() -> None:
    always = UpdateSchedule(3, final="always", total=10)  # DNW: also the last step
    assert always.steps(10) == [3, 6, 9, 10] and always.steps(7) == [3, 6, 7]
    assert always.is_update(10) and always.is_update(12) and not always.is_update(11)
    never = UpdateSchedule(2, final="never", total=8)  # OptG: never at or after the last step
    assert never.steps(8) == [2, 4, 6] and never.steps(5) == [2, 4]
    assert not never.is_update(8) and not never.is_update(10)
    assert never.latest(100) == 6


def test_update_schedule_offset_moves_every_update() -> None:
    """One field moves a per-epoch cadence to the first step of the next epoch."""
    s = UpdateSchedule(10, at=(25,), final="never", total=40, offset=1)
    assert s.steps(40) == [11, 21, 26, 31]
    assert s.is_update(11) and not s.is_update(10) and s.latest(20) == 11


def test_update_schedule_only_single_steps() -> None:
    s = UpdateSchedule(None, at=(1,))
    assert s.steps(10) == [1] and s.is_update(1) and not s.is_update(2)


def test_update_schedule_bad_final() -> None:
    with pytest.raises(ValueError, match=r"final must be one of plain, always, never, got 'x'"):
        UpdateSchedule(5, final="x")


def test_ramps() -> None:
    assert ConstantRamp(0.3).at(7) == 0.3
    assert [StepRamp(0.8, 3).at(t) for t in (0, 2, 3, 9)] == [0.0, 0.0, 0.8, 0.8]
    cube = PolynomialRamp(0.0, 0.8, 0, 100)
    assert cube.at(50) == cubic(50, final=0.8, start=0, end=100)
    with pytest.raises(ValueError, match=r"schedule end \(10\) is before its start \(100\)"):
        PolynomialRamp(0.0, 0.8, 100, 10)
    sig = SigmoidRamp(0.9, epochs=160, steps_per_epoch=10, final_epochs=1)
    assert sig.at(809) == pytest.approx(sigmoid_ramp(80, target=0.9, total_epochs=160))
    forced = SigmoidRamp(0.8, epochs=4, steps_per_epoch=2, final_epochs=1)
    assert [forced.fraction(e) for e in (2, 3)] == [0.5, 1.0] and forced.at(5) == 0.4


def test_schedule_union_and_held_sparsity() -> None:
    ramp = SigmoidRamp(0.8, epochs=4, steps_per_epoch=2)
    held = Schedule(ramp, (UpdateSchedule(3, final="never", total=8),), held=True)
    assert held.update_steps(8) == [3, 6]
    # the sparsity of the latest selection: step 0's until 3, step 3's (epoch 1) until 6
    assert [held.sparsity_at(t) for t in (0, 2, 3, 5, 6, 8)] == [
        ramp.at(0),
        ramp.at(0),
        ramp.at(3),
        ramp.at(3),
        ramp.at(6),
        ramp.at(6),
    ]
    both = Schedule(ConstantRamp(0.5), (UpdateSchedule(4), UpdateSchedule(None, at=(5,))))
    assert both.update_steps(12) == [4, 5, 8, 12] and both.is_update(5) and not both.is_update(6)
    assert not Schedule(ConstantRamp(0.5)).update_steps(10)
