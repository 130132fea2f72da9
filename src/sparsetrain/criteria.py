"""Pruning and growth criteria, and the one drop-and-grow kernel every method uses.

Pruning *scores* follow one convention: the entries with the **lowest** score are removed (the
Fantastic Weights code's ``pruners.py`` convention). Growth scores: the **highest** inactive
entries are grown. Two pruning rules are not scores but selections (SET and the as-released SET).

Every criterion is a plain function called with keywords from one vocabulary::

    weights, grads, momentum, generator       # the inputs (dense tensors of one shape)
    <its own hyper-parameters>                # keyword parameters with defaults, e.g. gamma

A function names the inputs it reads and nothing else; registering it reads its signature, so
the registry knows what each criterion needs (``grads``: the dense gradient of the batch,
``momentum``: the optimizer's momentum, ``generator``: a seeded random stream) and which options
it takes. A pruning score must be elementwise (each entry's score depends on that entry only):
per layer, the kernel scores just the active entries, gathered into a 1-D tensor. Growth scores
see whole tensors. Adding a criterion is one decorated function::

    @register_prune_criterion("my_score", order="pre_step", description="lowest |w|·|g|^alpha")
    def my_score(weights, grads, alpha=1.0):
        return weights.abs() * grads.abs() ** alpha

and ``dst`` (``prune="my_score"``), ``granet`` (``prune="my_score"``) and ``static``
(``init="my_score"``) can use it, with ``prune_options={"alpha": 2.0}``. Growth criteria register
with :func:`register_growth_criterion` the same way (``grow=...``, ``grow_options=...``).

:func:`drop_and_grow` is the kernel behind every drop-and-grow step: DST's updates (per layer or
global), GraNet's regrowth and static pruning at initialisation (SNIP). It selects; the method
applies the change to weights, optimizer state and sparse layers.

Update order: ``"pre_step"`` criteria update the topology between ``loss.backward()`` and the
optimizer step (pre-step weights and gradients); ``"post_step"`` ones after the optimizer step.
Fantastic Weights' code calls these ``opt_order="after"`` and ``"before"`` respectively (the
order of the *optimizer step* relative to the update); :func:`resolve_order` still accepts those
names, with a ``DeprecationWarning``.
"""

from __future__ import annotations

import inspect
import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal

import torch

from sparsetrain._registry import Registry
from sparsetrain.masking.topk import (
    global_topk_masks,
    select_bottomk,
    select_topk,
    topk_indices,
)

Order = Literal["pre_step", "post_step"]
ORDERS: tuple[str, ...] = ("pre_step", "post_step")
LEGACY_ORDERS: dict[str, str] = {"before": "post_step", "after": "pre_step"}
"""Fantastic Weights' ``opt_order`` names: the optimizer step runs *before* / *after* the update."""

INPUTS: tuple[str, ...] = ("weights", "grads", "momentum", "generator")
"""The inputs a criterion function may name."""

SCOPES: tuple[str, ...] = ("layer", "global")


def resolve_order(value: str, option: str = "order") -> str:
    """``"pre_step"``/``"post_step"`` (and ``"auto"``) as given; the legacy names mapped, warning.

    Raises:
        ValueError: An unknown value.
    """
    if value in LEGACY_ORDERS:
        new = LEGACY_ORDERS[value]
        warnings.warn(
            f"{option}={value!r} is deprecated (Fantastic Weights' naming: the optimizer step runs "
            f"{value} the update); use {option}={new!r}",
            DeprecationWarning,
            stacklevel=3,
        )
        return new
    return value


# --------------------------------------------------------------------------- criterion objects


def _read_signature(
    kind: str, name: str, fn: Callable[..., Any], fixed: tuple[str, ...]
) -> tuple[frozenset[str], Mapping[str, Any]]:
    """The inputs ``fn`` reads and its hyper-parameters (name → default)."""
    inputs: set[str] = set()
    options: dict[str, Any] = {}
    for p in inspect.signature(fn).parameters.values():
        if p.name in INPUTS:
            inputs.add(p.name)
        elif p.name in fixed:
            continue
        elif p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) or p.default is p.empty:
            raise TypeError(
                f"{kind} criterion {name!r}: parameter {p.name!r} is neither an input "
                f"({', '.join(INPUTS)}) nor a hyper-parameter with a default"
            )
        else:
            options[p.name] = p.default
    missing = [f for f in fixed if f not in inspect.signature(fn).parameters]
    if missing:
        raise TypeError(f"{kind} criterion {name!r} must take {', '.join(missing)}")
    return frozenset(inputs), MappingProxyType(options)


class _Criterion:
    """What prune and growth criteria share: inputs, options and the keyword call."""

    kind: str = ""
    name: str
    fn: Callable[..., torch.Tensor]
    inputs: frozenset[str]
    options: Mapping[str, Any]

    @property
    def needs_grad(self) -> bool:
        """Whether the criterion reads the dense gradient."""
        return "grads" in self.inputs

    @property
    def needs_momentum(self) -> bool:
        """Whether the criterion reads the optimizer's momentum."""
        return "momentum" in self.inputs

    def check_options(self, options: Mapping[str, Any] | None) -> dict[str, Any]:
        """``options`` as a dict, refusing names the criterion does not take."""
        options = dict(options or {})
        bad = sorted(k for k in options if k not in self.options)
        if bad:
            valid = ", ".join(self.options) or "none"
            raise ValueError(
                f"{self.kind} criterion {self.name!r} has no option(s) {bad}; its options: {valid}"
            )
        return options

    def _call(
        self,
        weights: torch.Tensor | None,
        grads: torch.Tensor | None,
        momentum: torch.Tensor | None,
        generator: torch.Generator | None,
        options: Mapping[str, Any],
        **fixed: Any,
    ) -> torch.Tensor:
        given = {"weights": weights, "grads": grads, "momentum": momentum, "generator": generator}
        if self.needs_grad and grads is None:
            raise ValueError(f"{self.kind} criterion {self.name!r} needs the dense gradient")
        if self.needs_momentum and momentum is None:
            raise ValueError(
                f"{self.kind} criterion {self.name!r} needs an optimizer with momentum state"
            )
        if "weights" in self.inputs and weights is None:
            raise ValueError(f"{self.kind} criterion {self.name!r} needs the weights")
        kwargs = {k: v for k, v in given.items() if k in self.inputs}
        if weights is not None and "weights" in kwargs:
            kwargs["weights"] = weights.detach()
        return self.fn(**kwargs, **self.check_options(options), **fixed)


@dataclass(frozen=True, eq=False)
class PruneCriterion(_Criterion):
    """A pruning criterion: which active entries to remove (see the module docstring).

    Attributes:
        name: Registry key.
        fn: The criterion function (scores, lowest removed; or a selection rule).
        default_order: When DST's ``order="auto"`` updates with it: ``"pre_step"`` (before the
            optimizer step, on pre-step weights and gradients) or ``"post_step"`` (after it), as
            Fantastic Weights does per criterion (Nowak et al.).
        description: One line for ``sparsetrain list``.
        selection: ``fn(weights, mask, k, ...)`` returns the ``bool`` entries to remove (SET),
            instead of scores; such rules work per layer only.
        inputs: The inputs ``fn`` reads (from its signature).
        options: Its hyper-parameters and their defaults (from its signature).
    """

    name: str
    fn: Callable[..., torch.Tensor]
    default_order: Order
    description: str
    selection: bool = False
    inputs: frozenset[str] = frozenset()
    options: Mapping[str, Any] = field(default_factory=dict)
    kind = "prune"

    @property
    def order(self) -> str:
        """Deprecated: ``default_order`` in Fantastic Weights' naming (``"before"``/``"after"``)."""
        warnings.warn(
            "PruneCriterion.order uses Fantastic Weights' inverted naming and is deprecated; "
            "use default_order ('pre_step' or 'post_step')",
            DeprecationWarning,
            stacklevel=2,
        )
        return next(k for k, v in LEGACY_ORDERS.items() if v == self.default_order)

    def scores(
        self,
        weights: torch.Tensor,
        grads: torch.Tensor | None = None,
        *,
        momentum: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        **options: Any,
    ) -> torch.Tensor:
        """Scores of every entry (lowest removed). Not defined for selection rules."""
        if self.selection:
            raise ValueError(f"prune criterion {self.name!r} is a selection rule, not a score")
        return self._call(weights, grads, momentum, generator, options)

    def select(
        self,
        weights: torch.Tensor,
        grads: torch.Tensor | None,
        mask: torch.Tensor | None,
        k: int,
        generator: torch.Generator | None = None,
        *,
        momentum: torch.Tensor | None = None,
        **options: Any,
    ) -> torch.Tensor:
        """``bool`` entries to remove among the active ones (``mask=None``: all are active).

        Exactly ``k`` for score criteria; SET rules may remove a different number (see them).
        """
        if self.selection:
            if mask is None:
                mask = torch.ones_like(weights, dtype=torch.bool)
            return self._call(weights, grads, momentum, generator, options, mask=mask, k=k)
        scores = self.scores(weights, grads, momentum=momentum, generator=generator, **options)
        return select_bottomk(scores, k, mask)

    def drop_indices(
        self,
        weights: torch.Tensor,
        k: int,
        *,
        grads: torch.Tensor | None = None,
        momentum: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        keep_top: bool = False,
        **options: Any,
    ) -> torch.Tensor:
        """Flat indices of the entries to remove when every entry of ``weights`` is active.

        :func:`drop_and_grow` calls this on the gathered active entries of one tensor.
        ``keep_top`` keeps the ``numel - k`` highest scores instead of removing the ``k`` lowest
        (the same entries unless scores tie at the boundary).
        """
        if self.selection:
            drop = self.select(weights, grads, None, k, generator, momentum=momentum, **options)
            return drop.reshape(-1).nonzero()[:, 0]
        scores = self.scores(weights, grads, momentum=momentum, generator=generator, **options)
        if not keep_top:
            return topk_indices(scores.reshape(-1), k, largest=False)
        dropped = torch.ones(scores.numel(), dtype=torch.bool, device=scores.device)
        dropped[topk_indices(scores.reshape(-1), scores.numel() - k)] = False
        return dropped.nonzero().squeeze(1)


@dataclass(frozen=True, eq=False)
class GrowthCriterion(_Criterion):
    """A growth criterion: scores of the inactive entries, the highest grown.

    Attributes:
        name: Registry key.
        fn: The score function.
        description: One line for ``sparsetrain list``.
        uniform: Its scores are independent U[0, 1) draws (random growth), so DST's
            ``bernoulli=True`` can turn each candidate on with probability n / #candidates.
        inputs: The inputs ``fn`` reads (from its signature).
        options: Its hyper-parameters and their defaults (from its signature).
    """

    name: str
    fn: Callable[..., torch.Tensor]
    description: str
    uniform: bool = False
    inputs: frozenset[str] = frozenset()
    options: Mapping[str, Any] = field(default_factory=dict)
    kind = "growth"

    def scores(
        self,
        weights: torch.Tensor | None = None,
        grads: torch.Tensor | None = None,
        *,
        momentum: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        **options: Any,
    ) -> torch.Tensor:
        """Scores of every entry (the highest inactive ones are grown)."""
        return self._call(weights, grads, momentum, generator, options)

    def grow_indices(
        self,
        n: int,
        candidates: torch.Tensor,
        *,
        weights: torch.Tensor | None = None,
        grads: torch.Tensor | None = None,
        momentum: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        bernoulli: bool = False,
        **options: Any,
    ) -> torch.Tensor:
        """Flat indices of ``n`` entries to grow among ``candidates`` (flat ``bool``).

        ``bernoulli`` (uniform criteria only; ignored otherwise): each candidate turns on with
        probability ``n / #candidates`` (the official FW draw, exact only in expectation).
        """
        flat = self.scores(
            weights, grads, momentum=momentum, generator=generator, **options
        ).reshape(-1)
        if bernoulli and self.uniform:
            p = n / max(int(candidates.sum()), 1)
            return ((flat < p) & candidates).nonzero().squeeze(1)
        return topk_indices(flat, n, candidates)


# --------------------------------------------------------------------------- registries

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
    order = resolve_order(order)
    if order not in ORDERS:
        raise ValueError(f"unknown order {order!r}; valid: {', '.join(ORDERS)}")

    def deco(fn: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
        fixed = ("mask", "k") if selection else ()
        inputs, options = _read_signature("prune", name, fn, fixed)
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
        inputs, options = _read_signature("growth", name, fn, ())
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


# --------------------------------------------------------------------------- pruning criteria
# Registry order is listing order (``sparsetrain list criteria``).


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
    drop_pos = select_bottomk(w, min(half, int(pos.sum())), pos)
    drop_neg = select_topk(w, min(half, int(neg.sum())), neg)  # largest negatives = closest to 0
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
    drop |= select_bottomk(w, min(half, int(pos.sum())), pos)
    keep_neg = select_bottomk(w, max(min(half, int(neg.sum())) - 1, 0), neg)
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
    return torch.rand(weights.shape, generator=generator).to(weights.device)


# --------------------------------------------------------------------------- growth criteria


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


# --------------------------------------------------------------------------- the kernel


@dataclass
class Site:
    """One tensor :func:`drop_and_grow` works on, and what its criteria may read.

    Attributes:
        weights: The dense weights.
        mask: The current ``bool`` mask (read, never written).
        grads: The dense gradient (required by criteria that read ``grads``).
        momentum: The optimizer's momentum as a dense tensor (criteria that read ``momentum``).
        prune_generator: Random stream of the pruning criterion.
        grow_generator: Random stream of the growth criterion.
    """

    weights: torch.Tensor
    mask: torch.Tensor
    grads: torch.Tensor | None = None
    momentum: torch.Tensor | None = None
    prune_generator: torch.Generator | None = None
    grow_generator: torch.Generator | None = None


@dataclass(frozen=True)
class Change:
    """What one drop-and-grow step does to one tensor.

    Attributes:
        drop: Flat ``int64`` indices of the active entries removed.
        grow: Flat ``int64`` indices of the entries activated; an entry can be in both (dropped
            and regrown at once: it stays active).
        fresh: The entries of ``grow`` that were inactive before the step (not just dropped).
        active: Active entries of the tensor before the step.
    """

    drop: torch.Tensor
    grow: torch.Tensor
    fresh: torch.Tensor
    active: int


def _gather(x: torch.Tensor | None, index: torch.Tensor) -> torch.Tensor | None:
    return None if x is None else x.detach().reshape(-1)[index]


def _count(k: int | None, fraction: float | None, active: int) -> int:
    """``k``, or ``⌈fraction · active⌉`` (at most ``active``)."""
    return k if fraction is None else min(math.ceil(fraction * active), active)  # type: ignore[return-value]


def _layer_change(
    site: Site,
    k: int | None,
    fraction: float | None,
    prune: PruneCriterion,
    grow: GrowthCriterion | None,
    prune_options: Mapping[str, Any],
    grow_options: Mapping[str, Any],
    bernoulli: bool,
    keep_top: bool,
) -> Change:
    """Drop-and-grow on one tensor, on flat indices (the active entries only are scored)."""
    flat_mask = site.mask.reshape(-1)
    active = flat_mask.nonzero().squeeze(1)
    local = prune.drop_indices(
        site.weights.detach().reshape(-1)[active],
        _count(k, fraction, active.numel()),
        grads=_gather(site.grads, active) if prune.needs_grad else None,
        momentum=_gather(site.momentum, active) if prune.needs_momentum else None,
        generator=site.prune_generator,
        keep_top=keep_top,
        **prune_options,
    )
    drop = active[local]
    if grow is None:
        return Change(drop, drop.new_empty(0), drop.new_empty(0), active.numel())
    candidates = ~flat_mask
    candidates[drop] = True  # just-dropped entries may be regrown
    grown = grow.grow_indices(
        drop.numel(),
        candidates,
        weights=site.weights,
        grads=site.grads,
        momentum=site.momentum,
        generator=site.grow_generator,
        bernoulli=bernoulli,
        **grow_options,
    )
    was_dropped = torch.zeros_like(flat_mask).index_fill_(0, drop, True)
    return Change(drop, grown, grown[~was_dropped[grown]], active.numel())


def _global_changes(
    sites: Sequence[Site],
    k: int | None,
    fraction: float | None,
    prune: PruneCriterion,
    grow: GrowthCriterion | None,
    prune_options: Mapping[str, Any],
    grow_options: Mapping[str, Any],
    keep_top: bool,
) -> list[Change]:
    """One ranking over every tensor for the drop, and one for the growth."""
    if prune.selection:
        raise ValueError(f"prune criterion {prune.name!r} is per-layer only; use scope='layer'")
    scores = [
        prune.scores(
            s.weights, s.grads, momentum=s.momentum, generator=s.prune_generator, **prune_options
        )
        for s in sites
    ]
    masks = [s.mask for s in sites]
    actives = [int(m.sum()) for m in masks]
    k = _count(k, fraction, sum(actives))
    if keep_top:
        kept = global_topk_masks(scores, sum(actives) - k, masks)
        drops = [m & ~kp for m, kp in zip(masks, kept, strict=True)]
    else:
        drops = global_topk_masks(scores, k, masks, largest=False)
        kept = [m & ~d for m, d in zip(masks, drops, strict=True)]
    if grow is None:
        grows = [torch.zeros_like(m) for m in masks]
    else:
        gscores = [
            grow.scores(
                s.weights, s.grads, momentum=s.momentum, generator=s.grow_generator, **grow_options
            )
            for s in sites
        ]
        grows = global_topk_masks(gscores, k, [~kp for kp in kept])
    changes = []
    for d, g, n in zip(drops, grows, actives, strict=True):
        grown = g.reshape(-1).nonzero().squeeze(1)
        fresh = grown[~d.reshape(-1)[grown]]
        changes.append(Change(d.reshape(-1).nonzero().squeeze(1), grown, fresh, n))
    return changes


def drop_and_grow(
    sites: Sequence[Site],
    prune: str | PruneCriterion,
    grow: str | GrowthCriterion | None,
    counts: int | Sequence[int] | None = None,
    scope: str = "layer",
    *,
    fraction: float | None = None,
    prune_options: Mapping[str, Any] | None = None,
    grow_options: Mapping[str, Any] | None = None,
    bernoulli: bool = False,
    keep_top: bool = False,
    commit: Callable[[int, Change], None] | None = None,
    workers: int | None = None,
) -> list[Change]:
    """Remove active entries by ``prune`` and activate as many by ``grow``: the one kernel.

    ``scope="layer"``: tensor ``i`` drops ``counts[i]`` of its active entries (only those are
    scored) and grows as many (SET rules: as many as they removed) among its inactive ones,
    the just-dropped included; per-tensor counts are kept. ``scope="global"``: ``counts``
    active entries are dropped by one ranking over every tensor, and as many grown by another,
    so counts move between tensors. ``grow=None`` prunes only (static pruning at init). Instead
    of ``counts``, ``fraction`` drops ``⌈fraction · n⌉`` of the ``n`` active entries (of each
    tensor, or of all), counted where the entries are gathered anyway.

    Selection never changes a mask: the caller applies each :class:`Change` (``commit`` is
    called with it per tensor, from the worker thread in layer scope), then updates weights,
    optimizer state and sparse structure as its method requires.

    Args:
        sites: The tensors and the inputs their criteria read.
        prune: Pruning criterion (name or object).
        grow: Growth criterion (name or object), or ``None``.
        counts: Entries to drop: one count per site (layer scope) or the total (global).
        scope: ``"layer"`` or ``"global"``.
        fraction: Drop this fraction of the active entries instead (exactly one of ``counts``
            and ``fraction``).
        prune_options: Hyper-parameters of the pruning criterion (e.g. ``{"gamma": 0.5}``).
        grow_options: Hyper-parameters of the growth criterion.
        bernoulli: Uniform growth by independent draws (exact only in expectation; layer scope).
        keep_top: Keep the highest scores instead of dropping the lowest (see
            :meth:`PruneCriterion.drop_indices`).
        commit: Called as ``commit(i, change)`` once per site.
        workers: Threads for the layer scope (default: ``torch.get_num_threads()``). Tensors
            are independent, so the result does not depend on it.

    Returns:
        One :class:`Change` per site.

    >>> s = Site(torch.tensor([0.3, -0.1, 0.0, 0.0]), torch.tensor([True, True, False, False]),
    ...          grads=torch.tensor([0.0, 0.0, 0.5, -2.0]))
    >>> c = drop_and_grow([s], "magnitude", "gradient", [1])[0]
    >>> c.drop.tolist(), c.grow.tolist()
    ([1], [3])
    """
    prune = get_prune_criterion(prune)
    grow = None if grow is None else get_growth_criterion(grow)
    popts = prune.check_options(prune_options)
    gopts = {} if grow is None else grow.check_options(grow_options)
    if scope not in SCOPES:
        raise ValueError(f"unknown scope {scope!r}; valid: {', '.join(SCOPES)}")
    if (counts is None) == (fraction is None):
        raise ValueError("give exactly one of counts and fraction")
    if fraction is not None and not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must be in [0, 1], got {fraction!r}")
    if scope == "global":
        if counts is not None and not isinstance(counts, int):
            raise TypeError(f"scope='global' takes one total count, got {counts!r}")
        changes = _global_changes(sites, counts, fraction, prune, grow, popts, gopts, keep_top)
        if commit is not None:
            for i, change in enumerate(changes):
                commit(i, change)
        return changes
    if counts is not None and (isinstance(counts, int) or len(counts) != len(sites)):
        raise ValueError(f"scope='layer' takes one count per tensor ({len(sites)}), got {counts!r}")

    def job(i: int) -> Change:
        k = None if counts is None else counts[i]  # type: ignore[index]
        change = _layer_change(
            sites[i], k, fraction, prune, grow, popts, gopts, bernoulli, keep_top
        )
        if commit is not None:
            commit(i, change)
        return change

    # Most selection ops run single-threaded, so a thread per core overlaps the tensors.
    n = min(torch.get_num_threads() if workers is None else workers, len(sites))
    if n > 1:
        with ThreadPoolExecutor(n) as pool:
            return list(pool.map(job, range(len(sites))))
    return [job(i) for i in range(len(sites))]


# --------------------------------------------------------------------------- helpers


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


def growth_scores(
    name: str, grad: torch.Tensor | None, momentum: torch.Tensor | None
) -> torch.Tensor:
    """Deprecated: ``get_growth_criterion(name).scores(grads=..., momentum=...)``.

    Scores of a deterministic growth criterion; random growth has none here (``grow_random``).
    """
    warnings.warn(
        "growth_scores() is deprecated; use get_growth_criterion(name).scores(...)",
        DeprecationWarning,
        stacklevel=2,
    )
    crit = get_growth_criterion(name)
    if crit.uniform:
        raise ValueError(f"growth criterion {name!r} has no score; use grow_random")
    return crit.scores(None, grad, momentum=momentum)
