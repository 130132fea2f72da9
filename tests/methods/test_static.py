"""Static sparsity: pruning at initialisation (SNIP and any other criterion), by hand.

Two bias-free heads ``y = a·x[:4] + b·x[4:]``: with ``loss = y.sum()`` on one input the weight
gradients are the input halves, so every score is computable by hand.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sparsetrain import create_method


class TwoHeads(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(4, 1, bias=False), nn.Linear(4, 1, bias=False)
        with torch.no_grad():
            self.a.weight.copy_(torch.tensor([[0.9, -0.1, 0.5, 0.2]]))
            self.b.weight.copy_(torch.tensor([[0.3, -0.8, 0.05, 0.4]]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.a(x[:, :4]) + self.b(x[:, 4:])


X1 = [1.0, 4.0, 0.5, 2.0, 2.0, 0.1, 1.0, 0.0]  # the first batch: the one SNIP scores
X2 = [0.0, 0.0, 9.0, 0.0, 0.0, 9.0, 0.0, 9.0]  # a second batch that would rank otherwise


def _run(init: str, steps: int, **options: object) -> tuple[TwoHeads, object, list[list[bool]]]:
    model = TwoHeads()
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    m = create_method("static", sparsity=0.5, init=init, total_steps=4, **options)
    m.attach(model, opt)
    masks = [[t.mask[0].tolist() for t in m.targets]]
    for x in [X1, X2][:steps]:
        opt.zero_grad()
        model(torch.tensor([x])).sum().backward()
        opt.step()
        masks.append([t.mask[0].tolist() for t in m.targets])
    return model, m, masks


T, F = True, False


def test_snip_prunes_at_step_one_by_first_batch_saliency() -> None:
    model, m, masks = _run("snip", 2)
    assert masks[0] == [[T] * 4, [T] * 4]  # dense until the first batch's gradient exists
    # |w·g| with g = X1: a = [.9, .4, .25, .4], b = [.6, .08, .05, 0]; keep the top 4 of 8
    assert masks[1] == [[T, T, F, T], [T, F, F, F]]
    assert masks[2] == masks[1]  # fixed from then on
    assert model.a.weight[0].tolist() == pytest.approx([0.9, -0.1, 0.0, 0.2])
    assert model.b.weight[0].tolist() == pytest.approx([0.3, 0.0, 0.0, 0.0])
    assert m.update_steps(4) == [1] and m.sparsity_at(0) == 0.0 and m.sparsity_at(1) == 0.5


@pytest.mark.parametrize(
    ("init", "kept"),
    [
        ("magnitude", [[T, F, T, F], [F, T, F, T]]),  # |w|: .9 .8 .5 .4 kept
        ("taylor", [[T, T, F, T], [T, F, F, F]]),  # (w·g)² ranks like |w·g|
    ],
)
def test_any_pruning_criterion_prunes_at_init(init: str, kept: list[list[bool]]) -> None:
    _, _, masks = _run(init, 1)
    assert masks[1] == kept


def test_init_names_the_valid_criteria() -> None:
    with pytest.raises(ValueError, match=r"unknown init 'snp'; valid: random, magnitude, .*snip"):
        create_method("static", init="snp", total_steps=4)
    with pytest.raises(ValueError, match="valid: random, magnitude"):
        create_method("static", init="set", total_steps=4)  # a per-layer selection rule
    with pytest.raises(ValueError, match=r"'snip' has no option\(s\) \['gamma'\]"):
        create_method("static", init="snip", prune_options={"gamma": 1.0}, total_steps=4)
