"""The common ``weight_init`` option: Kaiming-normal and the two sparsity-aware inits."""

import math

import pytest
import torch
from torch import nn

import sparsetrain


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(200, 400), nn.ReLU(), nn.Linear(400, 10))


def _attach(name: str, **kw) -> sparsetrain.SparsityMethod:
    model = _mlp()
    method = sparsetrain.create_method(name, total_steps=10, **kw)
    return method.attach(model, torch.optim.SGD(model.parameters(), lr=0.1))


def test_default_keeps_the_models_weights():
    before = [p.detach().clone() for p in _mlp().parameters()]
    m = _attach("dense")
    assert all(torch.equal(a, b) for a, b in zip(before, m.model.parameters(), strict=True))


def test_kaiming_normal_std_is_sqrt_2_over_fan_in():
    m = _attach("dense", weight_init="kaiming_normal")
    for t in m.targets:
        fan_in = t.shape[1]
        assert t.param.std().item() == pytest.approx(math.sqrt(2 / fan_in), rel=0.05)


def test_layer_scaled_divides_by_sqrt_density_and_keeps_zeros():
    m = _attach("static", sparsity=0.9, weight_init="sparse_layer_scaled")
    for t in m.targets:
        density = t.nnz / t.numel
        live = t.param[t.mask]
        assert live.std().item() == pytest.approx(
            math.sqrt(2 / t.shape[1]) / math.sqrt(density), rel=0.1
        )
        assert not t.param[~t.mask].any()


def test_unit_scaled_uses_the_live_fan_in_of_each_row():
    m = _attach("rigl", sparsity=0.9, weight_init="sparse_unit_scaled")
    t = m.targets[0]
    fans = t.mask.sum(dim=1).float()
    w = t.param.detach()
    # live entries of row r have variance 2 / fans[r]: E[sum_r w_r^2] = 2 per row
    per_row_var = w.pow(2).sum(dim=1) / fans.clamp_min(1)
    assert (per_row_var * fans).mean().item() == pytest.approx(2.0, rel=0.1)
    assert not w[~t.mask].any()


def test_draws_depend_on_the_method_seed_only():
    a = _attach("static", sparsity=0.5, weight_init="kaiming_normal", seed=3)
    torch.manual_seed(123)  # the global RNG does not matter
    b = _attach("static", sparsity=0.5, weight_init="kaiming_normal", seed=3)
    for ta, tb in zip(a.targets, b.targets, strict=True):
        assert torch.equal(ta.param, tb.param)


def test_static_snip_scales_after_the_first_batch_selection():
    model = _mlp()
    m = sparsetrain.create_method(
        "static", sparsity=0.9, init="snip", weight_init="sparse_layer_scaled", total_steps=5
    )
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    m.attach(model, opt)
    dense_std = [t.param.std().item() for t in m.targets]
    x, y = torch.randn(16, 200), torch.randint(0, 10, (16,))
    nn.functional.cross_entropy(model(x), y).backward()
    opt.step()
    for t, s0 in zip(m.targets, dense_std, strict=True):
        live_std = t.param[t.mask].std().item()
        assert live_std > 1.5 * s0  # divided by sqrt(density) < 1 after SNIP chose the mask


@pytest.mark.parametrize("value", ["xavier", 3])
def test_unknown_weight_init_is_a_value_error(value):
    with pytest.raises(ValueError, match="weight_init"):
        sparsetrain.create_method("rigl", sparsity=0.9, total_steps=5, weight_init=value)


def test_sparse_inits_refused_for_forward_function_methods():
    with pytest.raises(ValueError, match="kaiming_normal"):
        sparsetrain.create_method(
            "st3", sparsity=0.9, total_steps=5, weight_init="sparse_unit_scaled"
        )
