"""``total_steps`` counts optimizer steps taken; a run that ends before its schedule is loud."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from sparsetrain import ScheduleWarning, SparsityMethod, SparsityTargetError, create_method

TOTAL = 30
SKIPPED = (4, 9, 17)  # iterations whose gradients are inf: GradScaler skips their step


def _model() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))


def _train_with_scaler(method_name: str, iterations: int, **opts: object):
    """``iterations`` batches under a CPU GradScaler, with ``total_steps`` set to iterations."""
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    method = create_method(method_name, total_steps=TOTAL, **opts).attach(model, opt)
    scaler = torch.amp.GradScaler("cpu", init_scale=16.0)
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(32, 8, generator=g), torch.randint(0, 4, (32,), generator=g)
    for it in range(iterations):
        loss = nn.functional.cross_entropy(model(x), y)
        if it in SKIPPED:
            loss = loss * float("inf")
        opt.zero_grad()
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
    return method


def test_skipped_steps_do_not_count() -> None:
    method = _train_with_scaler("static", TOTAL, sparsity=0.5)
    assert method.step == TOTAL - len(SKIPPED)


def test_gmp_ending_short_warns_then_raises() -> None:
    method = _train_with_scaler("gmp", TOTAL, sparsity=0.8, update_interval=10, end_step=TOTAL)
    with (
        pytest.warns(ScheduleWarning, match=r"ended after 27 optimizer steps.*total_steps=30"),
        pytest.raises(SparsityTargetError),
    ):
        method.finish()


def test_st3_never_reaching_its_fix_step_is_loud() -> None:
    # freeze_step 28: after 27 steps taken the fine-tune with the fixed, exact mask never ran
    method = _train_with_scaler(
        "st3", TOTAL, sparsity=0.8, begin_step=2, end_step=15, freeze_step=28
    )
    assert not any(h.get("event") == "fix" for h in method.history)
    with pytest.warns(ScheduleWarning, match=r"did not run \(the last at step 28"):
        method.finish()


def test_full_run_and_scheduleless_methods_do_not_warn() -> None:
    method = _train_with_scaler(
        "gmp", TOTAL + len(SKIPPED), sparsity=0.8, update_interval=10, end_step=TOTAL
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        method.finish()
        # a static mask has nothing left to do: ending early is not a schedule miss
        _train_with_scaler("static", TOTAL, sparsity=0.5).finish()


def test_total_steps_docstring_says_what_counts() -> None:
    doc = " ".join((SparsityMethod.__doc__ or "").split())
    assert "counts the optimizer steps actually taken" in doc
    assert "GradScaler" in doc and "accumulation" in doc
