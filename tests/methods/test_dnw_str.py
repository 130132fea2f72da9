"""DNW (hard top-k forward, straight-through backward) and STR (learnable soft threshold)."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from sparsetrain.methods import create_method, get_method_info
from sparsetrain.methods.dnw import DNW
from sparsetrain.methods.soft_threshold import STR


def _layer(weight: list[list[float]]) -> nn.Linear:
    layer = nn.Linear(len(weight[0]), len(weight), bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor(weight))
    return layer


def _mlp(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 4)
    )


def _train(model: nn.Module, opt: torch.optim.Optimizer, steps: int) -> None:
    torch.manual_seed(1)
    x, y = torch.randn(32, 8), torch.randint(0, 4, (32,))
    for _ in range(steps):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()


# ---------------------------------------------------------------------------------------- DNW


def test_dnw_forward_keeps_exact_topk() -> None:
    layer = _layer([[0.1, -0.5, 0.3], [-0.2, 0.05, 0.8]])
    DNW(sparsity=0.5).attach(layer, torch.optim.SGD(layer.parameters(), lr=0.1))
    expected = torch.tensor([[0.0, -0.5, 0.3], [0.0, 0.0, 0.8]])  # the 3 largest |w|
    assert torch.equal(layer.weight, expected)


def test_dnw_ties_keep_exactly_k() -> None:
    layer = _layer([[1.0, 1.0, 1.0, 2.0], [1.0, 1.0, 3.0, 1.0]])
    method = DNW(sparsity=0.5).attach(layer, torch.optim.SGD(layer.parameters(), lr=0.1))
    assert method.targets[0].nnz == 4
    assert layer.weight[0, 3] == 2.0 and layer.weight[1, 2] == 3.0


def test_dnw_scopes() -> None:
    model = nn.Sequential(_layer([[0.1, 0.2], [0.3, 0.4]]), _layer([[5.0, 6.0], [7.0, 8.0]]))
    method = DNW(sparsity=0.5, scope="global").attach(model)
    assert [t.nnz for t in method.targets] == [0, 4]
    assert method.target_counts() is None and method.global_target_count() == 4
    model = nn.Sequential(_layer([[0.1, 0.2], [0.3, 0.4]]), _layer([[5.0, 6.0], [7.0, 8.0]]))
    method = DNW(sparsity=0.5).attach(model)
    assert [t.nnz for t in method.targets] == [2, 2]
    assert method.target_counts() == {"0.weight": 2, "1.weight": 2}


def test_dnw_every_weight_gets_gradient() -> None:
    layer = _layer([[0.1, -0.5, 0.3], [-0.2, 0.05, 0.8]])
    opt = torch.optim.SGD(layer.parameters(), lr=1.0)
    method = DNW(sparsity=0.5).attach(layer, opt)
    raw = method.raw_weight(0).clone()
    x, r = torch.tensor([[1.0, 2.0, 3.0]]), torch.tensor([[1.0, -2.0]])
    (layer(x) * r).sum().backward()
    opt.step()
    assert torch.equal(method.raw_weight(0), raw - r.t() @ x)  # W ← W − g everywhere


def test_dnw_update_interval_holds_the_cut() -> None:
    model = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    method = DNW(sparsity=0.8, update_interval=3, total_steps=7).attach(model, opt)
    _train(model, opt, 1)
    cuts = list(method._cut)
    _train(model, opt, 1)  # step 2: no update, same λ applied to the new weights
    assert method._cut == cuts
    assert torch.equal(method.targets[0].mask, method.raw_weight(0).abs() > cuts[0])
    _train(model, opt, 5)  # step 7 = total_steps: exact again
    assert method.report().nnz == method.global_target_count()
    with pytest.raises(ValueError, match=r"^dnw: update_interval must be an int >= 1, got 0$"):
        create_method("dnw", sparsity=0.5, update_interval=0)


def test_dnw_ramp_and_bad_scope() -> None:
    assert DNW(sparsity=0.9).sparsity_at(0) == 0.9
    ramp = DNW(sparsity=0.8, begin_step=2, end_step=4)
    assert [ramp.sparsity_at(s) for s in (0, 2, 3, 4, 9)] == pytest.approx(
        [0.0, 0.0, 0.7, 0.8, 0.8]
    )
    with pytest.raises(ValueError, match="valid: layer, global"):
        create_method("dnw", sparsity=0.5, scope="block")


@pytest.mark.parametrize("scope", ["layer", "global"])
def test_dnw_reaches_target_in_50_steps(scope: str) -> None:
    model = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    method = create_method("dnw", sparsity=0.8, total_steps=50, scope=scope).attach(model, opt)
    _train(model, opt, 50)
    assert method.finish().nnz == method.global_target_count()
    for t in method.targets:  # the mask is the top-k of the current raw weights
        assert t.param.detach().abs()[t.mask].min() >= t.param.detach().abs()[~t.mask].max() or (
            scope == "global"
        )


def test_dnw_float64_mask_is_the_forward_support() -> None:
    # 0.5 + 1e-12 rounds to 0.5 in float32: a float32 ranking put the cut at 0.5, and the float64
    # forward kept |w| > 0.5, so 0.5 + 1e-12 was live in the forward but not in the mask
    layer = nn.Linear(3, 2, bias=False).double()
    with torch.no_grad():
        layer.weight.copy_(
            torch.tensor([[0.1, 0.2, 0.5], [0.5 + 1e-12, 0.9, 1.0]], dtype=torch.float64)
        )
    method = DNW(sparsity=2 / 3).attach(layer)  # keep 2 of 6
    expected = [[False, False, False], [False, True, True]]
    assert method.targets[0].mask.tolist() == expected
    assert (layer.weight != 0).tolist() == expected


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_dnw_trains_in_other_dtypes(dtype: torch.dtype) -> None:
    model = _mlp().to(dtype)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    method = create_method("dnw", sparsity=0.8, total_steps=10).attach(model, opt)
    torch.manual_seed(1)
    x, y = torch.randn(32, 8, dtype=dtype), torch.randint(0, 4, (32,))
    for _ in range(10):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x).float(), y).backward()
        opt.step()
    assert method.finish().nnz == method.global_target_count()
    for t in method.targets:
        assert torch.equal(t.mask, t.param != 0), t.name


# ---------------------------------------------------------------------------------------- STR

S01 = math.log(0.1 / 0.9)  # sigmoid(S01) = 0.1


def test_str_effective_weight() -> None:
    layer = _layer([[0.3, -0.02, -0.5]])
    method = STR(s_init=S01).attach(layer, torch.optim.SGD(layer.parameters(), lr=0.1))
    torch.testing.assert_close(layer.weight, torch.tensor([[0.2, 0.0, -0.4]]))
    assert method.targets[0].mask.tolist() == [[True, False, True]]


def test_str_threshold_gradient_by_hand() -> None:
    layer = _layer([[0.3, -0.02, -0.5]])
    opt = torch.optim.SGD(layer.parameters(), lr=1.0)
    method = STR(s_init=S01, threshold_weight_decay=0.0).attach(layer, opt)
    layer(torch.tensor([[1.0, 2.0, 3.0]])).sum().backward()  # g = ∂L/∂w_eff = (1, 2, 3)
    opt.step()  # lr = 1: each tensor moves by minus its gradient
    # ∂L/∂w = g·1[|w| > t] = (1, 0, 3); ∂L/∂t = Σ g·(−sign w)·1[|w| > t] = −1 + 3 = 2,
    # ∂L/∂s = 2 · t(1 − t) = 2 · 0.1 · 0.9
    torch.testing.assert_close(method.raw_weight(0), torch.tensor([[0.3 - 1, -0.02, -0.5 - 3]]))
    assert method.threshold.item() == pytest.approx(S01 - 2 * 0.1 * 0.9)


def test_str_gradients_match_plain_autograd() -> None:
    torch.manual_seed(0)
    layer = nn.Linear(7, 5, bias=False)
    w0 = layer.weight.detach().clone()
    x, r = torch.randn(3, 7), torch.randn(3, 5)
    opt = torch.optim.SGD(layer.parameters(), lr=1.0)
    method = STR(s_init=-2.5, threshold_weight_decay=0.0).attach(layer, opt)
    (layer(x) * r).sum().backward()
    opt.step()  # lr = 1: the update is minus the gradient
    w, s = w0.clone().requires_grad_(), torch.tensor(-2.5, requires_grad=True)
    w_eff = torch.sign(w) * torch.relu(w.abs() - torch.sigmoid(s))
    (nn.functional.linear(x, w_eff) * r).sum().backward()
    torch.testing.assert_close(w0 - method.raw_weight(0), w.grad)
    torch.testing.assert_close(-2.5 - method.threshold.detach()[0], s.grad)


def test_str_thresholds_train_beside_the_users_optimizer() -> None:
    model = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, weight_decay=5e-4)
    method = STR().attach(model, opt)
    assert len(opt.param_groups) == 1 and len(opt.param_groups[0]["params"]) == 6
    (group,) = method._threshold_opt.groups  # same lr and wd as the weights' group
    assert group["params"] == [method.threshold] and group["weight_decay"] == 5e-4
    assert method.threshold.tolist() == [-10.0] * 3
    method.detach()
    assert len(opt.param_groups[0]["params"]) == 6
    model = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, weight_decay=5e-4)
    method = STR(threshold_weight_decay=0.0, threshold_lr=0.01).attach(model, opt)
    (group,) = method._threshold_opt.groups
    assert len(opt.param_groups) == 1 and group["weight_decay"] == 0.0 and group["lr"] == 0.01


def test_str_threshold_learns_again_after_reattach() -> None:
    model = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, weight_decay=0.01)
    STR(s_init=-3.0).attach(model, opt).detach()
    method = STR(s_init=-3.0).attach(model, opt)
    x = torch.randn(8, 8)
    for _ in range(3):
        opt.zero_grad()
        model(x).pow(2).mean().backward()
        opt.step()
    assert (method.threshold.detach() != -3.0).all()


def test_str_sparsity_is_emergent() -> None:
    assert get_method_info("str").sparsity_mode == "emergent"
    model = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=0.01)
    with pytest.raises(ValueError, match=r"str: does not take sparsity=0.9: .*emergent"):
        create_method("str", sparsity=0.9, total_steps=40)  # a target it would silently miss
    method = create_method("str", total_steps=40, s_init=-3.0).attach(model, opt)
    _train(model, opt, 10)
    early = method.report().sparsity
    _train(model, opt, 30)
    report = method.finish()  # far from 0.9, and never raises: there is no target
    assert report.global_target_nnz is None and 0.1 < early < report.sparsity < 0.6
    for i, t in enumerate(method.targets):
        assert torch.equal(t.mask, model[2 * i].weight != 0)  # the mask is w_eff != 0


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_str_trains_in_other_dtypes(dtype: torch.dtype) -> None:
    model = _mlp().to(dtype)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=0.01)
    method = STR(s_init=-3.0).attach(model, opt)
    torch.manual_seed(1)
    x, y = torch.randn(32, 8, dtype=dtype), torch.randint(0, 4, (32,))
    for _ in range(5):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x).float(), y).backward()
        opt.step()
    for i, t in enumerate(method.targets):
        assert t.param.dtype == dtype
        lam = method.threshold_values()[t.name]
        expected = nn.functional.softshrink(method.raw_weight(i), lam)
        assert torch.equal(t.param.detach(), expected) and torch.equal(t.mask, t.param != 0)
    assert method.report().sparsity > 0


def test_str_needs_optimizer_and_round_trips() -> None:
    with pytest.raises(ValueError, match="attach\\(model, optimizer\\)"):
        STR().attach(_mlp())

    def build() -> tuple[nn.Module, torch.optim.Optimizer, STR]:
        model = _mlp()
        opt = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9, weight_decay=0.05)
        return model, opt, STR(s_init=-3.0).attach(model, opt)

    model, opt, method = build()
    _train(model, opt, 5)
    model2, opt2, method2 = build()
    for dst, src in ((model2, model), (opt2, opt), (method2, method)):
        dst.load_state_dict(copy.deepcopy(src.state_dict()))
    _train(model, opt, 3)
    _train(model2, opt2, 3)
    assert method.threshold_values() == method2.threshold_values()
    assert all(
        torch.equal(a, b) for a, b in zip(model.parameters(), model2.parameters(), strict=True)
    )


def test_str_warns_when_a_layer_reaches_density_0() -> None:
    from sparsetrain.methods.diagnostics import SparsityTargetWarning

    model = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    method = STR(s_init=-10.0).attach(model, opt)
    x = torch.randn(8, 8)
    with torch.no_grad():
        method.threshold[1] = 5.0  # sigmoid(5) = 0.993 > every |w| of the middle layer
    with pytest.warns(SparsityTargetWarning, match=r"'2.weight' reached density 0 at step 1"):
        opt.zero_grad()
        model(x).pow(2).mean().backward()
        opt.step()
    assert [h for h in method.history if h.get("event")] == [
        {"step": 1, "event": "layer_at_density_0", "layer": "2.weight"}
    ]
