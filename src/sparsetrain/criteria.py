"""Pruning and growth criteria as pure functions on tensors.

Pruning *scores* follow one convention: the entries with the **lowest** score are removed (the
Fantastic Weights code's ``pruners.py`` convention). Growth scores: the **highest** inactive
entries are grown. Two pruning rules are not scores but selections (SET and the as-released SET),
so every pruning criterion is exposed through one signature::

    drop = criterion.select(weight, grad, mask, k, generator)  # bool; k True (SET: see doc)

``PRUNE_CRITERIA`` and ``GROWTH_CRITERIA`` are the registries the methods and the CLI use.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch

from sparsetrain._names import unknown_name
from sparsetrain.masking.topk import select_bottomk, select_topk, topk_indices

Order = Literal["before", "after"]

# --------------------------------------------------------------------------- pruning scores


def magnitude(weight: torch.Tensor) -> torch.Tensor:
    """|θ|."""
    return weight.abs()


def mest(weight: torch.Tensor, grad: torch.Tensor, gamma: float = 1.0) -> torch.Tensor:
    """MEST: |θ| + γ|g| (Yuan et al. 2021; FW default γ = 1)."""
    return weight.abs() + gamma * grad.abs()


def snip(weight: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """SNIP saliency |θ·g|."""
    return (weight * grad).abs()


def sensitivity(weight: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """|g| / (|θ| + 1e-8): the Fantastic Weights appendix criterion (performs badly there)."""
    return grad.abs() / (weight.abs() + 1e-8)


def reciprocal_sensitivity(weight: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """RSensitivity |θ| / (|g| + 1e-8), used in FW's main grid."""
    return weight.abs() / (grad.abs() + 1e-8)


def taylor(weight: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """First-order Taylor (TaylorF0) saliency (θ·g)²."""
    return (weight * grad).square()


def gradstep(weight: torch.Tensor, grad: torch.Tensor, gamma: float = 1.0) -> torch.Tensor:
    """|θ − γ·g|: magnitude after a virtual SGD step of size γ."""
    return (weight - gamma * grad).abs()


def random_scores(weight: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Uniform random scores (random pruning / random growth)."""
    return torch.rand(weight.shape, generator=generator).to(weight.device)


# --------------------------------------------------------------------------- SET selections


def set_drop(weight: torch.Tensor, mask: torch.Tensor, k: int) -> torch.Tensor:
    """SET's rule (corrected): remove ⌈k/2⌉ smallest positives and ⌈k/2⌉ negatives closest to 0.

    Active weights equal to zero count as positives (they are the smallest ones). When one sign
    has fewer active weights than ⌈k/2⌉, all of that sign are removed and nothing more.

    Args:
        weight: Weight tensor.
        mask: Current ``bool`` mask; only active entries are candidates.
        k: Number of removals requested (the DST drop count).

    Returns:
        ``bool`` tensor of the removed entries (at most ``2·⌈k/2⌉`` of them).
    """
    half = math.ceil(k / 2)
    w = weight.detach()
    pos = mask & (w >= 0)
    neg = mask & (w < 0)
    drop_pos = select_bottomk(w, min(half, int(pos.sum())), pos)
    drop_neg = select_topk(w, min(half, int(neg.sum())), neg)  # largest negatives = closest to 0
    return drop_pos | drop_neg


def set_as_released_drop(weight: torch.Tensor, mask: torch.Tensor, k: int) -> torch.Tensor:
    """SET as coded in the official Fantastic Weights repository (``--death SET``).

    ``magnitude_and_negativity_prune`` removes the ⌈k/2⌉ smallest positive weights and keeps, of
    the negative weights, only those strictly below the ⌈k/2⌉-th most negative one: every other
    negative weight is removed. This over-prunes (535 removals instead of 300 for 1000 Gaussian
    weights at ζ = 0.3). Active zeros are neither positive nor negative and are removed too.
    With ``k = 0`` the released code returns ``weight != 0``: only active zeros are removed.
    """
    half = math.ceil(k / 2)
    w = weight.detach()
    pos = mask & (w > 0)
    neg = mask & (w < 0)
    drop = mask & (w == 0)
    if k <= 0:
        return drop
    drop |= select_bottomk(w, min(half, int(pos.sum())), pos)
    keep_neg = select_bottomk(w, max(min(half, int(neg.sum())) - 1, 0), neg)
    return drop | (neg & ~keep_neg)


# --------------------------------------------------------------------------- registries


@dataclass(frozen=True)
class PruneCriterion:
    """A pruning criterion and what it needs.

    Attributes:
        name: Registry key.
        score_fn: Maps ``(weight, grad, generator, gamma)`` to scores (lowest removed); ``None``
            for selection rules (SET).
        needs_grad: Whether the dense gradient is required.
        order: Fantastic Weights' update order for this criterion (Nowak et al.): ``"before"`` runs
            the optimizer step first; ``"after"`` updates the topology on pre-step weights.
        description: One line for ``sparsetrain list``.
    """

    name: str
    score_fn: Callable[..., torch.Tensor] | None
    needs_grad: bool
    order: Order
    description: str
    select_fn: Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor] | None = None

    def scores(
        self,
        weight: torch.Tensor,
        grad: torch.Tensor | None,
        generator: torch.Generator | None = None,
        gamma: float = 1.0,
    ) -> torch.Tensor:
        """Scores for global ranking (lowest removed). Not defined for selection rules."""
        if self.score_fn is None:
            raise ValueError(f"prune criterion {self.name!r} is a selection rule, not a score")
        if self.needs_grad and grad is None:
            raise ValueError(f"prune criterion {self.name!r} needs the dense gradient")
        return self.score_fn(weight.detach(), grad, generator, gamma)

    def select(
        self,
        weight: torch.Tensor,
        grad: torch.Tensor | None,
        mask: torch.Tensor | None,
        k: int,
        generator: torch.Generator | None = None,
        gamma: float = 1.0,
    ) -> torch.Tensor:
        """Entries to remove among the active ones (``mask=None``: all are active).

        Exactly ``k`` for score criteria; SET rules may remove a different number (see them).
        """
        if self.select_fn is not None:
            if mask is None:
                mask = torch.ones_like(weight, dtype=torch.bool)
            return self.select_fn(weight, mask, k)
        return select_bottomk(self.scores(weight, grad, generator, gamma), k, mask)

    def select_indices(
        self,
        weight: torch.Tensor,
        grad: torch.Tensor | None,
        k: int,
        generator: torch.Generator | None = None,
        gamma: float = 1.0,
    ) -> torch.Tensor:
        """Flat indices of the entries to remove when every entry of ``weight`` is active.

        The DST update calls this on the gathered active entries only.
        """
        if self.select_fn is not None:
            return self.select(weight, grad, None, k, generator, gamma).reshape(-1).nonzero()[:, 0]
        scores = self.scores(weight, grad, generator, gamma).reshape(-1)
        return topk_indices(scores, k, largest=False)


def _s(fn: Callable[..., torch.Tensor], kind: str) -> Callable[..., torch.Tensor]:
    if kind == "w":
        return lambda w, g, gen, gamma: fn(w)
    if kind == "wg":
        return lambda w, g, gen, gamma: fn(w, g)
    if kind == "wgγ":
        return lambda w, g, gen, gamma: fn(w, g, gamma)
    return lambda w, g, gen, gamma: fn(w, gen)


PRUNE_CRITERIA: dict[str, PruneCriterion] = {
    c.name: c
    for c in [
        PruneCriterion("magnitude", _s(magnitude, "w"), False, "before", "lowest |w|"),
        PruneCriterion(
            "set",
            None,
            False,
            "before",
            "SET: ceil(k/2) smallest positives + ceil(k/2) negatives closest to zero (corrected)",
            set_drop,
        ),
        PruneCriterion(
            "set_as_released",
            None,
            False,
            "before",
            "SET as coded in the Fantastic Weights repo (over-prunes negative weights)",
            set_as_released_drop,
        ),
        PruneCriterion("mest", _s(mest, "wgγ"), True, "after", "lowest |w| + gamma*|g|"),
        PruneCriterion("snip", _s(snip, "wg"), True, "after", "lowest |w*g|"),
        PruneCriterion("sensitivity", _s(sensitivity, "wg"), True, "after", "lowest |g|/|w|"),
        PruneCriterion(
            "reciprocal_sensitivity",
            _s(reciprocal_sensitivity, "wg"),
            True,
            "after",
            "lowest |w|/|g| (RSensitivity)",
        ),
        PruneCriterion("taylor", _s(taylor, "wg"), True, "after", "lowest (w*g)^2 (TaylorF0)"),
        PruneCriterion("gradstep", _s(gradstep, "wgγ"), True, "after", "lowest |w - gamma*g|"),
        PruneCriterion("random", _s(random_scores, "gen"), False, "before", "uniformly random"),
    ]
}


@dataclass(frozen=True)
class GrowthCriterion:
    """A growth criterion: which inactive entries to activate.

    Attributes:
        name: Registry key.
        needs_grad: Whether the dense gradient is required.
        description: One line for ``sparsetrain list``.
    """

    name: str
    needs_grad: bool
    description: str


GROWTH_CRITERIA: dict[str, GrowthCriterion] = {
    c.name: c
    for c in [
        GrowthCriterion("random", False, "uniformly random inactive entries (exact count)"),
        GrowthCriterion("gradient", True, "inactive entries with the largest |dense gradient|"),
        GrowthCriterion(
            "momentum", False, "inactive entries with the largest |momentum| (Adam: |m|/sqrt(v))"
        ),
    ]
}


def grow_random(
    candidates: torch.Tensor,
    n: int,
    generator: torch.Generator | None = None,
    *,
    bernoulli: bool = False,
) -> torch.Tensor:
    """Random growth among ``candidates``.

    Args:
        candidates: ``bool`` tensor of growable (inactive) entries.
        n: Number of entries to grow.
        generator: Random generator.
        bernoulli: The official FW draw: each candidate turns on with probability
            ``n / #candidates``, so the count is exact only in expectation (as released).

    Returns:
        ``bool`` tensor of grown entries.
    """
    if bernoulli:
        p = n / max(int(candidates.sum()), 1)
        draw = torch.rand(candidates.shape, generator=generator).to(candidates.device) < p
        return draw & candidates
    return select_topk(random_scores(candidates, generator), n, candidates)


def growth_scores(
    name: str, grad: torch.Tensor | None, momentum: torch.Tensor | None
) -> torch.Tensor:
    """Scores of a deterministic growth criterion (``gradient`` or ``momentum``)."""
    if name == "gradient":
        if grad is None:
            raise ValueError("growth criterion 'gradient' needs the dense gradient")
        return grad.abs()
    if name == "momentum":
        if momentum is None:
            raise ValueError("growth criterion 'momentum' needs an optimizer with momentum state")
        return momentum.abs()
    raise ValueError(f"growth criterion {name!r} has no score; use grow_random")


def _lookup(table: dict[str, Any], name: str, kind: str) -> Any:
    if name in table:
        return table[name]
    raise unknown_name(kind, name, table)


def get_prune_criterion(name: str) -> PruneCriterion:
    """Look up a pruning criterion by name; unknown names list the valid ones."""
    return _lookup(PRUNE_CRITERIA, name, "prune criterion")


def get_growth_criterion(name: str) -> GrowthCriterion:
    """Look up a growth criterion by name; unknown names list the valid ones."""
    return _lookup(GROWTH_CRITERIA, name, "growth criterion")
