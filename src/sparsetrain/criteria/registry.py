"""The criterion registries: ``register_*`` decorators, look-ups and the random-growth helper."""

from __future__ import annotations

from collections.abc import Callable

import torch

from sparsetrain._registry import Registry
from sparsetrain.criteria.criterion import (
    ORDERS,
    GrowthCriterion,
    PruneCriterion,
    read_signature,
)

PRUNE_CRITERIA: Registry[PruneCriterion] = Registry(
    "prune criterion", sort_valid=False, strings_only=False
)
GROWTH_CRITERIA: Registry[GrowthCriterion] = Registry(
    "growth criterion", sort_valid=False, strings_only=False
)


def register_prune_criterion(
    name: str, *, order: str, description: str, selection: bool = False
) -> Callable[[Callable[..., torch.Tensor]], Callable[..., torch.Tensor]]:
    """Decorator registering a pruning criterion function under ``name`` (warns on duplicates).

    Args:
        name: Registry key (``dst``/``granet``: ``prune=name``; ``static``: ``init=name``).
        order: ``"pre_step"`` or ``"post_step"``: when DST's ``order="auto"`` updates with it.
        description: One line for ``sparsetrain list criteria``.
        selection: The function is ``fn(weights, mask, k, ...)`` returning the ``bool`` entries
            to remove, instead of scores (per-layer only, like SET).
    """
    if order not in ORDERS:
        raise ValueError(f"unknown order {order!r}; valid: {', '.join(ORDERS)}")

    def deco(fn: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
        fixed = ("mask", "k") if selection else ()
        inputs, options = read_signature("prune", name, fn, fixed)
        criterion = PruneCriterion(
            name,
            fn,
            order,
            description,
            selection,
            inputs,
            options,  # type: ignore[arg-type]
        )
        PRUNE_CRITERIA.add(name, criterion)
        return fn

    return deco


def register_growth_criterion(
    name: str, *, description: str, uniform: bool = False
) -> Callable[[Callable[..., torch.Tensor]], Callable[..., torch.Tensor]]:
    """Decorator registering a growth criterion function under ``name`` (warns on duplicates).

    Args:
        name: Registry key (``dst``/``granet``: ``grow=name``).
        description: One line for ``sparsetrain list criteria``.
        uniform: Its scores are independent U[0, 1) draws (see :class:`GrowthCriterion`).
    """

    def deco(fn: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
        inputs, options = read_signature("growth", name, fn, ())
        GROWTH_CRITERIA.add(name, GrowthCriterion(name, fn, description, uniform, inputs, options))
        return fn

    return deco


def get_prune_criterion(name: str | PruneCriterion) -> PruneCriterion:
    """Look up a pruning criterion by name; unknown names list the valid ones."""
    return name if isinstance(name, PruneCriterion) else PRUNE_CRITERIA.lookup(name)


def get_growth_criterion(name: str | GrowthCriterion) -> GrowthCriterion:
    """Look up a growth criterion by name; unknown names list the valid ones."""
    if isinstance(name, GrowthCriterion):
        return name
    return GROWTH_CRITERIA.lookup(name)


def grow_random(
    candidates: torch.Tensor,
    n: int,
    generator: torch.Generator | None = None,
    *,
    bernoulli: bool = False,
) -> torch.Tensor:
    """Random growth among ``candidates`` (the ``random`` growth criterion, as a ``bool`` mask).

    Args:
        candidates: ``bool`` tensor of growable (inactive) entries.
        n: Number of entries to grow.
        generator: Random generator.
        bernoulli: The official FW draw: each candidate turns on with probability
            ``n / #candidates``, so the count is exact only in expectation (as released).

    Returns:
        ``bool`` tensor of grown entries.
    """
    idx = GROWTH_CRITERIA["random"].grow_indices(
        n, candidates.reshape(-1), weights=candidates, generator=generator, bernoulli=bernoulli
    )
    out = torch.zeros(candidates.numel(), dtype=torch.bool, device=candidates.device)
    out[idx] = True
    return out.view(candidates.shape)
