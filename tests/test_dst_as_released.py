"""Fantastic Weights' released behaviours as named DST options (defaults are ours)."""

import pytest
import torch
from torch import nn

from dst_runs import train_dst
from sparsetrain import attached_method, create_method


def _setup(**kw):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 20), nn.ReLU(), nn.Linear(20, 4))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    m = create_method("dst", sparsity=0.8, total_steps=50, update_interval=5, **kw)
    m.attach(model, opt)
    return model, opt, m


def _step(model, opt):
    x, y = torch.randn(16, 10), torch.randint(0, 4, (16,))
    opt.zero_grad()
    nn.functional.cross_entropy(model(x), y).backward()
    opt.step()
    attached_method(model).apply_pending()  # a deferred update takes effect (see apply_pending)


def test_dense_inactive_grads_keep_momentum_but_weights_stay_zero():
    model, opt, m = _setup(inactive_grads="dense")
    for _ in range(3):
        _step(model, opt)
    t = m.targets[0]
    assert not t.param[~t.mask].any()  # re-zeroed after every step
    buf = opt.state[t.param]["momentum_buffer"]
    assert buf[~t.mask].abs().sum() > 0  # inactive entries accumulate dense momentum


def test_masked_default_keeps_inactive_state_zero():
    model, opt, m = _setup()
    for _ in range(3):
        _step(model, opt)
    t = m.targets[0]
    assert not opt.state[t.param]["momentum_buffer"][~t.mask].any()


def test_regrown_value_kept_for_weights_dropped_and_regrown_in_one_update():
    # random growth over all inactive positions may pick a just-dropped weight: with "kept" its
    # value survives the update; with "zero" every regrown weight is zero
    for value in ("zero", "kept"):
        model, opt, m = _setup(regrown_value=value, grow="random", drop_fraction=1.0)
        for _ in range(4):
            _step(model, opt)
        t = m.targets[0]
        before_mask = t.mask.clone()
        _step(model, opt)  # step 5: update (magnitude prunes after the optimizer step)
        again = before_mask & t.mask  # active before and after: dropped and regrown
        assert again.any()
        if value == "kept":
            assert (t.param.detach()[again] != 0).all()
        else:
            assert (t.param.detach()[again] == 0).all()


def test_kept_regrown_value_is_the_same_in_sparse_execution() -> None:
    # a weight dropped and regrown in one update keeps its value in masked-dense execution;
    # sparse execution used to restart it from zero, so the runs drifted apart
    opts = dict(
        update_interval=2,
        regrown_value="kept",
        grow="gradient",
        drop_fraction=0.9,
        drop_fraction_end=0.5,
    )
    dense_losses, dense_masks, _ = train_dst(10, **opts)
    sparse_losses, sparse_masks, _ = train_dst(10, execution="sparse", **opts)
    assert sparse_losses == pytest.approx(dense_losses, abs=1e-5)
    assert all(torch.equal(a, b) for a, b in zip(dense_masks, sparse_masks, strict=True))


def test_momentum_growth_without_momentum_state_in_both_scopes() -> None:
    # SGD without momentum keeps no momentum buffer: momentum growth reads zero momentum in
    # both scopes (the global scope used to raise while the layer scope went on)
    for scope in ("layer", "global"):
        _, masks, method = train_dst(
            4, momentum=0.0, update_interval=1, grow="momentum", scope=scope
        )
        assert sum(int(m.sum()) for m in masks) == method.global_target_count()
        assert len(method.history) == 3  # updates at steps 1, 2, 3 (none at the final step)
