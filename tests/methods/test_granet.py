"""GraNet: global magnitude pruning plus gradient regrowth, by hand on six weights."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sparsetrain.methods import create_method
from sparsetrain.methods.granet import GraNet


class TwoHeads(nn.Module):
    """y = a·x[:3] + b·x[3:]: each layer's weight gradient is its half of the input."""

    def __init__(self, wa: list[float], wb: list[float]) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(3, 1, bias=False), nn.Linear(3, 1, bias=False)
        with torch.no_grad():
            self.a.weight.copy_(torch.tensor([wa]))
            self.b.weight.copy_(torch.tensor([wb]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.a(x[:, :3]) + self.b(x[:, 3:])


def _one_step(regrow_scope: str) -> tuple[TwoHeads, GraNet]:
    # |w| = a [.9 .1 .5], b [.2 .8 .05]; gradients a [1 2 3], b [7 0 4]; lr 0: weights stay put
    model = TwoHeads([0.9, -0.1, 0.5], [0.2, -0.8, 0.05])
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    m = GraNet(
        sparsity=0.5,
        total_steps=2,
        end_step=1,
        update_interval=1,
        regrow_fraction=1 / 3,
        regrow_fraction_end=1 / 3,
        regrow_scope=regrow_scope,
    ).attach(model, opt)
    model(torch.tensor([[1.0, 2.0, 3.0, 7.0, 0.0, 4.0]])).sum().backward()
    opt.step()  # step 1 = end_step: prune to 3 of 6, then drop and regrow ceil(ζ·n)
    m.apply_pending()  # a deferred update takes effect (see apply_pending)
    return model, m


def test_global_regrowth_by_hand() -> None:
    model, m = _one_step("global")
    # GMP keeps the global top 3 |w|: a0 .9, b1 .8, a2 .5. Regrowth drops ceil(3/3) = 1 more
    # (a2, the smallest) and regrows the largest |g| inactive entry: b0 (|g| 7), at zero.
    assert m.targets[0].mask.tolist() == [[True, False, False]]
    assert m.targets[1].mask.tolist() == [[True, True, False]]
    assert model.a.weight.tolist()[0] == pytest.approx([0.9, 0.0, 0.0])
    assert model.b.weight.tolist()[0] == pytest.approx([0.0, -0.8, 0.0])
    assert m.history[-1]["regrown"] == 1


def test_layer_regrowth_by_hand() -> None:
    model, m = _one_step("layer")
    # after GMP: a has a0, a2 (2 active), b has b1 (1). Layer a drops ceil(2/3) = 1 (a2) and
    # regrows its largest |g| inactive entry, a2 itself (|g| 3 > 2): it keeps its value.
    # Layer b drops b1 and regrows b0 (|g| 7), at zero. Counts per layer are unchanged.
    assert m.targets[0].mask.tolist() == [[True, False, True]]
    assert m.targets[1].mask.tolist() == [[True, False, False]]
    assert model.a.weight.tolist()[0] == pytest.approx([0.9, 0.0, 0.5])
    assert model.b.weight.tolist()[0] == pytest.approx([0.0, 0.0, 0.0])
    assert m.history[-1]["regrown"] == 1  # b0; a2 came straight back


def test_schedule_and_regrowth_fraction() -> None:
    m = GraNet(sparsity=0.9, total_steps=100, update_interval=10)
    assert m.end_step == 75
    assert m.regrow_fraction_at(0) == 0.5
    assert m.regrow_fraction_at(50) == pytest.approx((0.5 + 0.005) / 2)
    assert m.regrow_fraction_at(100) == pytest.approx(0.005)
    assert m.update_steps(100) == [10, 20, 30, 40, 50, 60, 70, 75, 80, 90]
    assert m.sparsity_at(75) == 0.9
    only_pruning = GraNet(
        sparsity=0.9, total_steps=100, update_interval=10, regrow_after_pruning=False
    )
    assert only_pruning.update_steps(100) == [10, 20, 30, 40, 50, 60, 70, 75]
    assert not only_pruning.is_regrow_step(80)


def test_reaches_target_exactly_with_hard_masks(tiny_mlp, batch) -> None:
    x, y = batch
    opt = torch.optim.SGD(tiny_mlp.parameters(), lr=0.1, momentum=0.9)
    m = create_method("granet", sparsity=0.8, total_steps=50, update_interval=5).attach(
        tiny_mlp, opt
    )
    for step in range(1, 51):
        loss = nn.functional.cross_entropy(tiny_mlp(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        m.apply_pending()  # a deferred update takes effect (see apply_pending)
        if step == 20:
            assert sum(t.nnz for t in m.targets) == round((1 - m.sparsity_at(20)) * 72)
    assert sum(t.nnz for t in m.targets) == round(0.2 * 72)
    m.finish()
    for t in m.targets:
        assert (t.param[~t.mask] == 0).all()
        assert (opt.state[t.param]["momentum_buffer"][~t.mask] == 0).all()
    assert any(h.get("regrown", 0) > 0 for h in m.history)


def test_sparse_start_uses_an_erk_mask(tiny_mlp) -> None:
    opt = torch.optim.SGD(tiny_mlp.parameters(), lr=0.1)
    m = GraNet(sparsity=0.8, initial_sparsity=0.5, total_steps=50).attach(tiny_mlp, opt)
    assert sum(t.nnz for t in m.targets) == 36
    assert [t.nnz for t in m.targets] != [24, 12]  # not the magnitude/uniform split


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"regrow_scope": "block"}, "layer, global"),
        ({"initial_mask": "random"}, "erk, magnitude"),
        ({"regrow_fraction": 1.5}, "regrow_fraction"),
        ({"regrow_fraction": 0.1, "regrow_fraction_end": 0.2}, "regrow_fraction"),
        ({"scope": "layer", "regrow_scope": "global"}, "scope='global'"),
    ],
)
def test_bad_options(kwargs, match) -> None:
    with pytest.raises(ValueError, match=match):
        create_method("granet", sparsity=0.5, total_steps=10, **kwargs)
