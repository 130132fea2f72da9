"""Periodic topology updates take effect at the next training forward, not after their step.

An end-of-epoch evaluation runs between the epoch's last optimizer step and the next epoch's
first forward. A method that changed its masks in the post-step hook of that last step (OptG's
per-epoch re-selection, SET's per-epoch prune-and-regrow, GMP, RigL, GraNet on a step that is an
epoch's last) would have that evaluation score a topology that never trained. These tests pin
what a user sees between two steps: the masks that trained; the update on the next training
forward (train mode, gradients on); training itself unchanged; a checkpoint taken in between
resumes exactly.
"""

from __future__ import annotations

import copy
import warnings
from typing import Any

import pytest
import torch
from torch import nn

from sparsetrain import create_method
from sparsetrain.methods import ScheduleWarning, list_methods

STEPS = 9
CASES: dict[str, dict[str, Any]] = {  # every method updates at step 3 (and 6) of 9
    "optg": {"sparsity": 0.8, "steps_per_epoch": 3},
    "set": {"sparsity": 0.8, "update_interval": 3},
    "rigl": {"sparsity": 0.8, "update_interval": 3},
    "dst-dense-inactive": {"sparsity": 0.8, "update_interval": 3, "inactive_grads": "dense"},
    "gmp": {"sparsity": 0.8, "begin_step": 0, "end_step": 6, "update_interval": 3},
    "granet": {"sparsity": 0.8, "begin_step": 0, "end_step": 6, "update_interval": 3},
}


def _method(key: str) -> Any:
    name = "dst" if key.startswith("dst") else key
    return create_method(name, total_steps=STEPS, seed=1, **CASES[key])


def _setup(key: str) -> tuple[nn.Module, torch.optim.Optimizer, Any]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 4))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    return model, opt, _method(key).attach(model, opt)


def _batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(step)
    return torch.randn(8, 12, generator=g), torch.randint(0, 4, (8,), generator=g)


def _train_step(model: nn.Module, opt: torch.optim.Optimizer, step: int) -> float:
    x, y = _batch(step)
    loss = nn.functional.cross_entropy(model(x), y)
    opt.zero_grad()
    loss.backward()
    opt.step()
    return loss.item()


def _masks(method: Any) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in method.state_dict()["masks"].items()}


def _evaluate(model: nn.Module) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        out = model(_batch(100)[0])
    model.train()
    return out


@pytest.mark.parametrize("key", list(CASES))
def test_between_steps_the_model_is_the_one_that_trained(key: str) -> None:
    model, opt, method = _setup(key)
    for step in (1, 2):
        _train_step(model, opt, step)
    trained = _masks(method)  # the masks step 3's forward and backward use
    updates = len(method.history)
    _train_step(model, opt, 3)  # an update step
    assert method.is_update_step(3)
    before = _evaluate(model)
    with torch.no_grad():  # train mode without gradients: still not a training forward
        model(_batch(101)[0])
    after_eval = _masks(method)
    assert all(torch.equal(after_eval[k], trained[k]) for k in trained)
    assert len(method.history) == updates
    weights = [t.param.detach().clone() for t in method.targets]
    assert all(  # pruned entries of the trained masks are zero in the evaluated model
        torch.all(w[~trained[t.name]] == 0) for w, t in zip(weights, method.targets, strict=True)
    )
    assert torch.equal(_evaluate(model), before)  # evaluating twice changes nothing
    model(_batch(4)[0])  # the next training forward: the update of step 3 takes effect
    assert method.history[-1]["step"] == 3
    assert any(not torch.equal(method.targets[i].mask, m) for i, m in enumerate(trained.values()))


@pytest.mark.parametrize("key", list(CASES))
def test_evaluations_between_steps_leave_training_unchanged(key: str) -> None:
    plain, opt_a, method_a = _setup(key)
    looked, opt_b, method_b = _setup(key)
    losses_a = [_train_step(plain, opt_a, s) for s in range(1, STEPS + 1)]
    losses_b = []
    for s in range(1, STEPS + 1):
        losses_b.append(_train_step(looked, opt_b, s))
        _evaluate(looked)
    assert losses_a == losses_b
    for a, b in zip(plain.state_dict().values(), looked.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert method_a.history == method_b.history


@pytest.mark.parametrize("key", list(CASES))
def test_a_checkpoint_between_an_update_step_and_the_next_forward_resumes_exactly(
    key: str,
) -> None:
    model, opt, method = _setup(key)
    losses = [_train_step(model, opt, s) for s in range(1, STEPS + 1)]
    history = method.history
    model, opt, method = _setup(key)
    for s in (1, 2, 3):
        _train_step(model, opt, s)
    saved = copy.deepcopy(
        {"model": model.state_dict(), "opt": opt.state_dict(), "method": method.state_dict()}
    )
    resumed, opt_r, method_r = _setup(key)
    resumed.load_state_dict(saved["model"])
    opt_r.load_state_dict(saved["opt"])
    method_r.load_state_dict(saved["method"])
    assert [_train_step(resumed, opt_r, s) for s in range(4, STEPS + 1)] == losses[3:]
    assert method_r.history == history


@pytest.mark.parametrize("key", ["gmp", "optg"])
def test_an_update_at_the_last_step_is_applied_at_once(key: str) -> None:
    options = {**CASES[key], "end_step": STEPS} if key == "gmp" else CASES[key]
    model = nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 4))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    method = create_method(key, total_steps=STEPS, **options).attach(model, opt)
    for s in range(1, STEPS + 1):
        _train_step(model, opt, s)
    assert abs(method.report().sparsity - 0.8) < 0.01  # no forward after the last step


def test_methods_with_periodic_updates_defer_them() -> None:
    """Every registered method whose masks change on some steps only defers those changes."""
    every_step = {"st3", "st3_sigma", "dnw", "srste", "scl", "str", "dense", "static"}
    for name in list_methods():
        cls = type(create_method(name, **_minimal(name)))
        assert cls.defers_updates == (name not in every_step), name


def _minimal(name: str) -> dict[str, Any]:
    options: dict[str, Any] = {"total_steps": 100}
    if name == "optg":
        options["steps_per_epoch"] = 10
    if name in ("str", "dense"):
        return {}
    if name == "scl":
        return {"total_steps": 100}
    return options


def test_optg_warns_when_the_per_epoch_cadence_has_too_few_epochs() -> None:
    model = nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 4))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    short_run = create_method("optg", sparsity=0.8, steps_per_epoch=10, total_steps=200)
    assert "update_interval=10" in str(short_run.plan())  # 20 epochs
    with pytest.warns(ScheduleWarning, match="this run has 20; set update_interval=10"):
        short_run.attach(model, opt)
    short_run.detach()
    quiet = [
        create_method("optg", sparsity=0.8, steps_per_epoch=10, total_steps=600),  # 60 epochs
        create_method(
            "optg", sparsity=0.8, steps_per_epoch=10, total_steps=200, update_interval=10
        ),
        create_method(
            "optg", sparsity=0.8, steps_per_epoch=10, total_steps=200, update_interval=10
        ),
    ]
    for method in quiet:
        assert "warning" not in str(method.plan())
        with warnings.catch_warnings():
            warnings.simplefilter("error", ScheduleWarning)
            method.attach(model, opt).detach()
