"""No topology update whose regrown weights cannot train (never at the final step)."""

import pytest

from sparsetrain import create_method


@pytest.mark.parametrize("name", ["set", "dst", "mest"])
def test_until_the_end_schedules_stop_one_interval_early(name: str) -> None:
    m = create_method(name, sparsity=0.9, total_steps=100, update_interval=10)
    steps = m.update_steps(100)
    assert steps[-1] == 90 and 100 not in steps  # the last grown weights train 10 steps


def test_rigl_keeps_its_75_percent_stop() -> None:
    m = create_method("rigl", sparsity=0.9, total_steps=1000, update_interval=100)
    assert m.update_steps(1000)[-1] == 700


def test_explicit_end_step_never_reaches_the_final_step() -> None:
    m = create_method("set", sparsity=0.9, total_steps=100, update_interval=1, end_step=100)
    assert m.update_steps(100)[-1] == 99


def test_granet_regrowth_leaves_an_interval_of_training() -> None:
    m = create_method("granet", sparsity=0.9, total_steps=100, update_interval=10)
    regrow = [s for s in range(1, 101) if m.is_regrow_step(s)]
    assert regrow and max(regrow) <= 90


def test_plan_always_shows_the_last_update() -> None:
    text = str(create_method("set", sparsity=0.9, total_steps=1000, update_interval=10).plan())
    assert "topology updates: 99 at steps 10, 20," in text and "..., 980, 990" in text
    assert "last topology update: step 990" in text
