"""The common ``weight_init`` option: re-initialising the target weights at ``attach``.

``"kaiming_normal"`` draws N(0, 2/fan_in) (fan_in mode, ReLU gain) before the first masks, as
the OptG, ST-3 and STR code do; the two sparsity-aware inits of RigL's code (Evci et al.,
"Gradient Flow in Sparse Neural Networks and How Lottery Tickets Win", AAAI 2022) act once the
first masks exist: ``"sparse_layer_scaled"`` divides each tensor by √(its density),
``"sparse_unit_scaled"`` redraws each live weight from N(0, 2/fan) with fan the live inputs of
its output unit. Draws come from a generator of the method's seed (on the CPU, one stream on
any device), so they agree across processes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import nn

from sparsetrain.masking.targets import Target

WEIGHT_INITS = ("default", "kaiming_normal", "sparse_layer_scaled", "sparse_unit_scaled")
"""Values of the common ``weight_init`` option."""

INIT_STREAM = 1 << 40
"""Generator "step" of weight_init draws, beyond any training step."""

Generators = Callable[[int, int], torch.Generator]
"""``(step, tensor index) -> generator``: a method's :meth:`generator`."""


@torch.no_grad()
def draw_kaiming(targets: Sequence[Target], generator: Generators) -> None:
    """Redraw every target from N(0, 2/fan_in) (fan_in mode, ReLU gain)."""
    for i, t in enumerate(targets):
        draw = torch.empty(t.shape, dtype=t.param.dtype)  # on the CPU: one stream anywhere
        nn.init.kaiming_normal_(
            draw, mode="fan_in", nonlinearity="relu", generator=generator(INIT_STREAM, i)
        )
        t.param.copy_(draw)


@torch.no_grad()
def sparse_init(kind: str, targets: Sequence[Target], generator: Generators) -> None:
    """Apply the sparsity-aware part of ``kind`` to targets whose first masks exist.

    ``sparse_layer_scaled`` divides each target by √(its density); ``sparse_unit_scaled``
    redraws each live weight from N(0, 2/fan) with fan the live entries of its output unit
    (row of the weight viewed as (shape[0], -1)). Pruned weights stay zero; other kinds: no-op.
    """
    if not kind.startswith("sparse_"):
        return
    for i, t in enumerate(targets):
        live = t.mask.reshape(t.shape[0], -1)
        if kind == "sparse_layer_scaled":
            density = max(int(live.sum()), 1) / t.numel
            t.param.mul_(1.0 / math.sqrt(density))
        else:
            fan = live.sum(dim=1, keepdim=True).clamp_min(1).to(t.param.dtype)
            draw = torch.randn(
                live.shape, generator=generator(INIT_STREAM + 1, i), dtype=t.param.dtype
            )
            t.param.copy_((draw * (2.0 / fan).sqrt()).reshape(t.shape).to(t.param.device))
        t.param.mul_(t.mask.view(torch.uint8))
