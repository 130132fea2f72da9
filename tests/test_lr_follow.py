"""Every parameter a method trains follows the LR schedule, step by step.

Methods never add parameter groups to the user's optimizer: OptG's scores, SCL's mask variables
and STR's thresholds are stepped by a ``sparsetrain.optim.Companion`` whose groups take the LR
of a user group at every step.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import sparsetrain
from sparsetrain.config import ExperimentConfig
from sparsetrain.optim import Companion, group_of
from sparsetrain.train.build import lr_factor
from sparsetrain.train.experiment import build_run, load_splits
from sparsetrain.train.loop import forward_backward, update

CASES = {
    "str": dict(threshold_lr=0.05, threshold_weight_decay=0.0),
    "scl": dict(lam=0.1, mask_lr=0.02),
    "scl-user": dict(lam=0.1, mask_lr=0.02, mask_optimizer="user"),
    "optg": dict(sparsity=0.5, steps_per_epoch=2),
}


def _companion(method: sparsetrain.SparsityMethod) -> Companion:
    for value in vars(method).values():
        if isinstance(value, Companion) and value.groups:
            return value
    raise AssertionError("no companion")


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))


@pytest.mark.parametrize("before", [True, False], ids=["sched-before", "sched-after"])
@pytest.mark.parametrize("case", list(CASES))
def test_companion_lr_follows_a_user_scheduler(case: str, before: bool) -> None:
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    lam = lambda step: 0.5**step  # noqa: E731
    if before:
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lam)
    method = sparsetrain.create_method(case.split("-")[0], total_steps=8, **CASES[case])
    method.attach(model, opt)
    if not before:
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lam)
    n_groups = len(opt.param_groups)
    comp = _companion(method)
    x, y = torch.randn(16, 6), torch.randint(0, 3, (16,))
    for step in range(6):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        for group, anchor in zip(comp.groups, comp._anchors, strict=True):
            # the LR this step ran at: the user's group LR at step time times the group's scale
            assert group["lr"] == pytest.approx(0.1 * 0.5**step * group["lr_scale"])
            assert group_of(opt, anchor)["lr"] == pytest.approx(0.1 * 0.5**step)
        sched.step()  # no zip() length error: the user's groups never changed
        assert len(opt.param_groups) == n_groups


@pytest.mark.parametrize("case", ["str", "scl", "optg"])
def test_harness_schedule_reaches_every_group_at_every_step(case: str) -> None:
    opts = {k: v for k, v in CASES[case].items() if k != "steps_per_epoch"}
    cfg = ExperimentConfig.from_dict(
        {
            "data": {"name": "synthetic", "n_train": 64, "n_test": 16},
            "model": {"name": "mlp", "hidden_sizes": [16]},
            "method": {"name": case, **opts},
            "optim": {"name": "sgd", "lr": 0.1, "weight_decay": 1e-3, "schedule": "cosine"},
            "train": {"epochs": 2, "batch_size": 16, "plots": False},
        }
    )
    run = build_run(cfg, load_splits(cfg, None, augment=False))
    comp = _companion(run.method)
    for step in range(run.total_steps):
        micro = [
            (
                torch.randn(16, *run.splits.input_shape),
                torch.randint(0, run.splits.num_classes, (16,)),
            )
        ]
        forward_backward(run, micro)
        update(run)
        run.state.step += 1
        factor = lr_factor(step, cfg.optim, run.steps_per_epoch, cfg.train.epochs)
        for group in run.optimizer.param_groups:
            assert group["lr"] == pytest.approx(0.1 * factor)
        for group in comp.groups:
            assert group["lr"] == pytest.approx(0.1 * factor * group["lr_scale"])
