"""The conformance suite: the same properties checked for every registered method.

A new method is covered the moment it registers. Methods whose defaults use long cadences get
short ones from ``FAST`` so that each case runs in well under a second.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from sparsetrain import create_method, get_method_info, list_methods, param_groups
from sparsetrain.methods.registry import method_options

STEPS = 30
SPARSITY = 0.75

# per-method options for a 30-step run (cadences scaled down; nothing else changed)
FAST: dict[str, dict[str, object]] = {
    "dst": {"update_interval": 5},
    "rigl": {"update_interval": 5},
    "set": {"update_interval": 5},
    "mest": {"update_interval": 5},
    "gmp": {"update_interval": 5, "end_step": 20},
    "granet": {"update_interval": 5, "end_step": 20},
    "optg": {"steps_per_epoch": 3},
    "st3": {"begin_step": 2, "end_step": 15, "freeze_step": 25},
    "st3_sigma": {"begin_step": 2, "end_step": 15, "freeze_step": 25},
    # N:M: 1:4 is the 0.75 the suites ask for; a 1-channel stem cannot form groups of 4
    "srste": {"structure": "1:4", "exclude": ["0.weight"]},
}

# optimizer class, its options and the weight decay (given through sparsetrain.param_groups)
OPTIMIZERS = {
    "sgd": (torch.optim.SGD, {"lr": 0.05, "momentum": 0.9}, 1e-3),
    "adamw": (torch.optim.AdamW, {"lr": 1e-2}, 1e-2),
}


def make_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv1d(1, 8, 3),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(8 * 14, 32),
        nn.ReLU(),
        nn.Linear(32, 4),
    )


def data(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1000 + step)
    x = torch.randn(16, 1, 16, generator=g)
    return x, (x.sum(dim=(1, 2)) > 0).long() + 2 * (x[:, 0, 0] > 0).long()


def build(name: str, opt_name: str = "sgd", *, attach: bool = True, recipe: bool = True):
    """Model, optimizer and method, attached unless told not.

    The optimizer is built from the method's recipe groups (``sparsetrain.param_groups``), or
    with ``recipe=False`` from ``model.parameters()`` with one weight decay for all.
    """
    model = make_model()
    kwargs: dict[str, object] = {"total_steps": STEPS, **FAST.get(name, {})}
    info = get_method_info(name)
    if info.sparsity_mode == "target" and name != "dense":
        kwargs["sparsity"] = SPARSITY
    valid = method_options(info.factory)
    kwargs = {k: v for k, v in kwargs.items() if k in valid}
    method = create_method(name, **kwargs)
    cls, options, wd = OPTIMIZERS[opt_name]
    groups = param_groups(model, method if recipe else "dense", weight_decay=wd)
    opt = cls(groups, **options)
    return model, opt, method.attach(model, opt) if attach else method


def train_step(model, opt, step: int) -> float:
    x, y = data(step)
    loss = nn.functional.cross_entropy(model(x), y)
    opt.zero_grad()
    loss.backward()
    opt.step()
    return loss.item()


def state_of(opt, param) -> list[torch.Tensor]:
    return [v for v in opt.state.get(param, {}).values() if torch.is_tensor(v) and v.dim() > 0]


METHODS = list_methods()


@pytest.mark.conformance
@pytest.mark.parametrize("name", METHODS)
def test_builds_by_name_with_defaults(name):
    valid = method_options(get_method_info(name).factory)
    kwargs = {"total_steps": 100, **FAST.get(name, {})}
    method = create_method(name, **{k: v for k, v in kwargs.items() if k in valid})
    assert method.name == name
    assert method.model is None


@pytest.mark.conformance
@pytest.mark.parametrize("opt_name", sorted(OPTIMIZERS))
@pytest.mark.parametrize("name", METHODS)
def test_reaches_target_and_pruned_stay_zero(name, opt_name):
    model, opt, method = build(name, opt_name)
    info = get_method_info(name)
    constant_density = method.sparsity_at(0) == method.sparsity_at(STEPS)
    target = method.global_target_count()
    for step in range(STEPS):
        before = [t.mask.clone() for t in method.targets]
        loss = train_step(model, opt, step)
        assert torch.isfinite(torch.tensor(loss))
        assert method.step == step + 1
        if method.hard_mask:
            for t, b in zip(method.targets, before, strict=True):
                off = ~t.mask
                assert torch.all(t.param[off] == 0), f"{t.name}: pruned weight revived"
                for s in state_of(opt, t.param):
                    assert torch.all(s[off] == 0), f"{t.name}: optimizer state at pruned entry"
                stayed_off = off & ~b
                assert torch.all(t.param.grad[stayed_off] == 0), f"{t.name}: pruned grad"
        if constant_density and target is not None and name != "dense":
            nnz = sum(t.nnz for t in method.targets)
            assert abs(nnz - target) <= len(method.targets), "active count drifted"
    rep = method.report()
    if info.sparsity_mode == "target":
        assert rep.misses() == []
        method.finish()
        if name != "dense":
            assert rep.sparsity == pytest.approx(SPARSITY, abs=0.01)
    else:
        assert 0.0 <= rep.sparsity < 1.0


@pytest.mark.conformance
@pytest.mark.parametrize("name", METHODS)
def test_state_dict_round_trip_continues_identically(name):
    model, opt, method = build(name)
    split = 12
    for step in range(split):
        train_step(model, opt, step)
    saved = (
        copy.deepcopy(model.state_dict()),
        copy.deepcopy(opt.state_dict()),
        copy.deepcopy(method.state_dict()),
    )
    model2, opt2, method2 = build(name)
    model2.load_state_dict(saved[0])
    opt2.load_state_dict(saved[1])
    method2.load_state_dict(saved[2])
    for step in range(split, STEPS):
        a = train_step(model, opt, step)
        b = train_step(model2, opt2, step)
        assert a == b, f"step {step}: loss {a} != {b}"
    for t1, t2 in zip(method.targets, method2.targets, strict=True):
        assert torch.equal(t1.mask, t2.mask)
        assert torch.equal(t1.param, t2.param)


@pytest.mark.conformance
@pytest.mark.parametrize("name", METHODS)
def test_squash_gives_same_outputs_and_plain_model(name):
    model, opt, method = build(name)
    for step in range(STEPS // 2):
        train_step(model, opt, step)
    model.eval()
    x, _ = data(999)
    with torch.no_grad():
        expected = model(x)
    plain = method.squash()
    with torch.no_grad():
        got = plain(x)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    names = {n for n, _ in plain.named_parameters()}
    assert names == {n for n, _ in make_model().named_parameters()}
    assert not any("parametrizations" in n for n in plain.state_dict())
