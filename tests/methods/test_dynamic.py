"""DST (``dst``, ``rigl``, ``set``, ``mest``): updates checked by hand through the public hooks."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sparsetrain import create_method


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 24), nn.ReLU(), nn.Linear(24, 4)
    )


def _batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(step)
    x = torch.randn(16, 16, generator=g)
    return x, (x.sum(1) > 0).long()


def _train(steps: int, momentum: float = 0.9, **options: object):
    model = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=momentum)
    method = create_method("dst", sparsity=0.8, total_steps=steps, **options).attach(model, opt)
    losses = []
    for step in range(steps):
        x, y = _batch(step)
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses, [t.mask.clone() for t in method.targets], method


# --------------------------------------------------------------------------- fixed bugs


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
    dense_losses, dense_masks, _ = _train(14, **opts)
    sparse_losses, sparse_masks, _ = _train(14, execution="sparse", **opts)
    assert sparse_losses == pytest.approx(dense_losses, abs=1e-5)
    assert all(torch.equal(a, b) for a, b in zip(dense_masks, sparse_masks, strict=True))


def test_momentum_growth_without_momentum_state_in_both_scopes() -> None:
    # SGD without momentum keeps no momentum buffer: momentum growth reads zero momentum in
    # both scopes (the global scope used to raise while the layer scope went on)
    for scope in ("layer", "global"):
        _, masks, method = _train(4, momentum=0.0, update_interval=1, grow="momentum", scope=scope)
        assert sum(int(m.sum()) for m in masks) == method.global_target_count()
        assert len(method.history) == 3  # updates at steps 1, 2, 3 (none at the final step)
