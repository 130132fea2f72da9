"""SCL: STE proxy gradients, per-feature normalisation, regulariser gradient, λ as the knob."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from sparsetrain.methods import create_method, get_method_info
from sparsetrain.methods.scl import SCL, normalize_per_feature, ste_grad

G = torch.tensor([[3.0, 4.0], [1.0, -1.0]])  # two features (rows)


def test_ste_proxy_gradients() -> None:
    m_hat = torch.tensor([-1.0, 0.0, 2.0])
    assert ste_grad("identity", m_hat) is None  # 1 everywhere
    assert ste_grad("relu", m_hat).tolist() == [0.0, 0.0, 1.0]
    assert ste_grad("leaky_relu", m_hat, slope=0.25).tolist() == [0.25, 0.25, 1.0]
    expected = [1 / (1 + math.exp(1.0)), 0.5, 1 / (1 + math.exp(-2.0))]
    assert ste_grad("softplus", m_hat).tolist() == pytest.approx(expected)
    with pytest.raises(ValueError, match="valid: identity"):
        ste_grad("sign", m_hat)


@pytest.mark.parametrize(
    ("kind", "scales"),
    [
        ("rms", [math.sqrt(12.5), 1.0]),
        ("mean_abs", [3.5, 1.0]),
        ("max_abs", [4.0, 1.0]),
        ("l2", [5.0, math.sqrt(2.0)]),
        ("none", [1.0, 1.0]),
    ],
)
def test_normalisation_formulas(kind, scales) -> None:
    expected = G / torch.tensor(scales).unsqueeze(1)
    assert torch.allclose(normalize_per_feature(G, kind), expected)
    conv = G.view(2, 1, 1, 2)  # a conv filter is a feature too
    assert torch.allclose(normalize_per_feature(conv, kind), expected.view(2, 1, 1, 2))
    assert G.tolist() == [[3.0, 4.0], [1.0, -1.0]]  # not in place by default


def _one_linear(weight: list[list[float]]) -> nn.Linear:
    layer = nn.Linear(len(weight[0]), len(weight), bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor(weight))
    return layer


def test_mask_gradient_on_a_hand_example() -> None:
    # W = [1, 2], x = [3, 1]: g = x, g ⊙ W = [3, 2], RMS = sqrt(6.5)
    model = _one_linear([[1.0, 2.0]])
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    m = SCL(lam=0.5).attach(model, opt)
    model(torch.tensor([[3.0, 1.0]])).sum().backward()
    m.after_backward()
    rms = math.sqrt(6.5)
    assert m.mask_vars[0].grad[0].tolist() == pytest.approx([3 / rms + 0.5, 2 / rms + 0.5])
    assert model.weight.grad.tolist() == [[3.0, 1.0]]  # g ⊙ M, everything active


def test_count_regulariser_gradient_is_lambda() -> None:
    model = _one_linear([[1.0, -2.0, 0.5]])
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    m = SCL(lam=0.3).attach(model, opt)
    (0.0 * model(torch.ones(1, 3))).sum().backward()  # g = 0: only the penalty is left
    m.after_backward()
    assert m.mask_vars[0].grad[0].tolist() == pytest.approx([0.3, 0.3, 0.3])


def test_flops_regulariser_weights_by_output_size(tiny_cnn, image_batch) -> None:
    opt = torch.optim.SGD(tiny_cnn.parameters(), lr=0.1)
    m = SCL(lam=0.3, regularizer="flops").attach(tiny_cnn, opt)
    (0.0 * tiny_cnn(image_batch[0])).sum().backward()
    m.after_backward()
    # conv 27 weights, 4x4 outputs; linear 192 weights, 1 output position: mean = 624/219
    conv, lin = 16 * 219 / 624, 219 / 624
    assert m.costs == pytest.approx([conv, lin])
    assert torch.allclose(m.mask_vars[0].grad, torch.full((3, 1, 3, 3), 0.3 * conv))
    assert torch.allclose(m.mask_vars[1].grad, torch.full((4, 48), 0.3 * lin))


def test_relu_ste_stops_the_gradient_of_pruned_masks() -> None:
    model = _one_linear([[1.0, 2.0]])
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    m = SCL(lam=0.5, ste="relu").attach(model, opt)
    with torch.no_grad():
        m.mask_vars[0].copy_(torch.tensor([[-1.0, 1.0]]))
    m.unpublish()
    m.refresh(1)  # what the post-step hook does
    m.publish()
    assert model.weight.tolist() == [[0.0, 2.0]]
    model(torch.tensor([[3.0, 1.0]])).sum().backward()
    m.after_backward()
    assert m.mask_vars[0].grad[0, 0] == 0.0  # a pruned connection never comes back
    assert model.weight.grad.tolist() == [[0.0, 1.0]]


def _train(lam=0.1, steps=60, **kw):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 4))
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(16, 8, generator=g), torch.randint(0, 4, (16,), generator=g)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    m = create_method("scl", lam=lam, mask_lr=0.05, **kw).attach(model, opt)
    for _ in range(steps):
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return m, 1.0 - sum(t.nnz for t in m.targets) / sum(t.numel for t in m.targets)


def test_larger_lambda_gives_higher_sparsity() -> None:
    sparsities = [_train(lam)[1] for lam in (0.05, 0.5, 2.0)]
    assert sparsities[0] < sparsities[1] < sparsities[2]
    assert sparsities[0] > 0.0


def test_adaptive_lambda_approaches_its_target() -> None:
    m, s = _train(steps=150, lambda_mode="adaptive", sparsity=0.5)
    assert abs(s - 0.5) < 0.08
    assert m.lam != 0.1
    assert get_method_info("scl").sparsity_mode == "emergent"


def test_freeze_fixes_the_mask() -> None:
    m, _ = _train(lam=0.5, steps=20, freeze_step=10)
    assert m.frozen and m.history[-1]["step"] == 10
    masks = [t.mask.clone() for t in m.targets]
    m2, _ = _train(lam=0.5, steps=10)  # same run stopped at the freeze
    assert all(torch.equal(a, b.mask) for a, b in zip(masks, m2.targets, strict=True))
    assert all(v.grad is None for v in m.mask_vars)  # m̂ no longer trained


@pytest.mark.parametrize("opt_name", ["sgd", "adamw"])
def test_masked_weight_decay_spares_pruned_weights(opt_name) -> None:
    results = {}
    for masked in (True, False):
        model = _one_linear([[1.0, 2.0]])
        if opt_name == "sgd":
            opt = torch.optim.SGD(model.parameters(), lr=0.1, weight_decay=0.5)
        else:
            opt = torch.optim.AdamW(model.parameters(), lr=0.1, weight_decay=0.5)
        m = SCL(lam=0.0, masked_weight_decay=masked).attach(model, opt)
        with torch.no_grad():
            m.mask_vars[0].copy_(torch.tensor([[-5.0, 5.0]]))
        m.unpublish()
        m.refresh(0)
        m.publish()
        model(torch.tensor([[3.0, 1.0]])).sum().backward()
        opt.step()
        results[masked] = m.raw_weight(0).tolist()[0]
    assert results[True][0] == pytest.approx(1.0, abs=1e-6)  # pruned: no loss gradient and no decay
    expected = 1.0 - 0.1 * 0.5 * 1.0 if opt_name == "sgd" else 1.0 * (1 - 0.1 * 0.5)
    assert results[False][0] == pytest.approx(expected)  # decayed without the option
    assert results[True][1] == pytest.approx(results[False][1])  # active: same update


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"lam": -0.1}, "^scl: lam must be a number >= 0, got -0.1$"),
        ({"ste": "tanh"}, "^scl: unknown ste 'tanh'; valid: identity, leaky_relu, softplus, relu$"),
        ({"normalization": "max"}, "rms, mean_abs"),
        ({"regularizer": "params"}, "count, flops"),
        ({"sparsity": 0.5}, "adaptive"),
        ({"sparsity": 0.5}, "adaptive"),
        ({"lambda_mode": "adaptive"}, "target"),
        ({"lambda_mode": "auto"}, "fixed, adaptive"),
        ({"mask_lr": 0.0}, "mask_lr"),
        ({"freeze_step": -1}, "freeze_step"),
    ],
)
def test_bad_options(kwargs, match) -> None:
    with pytest.raises(ValueError, match=match):
        create_method("scl", **kwargs)


def test_detach_restores_the_model(tiny_mlp) -> None:
    before = [p.detach().clone() for p in tiny_mlp.parameters()]
    opt = torch.optim.SGD(tiny_mlp.parameters(), lr=0.1)
    m = SCL(lam=0.1, mask_optimizer="user").attach(tiny_mlp, opt)
    assert len(opt.param_groups) == 1  # the masks never join the user's optimizer
    assert m._mask_opt.groups[0]["momentum"] == 0.9
    m.detach()
    assert len(opt.param_groups) == 1
    assert all(torch.equal(a, b) for a, b in zip(before, tiny_mlp.parameters(), strict=True))
    SCL(lam=0.1).attach(tiny_mlp, opt).detach()  # default: the masks' own SGD
    assert len(opt.param_groups) == 1


def test_masks_take_their_own_sgd_steps_under_adam(tiny_mlp) -> None:
    """Default: m̂ moves by −mask_lr·(lr/lr0)·m̂.grad on the first step (momentum buffer =
    grad), whatever the user's optimizer: the mask LR follows the weights' LR schedule."""
    opt = torch.optim.Adam(tiny_mlp.parameters(), lr=0.01)
    m = SCL(lam=0.3, mask_lr=0.1).attach(tiny_mlp, opt)
    assert len(opt.param_groups) == 1
    opt.param_groups[0]["lr"] = 0.005  # a weight-LR schedule at half the base LR
    x, y = torch.randn(4, 8), torch.randint(0, 4, (4,))
    nn.functional.cross_entropy(tiny_mlp(x), y).backward()
    opt.step()
    for v in m.mask_vars:
        torch.testing.assert_close(v.detach(), 1.0 - 0.05 * v.grad)
    assert len(m.state_dict()["extra"]["mask_optimizer"]["state"]) == len(m.mask_vars)


def test_adaptive_lambda_controls_log_density_by_hand() -> None:
    from sparsetrain.methods.scl import MAX_LOG_STEP, adapt_lambda

    # at target, no change: log(d/d*) = 0 and the density did not move
    assert adapt_lambda(0.5, 0.98, 0.98, 0.98, gain=0.1, damping=10) == 0.5
    # 2x too dense (d = 0.04 vs 0.02), density steady: log λ += 0.05 · ln 2
    lam = adapt_lambda(1.0, 0.96, 0.96, 0.98, gain=0.05, damping=10)
    assert lam == pytest.approx(math.exp(0.05 * math.log(2)))
    # overshoot 0.98 -> 0.992 is a 2.5x density error: λ falls (the absolute error looked tiny)
    lam = adapt_lambda(1.0, 0.992, 0.992, 0.98, gain=0.01, damping=0)
    assert lam == pytest.approx(math.exp(0.01 * math.log(0.008 / 0.02)))
    # masks in flight towards the target (density halving in a step) damp the push
    assert adapt_lambda(1.0, 0.95, 0.9, 0.98, gain=0.01, damping=10) < 1.0
    # the step of log λ is bounded, and scaled by the masks' LR ratio (anti-windup)
    assert adapt_lambda(1.0, 0.0, 0.0, 0.99, gain=10, damping=0) == pytest.approx(
        math.exp(MAX_LOG_STEP)
    )
    assert adapt_lambda(1.0, 0.96, 0.96, 0.98, gain=0.05, damping=0, lr_ratio=0.0) == 1.0
    half = adapt_lambda(1.0, 0.96, 0.96, 0.98, gain=0.05, damping=0, lr_ratio=0.5)
    assert half == pytest.approx(math.exp(0.025 * math.log(2)))


def test_flops_regularizer_refuses_attention_weights() -> None:
    model = nn.Sequential(nn.Linear(4, 8))
    model.attn = nn.MultiheadAttention(8, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match=r"'attn.in_proj_weight' \(MultiheadAttention\).*count"):
        SCL(lam=0.1, regularizer="flops").attach(model, opt)
    assert len(opt.param_groups) == 1 and not hasattr(model[0], "weight_raw")


def test_adaptive_target_follows_a_cubic_ramp() -> None:
    m = SCL(lambda_mode="adaptive", sparsity=0.9, total_steps=100, target_ramp=0.5)
    assert m.target_at(0) == 0.0
    assert m.target_at(25) == pytest.approx(0.9 * (1 - 0.5**3))
    assert m.target_at(50) == m.target_at(99) == 0.9
    flat = SCL(lambda_mode="adaptive", sparsity=0.9, total_steps=100, target_ramp=0.0)
    assert flat.target_at(0) == 0.9
