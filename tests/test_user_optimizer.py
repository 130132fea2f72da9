"""The user's optimizer is never changed, and mixed precision changes nothing a method does.

For every registered method (weight decay on, the optimizer built from the method's recipe groups
as the README says):

- ``optimizer.param_groups`` (which parameters, in which group, every hyper-parameter) and the
  optimizer's state keys are the same before ``attach``, after training steps and after
  ``detach``: what a method trains itself (OptG's scores, SCL's mask variables, STR's thresholds)
  never joins the user's optimizer.
- A run under ``torch.amp.GradScaler("cpu", init_scale=1024)``, with the optimizer built from the
  recipe groups or from ``model.parameters()`` with one weight decay, gives the same trajectory,
  bit for bit, as the run without it (the scale is a power of two, so scaling and unscaling are
  exact): losses, weights, masks and every tensor the method owns. One step in the middle has an
  infinite loss: the scaler skips it, and so does everything the method owns (no step counted, no
  score, mask variable or threshold moved), so the rest of the run equals the run that never saw
  that batch.
- Under CPU ``torch.autocast`` (bfloat16) every method trains and keeps its parameters fp32.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

from sparsetrain import get_method_info, list_methods
from test_conformance import SPARSITY, build, data

STEPS = 30
INF_AT = 7  # the batch index whose loss is made infinite in the scaler run


def _groups(opt: torch.optim.Optimizer) -> list[dict[str, Any]]:
    return [
        {k: [id(p) for p in v] if k == "params" else v for k, v in g.items()}
        for g in opt.param_groups
    ]


def _tensors(x: Any, prefix: str = "") -> dict[str, torch.Tensor]:
    """Every tensor in a nested state (dicts, lists), by its path."""
    if isinstance(x, torch.Tensor):
        return {prefix: x.detach().clone()}
    items = x.items() if isinstance(x, dict) else enumerate(x) if isinstance(x, list) else []
    out: dict[str, torch.Tensor] = {}
    for k, v in items:
        out |= _tensors(v, f"{prefix}/{k}")
    return out


def _train(name: str, scaler: torch.amp.GradScaler | None, recipe: bool) -> dict[str, Any]:
    model, opt, method = build(name, recipe=recipe)
    losses = []
    batches = [b for b in range(STEPS + 1) if scaler is not None or b != INF_AT]
    for b in batches:
        x, y = data(b)
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        if scaler is None:
            loss.backward()
            opt.step()
        else:
            scaler.scale(loss * (float("inf") if b == INF_AT else 1.0)).backward()
            scaler.step(opt)
            scaler.update()
        losses.append(loss.item())
    if scaler is not None:
        del losses[INF_AT]
    state = method.state_dict()
    return {
        "losses": losses,
        "step": method.step,
        "weights": _tensors(model.state_dict()),
        "method": _tensors({"masks": state["masks"], "extra": state["extra"]}),
    }


@pytest.mark.parametrize("name", list_methods())
def test_attach_train_detach_leave_the_optimizer_as_built(name: str) -> None:
    model, opt, method = build(name, attach=False)
    before = _groups(opt)
    user = {id(p) for p in model.parameters()}
    method.attach(model, opt)
    assert _groups(opt) == before
    for step in range(12):
        x, y = data(step)
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    assert _groups(opt) == before
    assert {id(p) for p in opt.state} <= user  # no foreign state (scores, thresholds, ...)
    assert len(opt.state_dict()["param_groups"]) == len(before)
    method.detach()
    assert _groups(opt) == before


@pytest.mark.filterwarnings("ignore::sparsetrain.RecipeWarning")
@pytest.mark.parametrize("recipe", [True, False], ids=["recipe-groups", "one-group"])
@pytest.mark.parametrize("name", list_methods())
def test_grad_scaler_changes_nothing_and_its_skipped_step_moves_nothing(
    name: str, recipe: bool
) -> None:
    plain = _train(name, None, recipe)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    scaled = _train(name, scaler, recipe)
    assert scaler.get_scale() == 512.0  # the infinite step was found and skipped once
    assert scaled["step"] == plain["step"] == STEPS
    assert scaled["losses"] == plain["losses"]
    for part in ("weights", "method"):
        assert scaled[part].keys() == plain[part].keys()
        for key, value in plain[part].items():
            assert torch.equal(scaled[part][key], value), f"{part} {key} differs"


@pytest.mark.parametrize("name", list_methods())
def test_bfloat16_autocast_trains_and_keeps_fp32_parameters(name: str) -> None:
    model, opt, method = build(name)
    for step in range(STEPS):
        x, y = data(step)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        assert torch.isfinite(loss)
    assert all(p.dtype == torch.float32 for p in model.parameters())
    report = method.report()
    if get_method_info(name).sparsity_mode == "target" and name != "dense":
        assert report.sparsity == pytest.approx(SPARSITY, abs=0.02)
