"""OptG: STE gradients, exact global top-k with ties, sigmoid ramp, supermask lr, short runs."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from torch import nn

from sparsetrain.methods import SparsityTargetWarning, create_method
from sparsetrain.methods.optg import OptG, select_global


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def _linear(weight: list[list[float]]) -> nn.Linear:
    layer = nn.Linear(len(weight[0]), len(weight), bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor(weight))
    return layer


def _train(model, method, opt, x, y, steps, hook=None):
    for _ in range(steps):
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return loss.item()


def test_ste_gradients_on_kept_and_pruned_entries() -> None:
    # W = [1, -2, 3, -4], S = [.4, .1, .3, .2]; the last epoch is at target 0.5: keep S's top 2
    model = _linear([[1.0, -2.0, 3.0, -4.0]])
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    m = OptG(sparsity=0.5, total_steps=4, steps_per_epoch=1).attach(model, opt)
    with torch.no_grad():
        m.scores[0].copy_(torch.tensor([[0.4, 0.1, 0.3, 0.2]]))
    m.unpublish()  # reselect() runs with W in the parameter, as in the optimizer step hook
    m.reselect(3)
    m.publish()
    assert m.targets[0].mask.tolist() == [[True, False, True, False]]
    assert model.weight.tolist() == [[1.0, 0.0, 3.0, 0.0]]  # W ⊙ M between steps
    out = model(torch.tensor([[1.0, 2.0, 3.0, 4.0]]))  # g = dL/dW_eff = x = [1, 2, 3, 4]
    assert out.item() == 10.0
    out.sum().backward()
    m.after_backward()  # what the step pre-hook does
    assert m.scores[0].grad.tolist() == [[1.0, -4.0, 9.0, -16.0]]  # g ⊙ W, pruned entries too
    assert model.weight.grad.tolist() == [[1.0, 0.0, 3.0, 0.0]]  # g ⊙ M
    assert model.weight.tolist() == [[1.0, -2.0, 3.0, -4.0]]  # W is back for the update


def test_score_grad_sums_accumulated_batches_and_ignores_stale_grads() -> None:
    model = _linear([[1.0, -2.0]])
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    m = OptG(sparsity=0.5, total_steps=4, steps_per_epoch=1).attach(model, opt)
    for _ in range(2):  # two accumulated backward passes: g = 2x
        model(torch.tensor([[3.0, 1.0]])).sum().backward()
    opt.step()
    assert m.scores[0].grad.tolist() == [[6.0, -4.0]]
    model.zero_grad()  # clears W.grad only: S.grad must not carry over
    model(torch.tensor([[1.0, 1.0]])).sum().backward()
    opt.step()
    assert m.scores[0].grad.tolist() == [[1.0, -2.0]]


def test_select_global_exact_count_breaks_ties_by_magnitude() -> None:
    scores = [torch.tensor([3.0, 1.0, 1.0]), torch.tensor([1.0, 0.0])]
    weights = [torch.tensor([0.1, 0.5, 0.2]), torch.tensor([0.9, 5.0])]
    # tau = 1 (3rd largest); 3 is above it, two of the three ties at 1 are kept: |w| .9 and .5
    exact = select_global(scores, weights, 3)
    assert [t.tolist() for t in exact] == [[True, True, False], [True, False]]
    released = select_global(scores, weights, 3, exact=False)  # official: every score >= tau
    assert [t.tolist() for t in released] == [[True, True, True], [True, False]]


def test_all_zero_scores_keep_everything_or_exactly_k() -> None:
    scores = [torch.zeros(2, 3)]
    weights = [torch.tensor([[0.1, -0.6, 0.3], [0.5, -0.2, 0.4]])]
    assert select_global(scores, weights, 6)[0].all()  # k = N: the official "keep all"
    assert select_global(scores, weights, 6, exact=False)[0].all()
    kept = select_global(scores, weights, 2)[0].view(2, 3)
    assert kept.tolist() == [[False, True, False], [True, False, False]]  # largest |w| win
    assert select_global(scores, weights, 2, exact=False)[0].all()  # ties: official keeps all


def test_ramp_values_long_run() -> None:
    m = OptG(sparsity=0.9, total_steps=160 * 10, steps_per_epoch=10)
    assert m.epochs == 160
    assert m.ramp(80) == 0.5
    assert m.sparsity_at(80 * 10) == pytest.approx(0.45)
    assert m.sparsity_at(80 * 10 + 9) == pytest.approx(0.45)  # the mask is per epoch
    assert m.ramp(75) == pytest.approx(_sigmoid(-5))  # ≈ 0.7 % of target
    assert m.ramp(85) == pytest.approx(_sigmoid(5))
    assert m.ramp(159) == 1.0  # forced last epoch; σ(79) == 1.0 in float64 anyway
    faithful = OptG(sparsity=0.9, total_steps=1600, steps_per_epoch=10, final_epochs_at_target=0)
    assert faithful.ramp(159) == _sigmoid(79) == 1.0


def test_short_run_options() -> None:
    # E = 4: the faithful ramp ends at σ(1) of the target; forcing or scaling beta fixes it
    faithful = OptG(sparsity=0.8, total_steps=8, steps_per_epoch=2, final_epochs_at_target=0)
    assert faithful.sparsity_at(8) == pytest.approx(0.8 * _sigmoid(1.0))
    forced = OptG(sparsity=0.8, total_steps=8, steps_per_epoch=2)
    assert forced.sparsity_at(8) == 0.8
    assert forced.sparsity_at(5) == pytest.approx(0.8 * _sigmoid(0.0))
    scaled = OptG(
        sparsity=0.8,
        total_steps=8,
        steps_per_epoch=2,
        final_epochs_at_target=0,
        beta_ref_epochs=100,
    )
    assert scaled.beta == 25.0
    assert scaled.sparsity_at(8) == pytest.approx(0.8 * _sigmoid(25.0))
    assert scaled.update_steps(8) == [2, 4, 6]


def _score_lrs(model, method, opt, sched=None, steps=8):
    seen: list[float] = []
    opt.register_step_pre_hook(lambda *_: seen.append(method.score_group["lr"]))
    x, y = torch.randn(4, 8), torch.randint(0, 4, (4,))
    for i in range(steps):
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        opt.zero_grad()
        if sched is not None and i % 2 == 1:
            sched.step()  # per-epoch LR schedule, stepped at the end of each epoch
    return seen


@pytest.mark.parametrize("sched_first", [False, True])
@pytest.mark.parametrize("score_opt", ["sgd", "user"])
@pytest.mark.parametrize(
    ("mode", "score_lr", "factor"),
    [("corrected", None, 1.0), ("corrected", 0.01, 0.1), ("as_released", 0.01, 1.0)],
)
def test_score_lr_follows_ramp_and_weight_lr(
    tiny_mlp, mode, score_lr, factor, score_opt, sched_first
) -> None:
    opt = torch.optim.SGD(tiny_mlp.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    if sched_first:  # a scheduler built before attach drives the scores too
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda e: 0.5**e)
    m = OptG(
        sparsity=0.5,
        total_steps=8,
        steps_per_epoch=2,
        score_lr=score_lr,
        score_lr_mode=mode,
        score_optimizer=score_opt,
    ).attach(tiny_mlp, opt)
    if not sched_first:
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda e: 0.5**e)  # after attach
    assert len(opt.param_groups) == 1  # the scores never join the user's optimizer
    assert m.score_group["params"] == m.scores
    assert m.score_group["weight_decay"] == 0.0
    assert m.score_group["momentum"] == 0.9
    seen = _score_lrs(tiny_mlp, m, opt, sched)
    r = [_sigmoid(-2.0), _sigmoid(-1.0), _sigmoid(0.0), 1.0]  # E = 4, last epoch forced
    expected = [0.1 * 0.5**e * r[e] * factor for e in range(4) for _ in range(2)]
    assert seen == pytest.approx(expected)


def test_dedicated_score_sgd_under_adam(tiny_mlp) -> None:
    """Default: the scores take SGD-momentum steps of lr_w·r·g⊙W even when the user runs Adam."""
    opt = torch.optim.Adam(tiny_mlp.parameters(), lr=0.01)
    m = OptG(sparsity=0.5, total_steps=8, steps_per_epoch=2).attach(tiny_mlp, opt)
    assert len(opt.param_groups) == 1  # the user's optimizer is left alone
    x, y = torch.randn(4, 8), torch.randint(0, 4, (4,))
    nn.functional.cross_entropy(tiny_mlp(x), y).backward()
    g = [t.param.grad.clone() for t in m.targets]
    w = [m.raw_weight(i).clone() for i in range(len(m.targets))]
    opt.step()
    lr_s = 0.01 * _sigmoid(-2.0)  # epoch 0 of E = 4
    for s, gi, wi in zip(m.scores, g, w, strict=True):
        torch.testing.assert_close(s.detach(), -lr_s * gi * wi)  # first momentum step = grad
    second = m.state_dict()["extra"]["score_optimizer"]["state"]
    assert len(second) == len(m.scores)  # momentum buffers travel with the method's state


def test_reaches_target_exactly_in_50_steps(tiny_mlp, batch) -> None:
    opt = torch.optim.SGD(tiny_mlp.parameters(), lr=0.1, momentum=0.9)
    m = create_method("optg", sparsity=0.8, total_steps=50, steps_per_epoch=5)
    m.attach(tiny_mlp, opt)
    _train(tiny_mlp, m, opt, *batch, 50)
    assert sum(t.nnz for t in m.targets) == round(0.2 * 72) == m.global_target_count()
    assert [h["step"] for h in m.history] == [0, 5, 10, 15, 20, 25, 30, 35, 40, 45]
    assert m.finish().rows  # raises if off target
    assert (tiny_mlp[0].weight == tiny_mlp[0].weight_raw * m.targets[0].mask).all()
    assert any(s.abs().sum() > 0 for s in m.scores)


def test_faithful_short_run_misses_target_and_warns(tiny_mlp, batch) -> None:
    opt = torch.optim.SGD(tiny_mlp.parameters(), lr=0.1, momentum=0.9)
    m = OptG(sparsity=0.8, total_steps=8, steps_per_epoch=2, final_epochs_at_target=0)
    m.attach(tiny_mlp, opt)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _train(tiny_mlp, m, opt, *batch, 8)
    assert sum(t.nnz for t in m.targets) == round((1 - 0.8 * _sigmoid(1.0)) * 72)
    assert any(issubclass(w.category, SparsityTargetWarning) for w in caught)


def test_state_round_trip_restores_scores_in_place(tiny_mlp, batch) -> None:
    opt = torch.optim.SGD(tiny_mlp.parameters(), lr=0.1, momentum=0.9)
    m = OptG(sparsity=0.5, total_steps=20, steps_per_epoch=2).attach(tiny_mlp, opt)
    _train(tiny_mlp, m, opt, *batch, 6)
    state = m.state_dict()
    ids = [id(s) for s in m.scores]
    with torch.no_grad():
        for s in m.scores:
            s.zero_()
    m.load_state_dict(state)
    assert [id(s) for s in m.scores] == ids  # optimizer references stay valid
    assert all(torch.equal(a, b) for a, b in zip(m.scores, state["extra"]["scores"], strict=True))


def test_layer_flags_and_detach(tiny_mlp) -> None:
    opt = torch.optim.SGD(tiny_mlp.parameters(), lr=0.1)
    m = OptG(sparsity=0.5, total_steps=10, steps_per_epoch=2, dense_first=True)
    m.attach(tiny_mlp, opt)
    assert [t.name for t in m.targets] == ["2.weight"]
    assert len(opt.param_groups) == 1  # the scores have their own SGD by default
    m.detach()
    opt = torch.optim.SGD(tiny_mlp.parameters(), lr=0.1)
    m = OptG(sparsity=0.5, total_steps=10, steps_per_epoch=2, score_optimizer="user")
    m.attach(tiny_mlp, opt)
    assert len(opt.param_groups) == 1
    assert isinstance(m._scores_opt.opt, torch.optim.SGD) and m.score_group["weight_decay"] == 0
    m.detach()
    assert len(opt.param_groups) == 1 and not hasattr(tiny_mlp[2], "weight_raw")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"total_steps": 10}, "steps_per_epoch"),
        ({"steps_per_epoch": 2}, "total_steps"),
        ({"total_steps": 10, "steps_per_epoch": 0}, "steps_per_epoch"),
        ({"total_steps": 10, "steps_per_epoch": 2, "beta": 0.0}, "beta"),
        ({"total_steps": 10, "steps_per_epoch": 2, "score_lr_mode": "x"}, "corrected"),
        ({"total_steps": 10, "steps_per_epoch": 2, "selection": "x"}, "exact"),
        ({"total_steps": 10, "steps_per_epoch": 2, "final_epochs_at_target": -1}, ">= 0"),
        ({"total_steps": 10, "steps_per_epoch": 2, "update_interval": 0}, "update_interval"),
        ({"total_steps": 10, "steps_per_epoch": 2, "beta_ref_epochs": 0}, "beta_ref_epochs"),
        ({"total_steps": 10, "steps_per_epoch": 2, "score_lr": -1.0}, "score_lr"),
    ],
)
def test_bad_options(kwargs, match) -> None:
    with pytest.raises(ValueError, match=match):
        create_method("optg", sparsity=0.5, **kwargs)


def test_needs_an_optimizer(tiny_mlp) -> None:
    with pytest.raises(ValueError, match="optimizer"):
        OptG(sparsity=0.5, total_steps=10, steps_per_epoch=2).attach(tiny_mlp)
    assert not hasattr(tiny_mlp[0], "weight_raw")  # nothing changed


def test_short_run_reaches_target_whatever_the_update_interval():
    # 5 epochs of 29 steps, re-selection every 50 steps: the forced final epoch still selects
    # at its first step (116), so training ends at the target.
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(12, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    method = create_method(
        "optg", sparsity=0.9, total_steps=145, steps_per_epoch=29, update_interval=50
    ).attach(model, opt)
    assert 116 in method.update_steps(145)
    x, y = torch.randn(32, 12), torch.randint(0, 3, (32,))
    for _ in range(145):
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert method.report().misses() == []
    assert method.sparsity_at(145) == pytest.approx(0.9)
