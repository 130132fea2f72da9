"""Criterion objects: what a registered function reads, its options, and when it updates.

See :mod:`sparsetrain.criteria` for the conventions (lowest pruning score removed, highest
growth score grown) and the update orders.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal

import torch

from sparsetrain.masking.topk import select_bottomk, topk_indices

Order = Literal["pre_step", "post_step"]
ORDERS: tuple[str, ...] = ("pre_step", "post_step")

INPUTS: tuple[str, ...] = ("weights", "grads", "momentum", "generator")
"""The inputs a criterion function may name."""

SCOPES: tuple[str, ...] = ("layer", "global")


def drop_count(k: int | None, fraction: float | None, active: int) -> int:
    """``k``, or ``⌈fraction · active⌉`` (at most ``active``): how many entries a step drops."""
    return k if fraction is None else min(math.ceil(fraction * active), active)  # type: ignore[return-value]


def read_signature(
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
