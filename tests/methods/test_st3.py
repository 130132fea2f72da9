"""ST-3 / ST-3σ: hand-computed effective weights, STE, threshold, ramp, fix phase, options."""

from __future__ import annotations

import copy
import math
import warnings

import pytest
import torch
from torch import nn

import sparsetrain
from sparsetrain.methods import create_method
from sparsetrain.methods._st3_parts import OrderStatistics, quantile, sigma_of
from sparsetrain.methods.st3 import ST3

W0 = [[0.1, -0.5, 0.3], [-0.2, 0.05, 0.8]]


def _layer(weight: list[list[float]]) -> nn.Linear:
    layer = nn.Linear(len(weight[0]), len(weight), bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor(weight))
    return layer


def _step(model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor) -> None:
    opt.zero_grad()
    model(x).square().sum().backward()
    opt.step()


def _mlp(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 4)
    )


def _at_half(model: nn.Module, **kw: object) -> ST3:
    """ST-3 at s = 0.5 from step 1 on, weights frozen by lr = 0."""
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    method = ST3(sparsity=0.5, end_step=0, **kw).attach(model, opt)
    _step(model, opt, torch.ones(1, model.in_features))
    return method


def test_effective_weight_hand_computed() -> None:
    layer = _layer(W0)
    method = _at_half(layer)
    # |W| sorted: .05 .1 .2 .3 .5 .8; rank 0.5·5 = 2.5 → τ = (0.2 + 0.3)/2
    assert method._tau == pytest.approx([0.25])
    c0 = 1.01 / ((0.8 / 3 + 1e-6) / (0.9 / 3 + 1e-6) + 0.01)  # row 0 keeps .5 and .3 of .9
    c1 = 1.01 / ((0.8 / 3 + 1e-6) / (1.05 / 3 + 1e-6) + 0.01)  # row 1 keeps .8 of 1.05
    expected = torch.tensor([[0.0, -0.25 * c0, 0.05 * c0], [0.0, 0.0, 0.55 * c1]])
    torch.testing.assert_close(layer.weight, expected)
    assert method.targets[0].mask.tolist() == [[False, True, True], [False, False, True]]


def test_hard_threshold_and_no_rescale() -> None:
    hard = _layer(W0)
    _at_half(hard, soft=False, rescale=False)
    torch.testing.assert_close(hard.weight, torch.tensor([[0.0, -0.5, 0.3], [0.0, 0.0, 0.8]]))
    plain = _layer(W0)
    _at_half(plain, rescale=False)
    torch.testing.assert_close(plain.weight, torch.tensor([[0.0, -0.25, 0.05], [0.0, 0.0, 0.55]]))


def test_gradient_reaches_pruned_weights_unchanged() -> None:
    layer = _layer(W0)
    opt = torch.optim.SGD(layer.parameters(), lr=1.0)
    method = ST3(sparsity=0.5, end_step=0, freeze_step=None).attach(layer, opt)
    x, r = torch.tensor([[1.0, 2.0, 3.0]]), torch.tensor([[1.0, -2.0]])
    raw = method.raw_weight(0).clone()
    assert torch.equal(raw, torch.tensor(W0))  # step 0 is dense: W_eff = W
    opt.zero_grad()
    (layer(x) * r).sum().backward()
    g = r.t() @ x  # ∂L/∂W_eff, dense
    assert torch.equal(layer.weight.grad, g)
    opt.step()  # lr = 1: W ← W − g, pruned entries included (identity STE)
    assert torch.equal(method.raw_weight(0), raw - g)
    assert method.targets[0].nnz == 3


def test_tau_is_global_quantile() -> None:
    model = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    method = ST3(sparsity=0.7, end_step=0).attach(model, opt)
    _step(model, opt, torch.randn(2, 8))
    mags = torch.cat([method.raw_weight(i).abs().reshape(-1) for i in range(3)])
    assert method._tau == [torch.quantile(mags, 0.7).item()] * 3
    nnz = sum(t.nnz for t in method.targets)
    assert abs(nnz - round(0.3 * mags.numel())) <= 1


@pytest.mark.parametrize("n", [1, 2, 7, 1000])
def test_quantile_matches_torch_with_ties(n: int) -> None:
    torch.manual_seed(n)
    x = torch.randint(0, 5, (n,)).float() * 0.25 + torch.rand(n) * (n % 2)
    for q in (0.0, 0.1, 0.5, 0.9, 0.999, 1.0):
        assert quantile(x, q) == torch.quantile(x, q).item()
    ranks = [0, n // 2, n - 1]
    assert OrderStatistics()(x, ranks) == x.sort().values[ranks].tolist()


@pytest.mark.parametrize("use_numpy", [True, False])  # False: the path of other devices
def test_order_statistics_exact_while_drifting(use_numpy: bool) -> None:
    torch.manual_seed(0)
    x = torch.rand(20000)
    select = OrderStatistics(use_numpy=use_numpy)
    for step in range(40):  # small drifts reuse the bracket; jumps and a moving rank miss it
        x += 1e-4 * torch.randn(20000) + (0.2 * torch.randn(20000) if step % 7 == 6 else 0)
        x.abs_()
        if step % 9 == 8:  # ties across the bracket's edges
            x[::3] = x[5000].item()
        ranks = [15000 + 100 * step, 15001 + 100 * step]
        assert select(x, ranks) == x.sort().values[ranks].tolist()


def test_order_statistics_nan_entries_sort_last() -> None:
    x = torch.rand(10000)
    select = OrderStatistics()
    assert select(x, [9000]) == x.sort().values[[9000]].tolist()  # sets the bracket
    x[:50] = math.nan
    for ranks in ([9000], [9949, 9950], [9999]):
        got = torch.tensor(select(x, ranks))
        assert torch.equal(got.nan_to_num(-1.0), x.sort().values[ranks].nan_to_num(-1.0))


def test_sigma_formulas() -> None:
    assert sigma_of((4, 3, 3, 3), "dims") == 1 / math.sqrt(13)
    assert sigma_of((4, 3, 3, 3), "glorot") == 1 / math.sqrt(63)
    assert sigma_of((3, 4), "glorot") == sigma_of((3, 4), "dims") == 1 / math.sqrt(7)


def test_st3_sigma_per_layer_tau() -> None:
    model = nn.Sequential(nn.Linear(4, 3, bias=False), nn.Linear(3, 2, bias=False))
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    method = create_method("st3_sigma", sparsity=0.6, end_step=0).attach(model, opt)
    _step(model, opt, torch.randn(2, 4))
    w1, w2 = (method.raw_weight(i).abs().reshape(-1) for i in range(2))
    s1, s2 = 1 / math.sqrt(3 + 4), 1 / math.sqrt(2 + 3)
    tau_star = torch.quantile(torch.cat([w1 / s1, w2 / s2]), 0.6).item()
    assert method._tau == pytest.approx([tau_star * s1, tau_star * s2], rel=1e-6)
    for i, (t, tau) in enumerate(zip(method.targets, method._tau, strict=True)):
        assert torch.equal(t.mask, method.raw_weight(i).abs() > tau)


def test_ramp_values_and_default_steps() -> None:
    method = ST3(sparsity=0.8, begin_step=10, end_step=20)
    got = [method.sparsity_at(s) for s in (0, 10, 15, 20, 99)]
    assert got == pytest.approx([0.0, 0.0, 0.8 * (1 - 0.5**3), 0.8, 0.8])
    assert method.freeze_step is None
    default = ST3(sparsity=0.9, total_steps=1700)
    assert (default.begin_step, default.end_step, default.freeze_step) == (50, 800, 1600)
    assert ST3(sparsity=0.9, total_steps=100, finetune_steps=0).freeze_step == 100


def test_dense_before_ramp() -> None:
    model = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    method = ST3(sparsity=0.9, begin_step=3, end_step=6).attach(model, opt)
    for _ in range(3):
        _step(model, opt, torch.randn(4, 8))
        assert method._tau is None and all(t.nnz == t.numel for t in method.targets)
        assert torch.equal(model[0].weight, method.raw_weight(0))
    _step(model, opt, torch.randn(4, 8))
    assert method._tau is not None


def test_fix_bakes_and_freezes() -> None:
    model = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-3)
    method = ST3(sparsity=0.75, end_step=4, freeze_step=8).attach(model, opt)
    x = torch.randn(16, 8)
    for _ in range(6):
        _step(model, opt, x)
    for g in opt.param_groups:  # freeze the weights so the fix recomputes the same Q
        g["lr"] = 0.0
    _step(model, opt, x)
    q_before = [model[i].weight.detach().clone() for i in (0, 2, 4)]
    _step(model, opt, x)  # step 8: the fix
    assert method._fixed
    for t, q in zip(method.targets, q_before, strict=True):
        assert torch.equal(t.param.detach(), q)  # W ← previous Q
    assert sum(t.nnz for t in method.targets) == method.global_target_count()
    masks = [t.mask.clone() for t in method.targets]
    for g in opt.param_groups:
        g["lr"] = 0.05
    for _ in range(4):
        _step(model, opt, x)
        for t, m in zip(method.targets, masks, strict=True):
            assert torch.equal(t.mask, m)
            assert not t.param.grad[~m].any()
            assert not t.param.detach()[~m].any()
            assert not opt.state[t.param]["momentum_buffer"][~m].any()
    assert method.history[-1]["event"] == "fix"


def test_fix_exact_count_with_ties() -> None:
    model = nn.Linear(5, 2, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, 1.0, 1.0, 1.0, 2.0], [1.0, 1.0, 1.0, 3.0, 1.0]]))
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    method = ST3(sparsity=0.5, end_step=0, freeze_step=1).attach(model, opt)
    _step(model, opt, torch.ones(1, 5))
    assert method.targets[0].nnz == 5  # a '>' threshold would keep 2, a '>=' one 10


def test_update_interval_holds_tau_between_updates() -> None:
    model = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    method = ST3(sparsity=0.7, end_step=0, update_interval=4).attach(model, opt)
    x = torch.randn(8, 8)
    _step(model, opt, x)  # step 1: first sparse step, updated
    tau = method._tau
    for _ in range(2):  # steps 2, 3: τ and c held, the forward follows the new W
        _step(model, opt, x)
        assert method._tau == tau
        assert torch.equal(method.targets[0].mask, method.raw_weight(0).abs() > tau[0])
    _step(model, opt, x)  # step 4: updated
    assert method._tau != tau
    with pytest.raises(TypeError, match="update_interval must be an int"):
        create_method("st3", sparsity=0.5, total_steps=10, update_interval=2.0)


def test_bn_momentum_option() -> None:
    def bn_model() -> nn.Sequential:
        return nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4))

    model = bn_model()
    ST3(sparsity=0.5, end_step=1).attach(model, torch.optim.SGD(model.parameters(), lr=0.1))
    assert model[1].momentum == 0.1
    model = bn_model()
    method = ST3(sparsity=0.5, end_step=1, bn_momentum="as_released")
    method.attach(model, torch.optim.SGD(model.parameters(), lr=0.1))
    assert model[1].momentum == 0.99
    method.detach()
    assert model[1].momentum == 0.1


def test_recipe_groups_leave_the_optimizer_as_built() -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
    method = ST3(sparsity=0.5, end_step=1)
    groups = sparsetrain.param_groups(model, method, weight_decay=1e-4)
    decayed, free = ({id(p) for p in g["params"]} for g in groups)
    assert decayed == {id(model[0].weight), id(model[2].weight)}
    assert free == {id(p) for p in (model[0].bias, model[1].weight, model[1].bias, model[2].bias)}
    assert [g["weight_decay"] for g in groups] == [1e-4, 0.0]
    opt = torch.optim.SGD(groups, lr=0.1, momentum=0.9)
    before = [dict(g, params=list(g["params"])) for g in opt.param_groups]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the recipe's groups: no RecipeWarning
        method.attach(model, opt)
    assert opt.param_groups == before
    method.detach()
    assert opt.param_groups == before


def test_other_groups_are_used_as_given_with_one_warning() -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, weight_decay=1e-4)
    before = [dict(g, params=list(g["params"])) for g in opt.param_groups]
    with pytest.warns(
        sparsetrain.RecipeWarning, match=r"decays 2 parameter\(s\).*0\.bias, 1\.bias"
    ):
        ST3(sparsity=0.5, end_step=1).attach(model, opt)
    assert opt.param_groups == before and not opt.state
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, weight_decay=1e-4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ST3(sparsity=0.5, end_step=1, weight_decay_scope="as_given").attach(model, opt)
    assert len(opt.param_groups) == 1 and len(opt.param_groups[0]["params"]) == 4
    assert sparsetrain.param_groups(model, "st3_sigma", weight_decay=0.1)[1]["weight_decay"] == 0
    as_given = ST3(sparsity=0.5, end_step=1, weight_decay_scope="as_given")
    (group,) = sparsetrain.param_groups(model, as_given, weight_decay=0.1, lr=0.5)
    assert group["weight_decay"] == 0.1 and group["lr"] == 0.5 and len(group["params"]) == 4


def test_bad_inputs() -> None:
    with pytest.raises(ValueError, match=r"freeze_step \(5\) is before end_step \(10\)"):
        create_method("st3", sparsity=0.5, end_step=10, freeze_step=5)
    with pytest.raises(ValueError, match="valid: None, dims, glorot"):
        create_method("st3", sparsity=0.5, total_steps=10, sigma="width")
    with pytest.raises(ValueError, match="valid: corrected, as_released"):
        create_method("st3", sparsity=0.5, total_steps=10, bn_momentum="keras")
    with pytest.raises(ValueError, match="valid: weights, as_given"):
        create_method("st3", sparsity=0.5, total_steps=10, weight_decay_scope="bn")
    with pytest.raises(ValueError, match="end_step or total_steps"):
        create_method("st3", sparsity=0.5)
    with pytest.raises(ValueError, match="after total_steps"):
        create_method("st3", sparsity=0.5, total_steps=10, freeze_step=11)


@pytest.mark.parametrize("name", ["st3", "st3_sigma"])
def test_reaches_target_in_50_steps(name: str) -> None:
    model = _mlp(1)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)
    method = create_method(name, sparsity=0.8, total_steps=50).attach(model, opt)
    torch.manual_seed(0)
    x, y = torch.randn(32, 8), torch.randint(0, 4, (32,))
    for _ in range(50):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    report = method.finish()
    assert method._fixed and report.nnz == method.global_target_count()


def test_state_dict_round_trip_mid_ramp() -> None:
    def build() -> tuple[nn.Module, torch.optim.Optimizer, ST3]:
        model = _mlp()
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        return model, opt, ST3(sparsity=0.8, end_step=6, freeze_step=8).attach(model, opt)

    x = torch.randn(8, 8)
    model, opt, method = build()
    for _ in range(4):
        _step(model, opt, x)
    model2, opt2, method2 = build()
    model2.load_state_dict(copy.deepcopy(model.state_dict()))
    opt2.load_state_dict(copy.deepcopy(opt.state_dict()))  # as a checkpoint: no shared buffers
    method2.load_state_dict(copy.deepcopy(method.state_dict()))
    for _ in range(6):
        _step(model, opt, x)
        _step(model2, opt2, x)
        assert torch.equal(model(x), model2(x))


def test_weight_decay_reaches_attention_targets() -> None:
    model = nn.Sequential(nn.Linear(4, 8))
    model.attn = nn.MultiheadAttention(8, 2)
    decayed, free = ({id(p) for p in g["params"]} for g in sparsetrain.param_groups(model, "st3"))
    assert id(model.attn.in_proj_weight) in decayed and id(model[0].weight) in decayed
    assert id(model.attn.in_proj_bias) in free and id(model[0].bias) in free
