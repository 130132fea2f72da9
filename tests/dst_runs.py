"""A short seeded DST run on a tiny MLP, shared by the DST tests (threads, as-released options)."""

from __future__ import annotations

import torch
from torch import nn

from sparsetrain import create_method
from sparsetrain.methods import SparsityMethod


def tiny_mlp() -> nn.Module:
    """A seeded 16-32-24-4 MLP (three masked Linear layers)."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 24), nn.ReLU(), nn.Linear(24, 4)
    )


def batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The batch of ``step``: 16 seeded inputs, label = sign of their sum."""
    g = torch.Generator().manual_seed(step)
    x = torch.randn(16, 16, generator=g)
    return x, (x.sum(1) > 0).long()


def train_dst(
    steps: int, momentum: float = 0.9, **options: object
) -> tuple[list[float], list[torch.Tensor], SparsityMethod]:
    """Train ``dst`` (sparsity 0.8, SGD lr 0.05) for ``steps``: losses, final masks, the method."""
    model = tiny_mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=momentum)
    method = create_method("dst", sparsity=0.8, total_steps=steps, **options).attach(model, opt)
    losses = []
    for step in range(steps):
        x, y = batch(step)
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses, [t.mask.clone() for t in method.targets], method
