"""The built-in criteria (registration order is listing order: ``sparsetrain list criteria``)."""

from __future__ import annotations

import math

import torch

from sparsetrain.criteria.registry import register_growth_criterion, register_prune_criterion
from sparsetrain.masking.sharded import count, from_full, is_row_sharded
from sparsetrain.masking.topk import select_bottomk, select_topk


@register_prune_criterion("magnitude", order="post_step", description="lowest |w|")
def magnitude(weights: torch.Tensor) -> torch.Tensor:
    """|θ|."""
    return weights.abs()


@register_prune_criterion(
    "set",
    order="post_step",
    description=(
        "SET: ceil(k/2) smallest positives + ceil(k/2) negatives closest to zero (corrected)"
    ),
    selection=True,
)
def set_drop(weights: torch.Tensor, mask: torch.Tensor, k: int) -> torch.Tensor:
    """SET's rule (corrected): remove ⌈k/2⌉ smallest positives and ⌈k/2⌉ negatives closest to 0.

    Active weights equal to zero count as positives (they are the smallest ones). When one sign
    has fewer active weights than ⌈k/2⌉, all of that sign are removed and nothing more.

    Args:
        weights: Weight tensor.
        mask: Current ``bool`` mask; only active entries are candidates.
        k: Number of removals requested (the DST drop count).

    Returns:
        ``bool`` tensor of the removed entries (at most ``2·⌈k/2⌉`` of them).
    """
    half = math.ceil(k / 2)
    w = weights.detach()
    pos = mask & (w >= 0)
    neg = mask & (w < 0)
    drop_pos = select_bottomk(w, min(half, count(pos)), pos)
    drop_neg = select_topk(w, min(half, count(neg)), neg)  # largest negatives = closest to 0
    return drop_pos | drop_neg


@register_prune_criterion(
    "set_as_released",
    order="post_step",
    description="SET as coded in the Fantastic Weights repo (over-prunes negative weights)",
    selection=True,
)
def set_as_released_drop(weights: torch.Tensor, mask: torch.Tensor, k: int) -> torch.Tensor:
    """SET as coded in the official Fantastic Weights repository (``--death SET``).

    ``magnitude_and_negativity_prune`` removes the ⌈k/2⌉ smallest positive weights and keeps, of
    the negative weights, only those strictly below the ⌈k/2⌉-th most negative one: every other
    negative weight is removed. This over-prunes (535 removals instead of 300 for 1000 Gaussian
    weights at ζ = 0.3). Active zeros are neither positive nor negative and are removed too.
    With ``k = 0`` the released code returns ``weight != 0``: only active zeros are removed.
    """
    half = math.ceil(k / 2)
    w = weights.detach()
    pos = mask & (w > 0)
    neg = mask & (w < 0)
    drop = mask & (w == 0)
    if k <= 0:
        return drop
    drop |= select_bottomk(w, min(half, count(pos)), pos)
    keep_neg = select_bottomk(w, max(min(half, count(neg)) - 1, 0), neg)
    return drop | (neg & ~keep_neg)


@register_prune_criterion("mest", order="pre_step", description="lowest |w| + gamma*|g|")
def mest(weights: torch.Tensor, grads: torch.Tensor, gamma: float = 1.0) -> torch.Tensor:
    """MEST: |θ| + γ|g| (Yuan et al. 2021; FW default γ = 1)."""
    return weights.abs() + gamma * grads.abs()


@register_prune_criterion("snip", order="pre_step", description="lowest |w*g|")
def snip(weights: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
    """SNIP saliency |θ·g|."""
    return (weights * grads).abs()


@register_prune_criterion("sensitivity", order="pre_step", description="lowest |g|/|w|")
def sensitivity(weights: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
    """|g| / (|θ| + 1e-8): the Fantastic Weights appendix criterion (performs badly there)."""
    return grads.abs() / (weights.abs() + 1e-8)


@register_prune_criterion(
    "reciprocal_sensitivity", order="pre_step", description="lowest |w|/|g| (RSensitivity)"
)
def reciprocal_sensitivity(weights: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
    """RSensitivity |θ| / (|g| + 1e-8), used in FW's main grid."""
    return weights.abs() / (grads.abs() + 1e-8)


@register_prune_criterion("taylor", order="pre_step", description="lowest (w*g)^2 (TaylorF0)")
def taylor(weights: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
    """First-order Taylor (TaylorF0) saliency (θ·g)²."""
    return (weights * grads).square()


@register_prune_criterion("gradstep", order="pre_step", description="lowest |w - gamma*g|")
def gradstep(weights: torch.Tensor, grads: torch.Tensor, gamma: float = 1.0) -> torch.Tensor:
    """|θ − γ·g|: magnitude after a virtual SGD step of size γ."""
    return (weights - gamma * grads).abs()


@register_growth_criterion(
    "random", description="uniformly random inactive entries (exact count)", uniform=True
)
@register_prune_criterion("random", order="post_step", description="uniformly random")
def random_scores(weights: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Uniform random scores in [0, 1) (random pruning / random growth)."""
    full = torch.rand(weights.shape, generator=generator)
    return from_full(full, weights) if is_row_sharded(weights) else full.to(weights.device)


@register_growth_criterion(
    "gradient", description="inactive entries with the largest |dense gradient|"
)
def abs_gradient(grads: torch.Tensor) -> torch.Tensor:
    """|g|: RigL's growth score (the dense gradient of the batch)."""
    return grads.abs()


@register_growth_criterion(
    "momentum", description="inactive entries with the largest |momentum| (Adam: |m|/sqrt(v))"
)
def abs_momentum(momentum: torch.Tensor) -> torch.Tensor:
    """|m|: momentum growth (SGD's buffer; Adam's m/√v, see ``optim.momentum_of``)."""
    return momentum.abs()
