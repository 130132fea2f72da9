"""Fantastic Weights' released behaviours as named DST options (defaults are ours)."""

import torch
from torch import nn

from sparsetrain import create_method


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
