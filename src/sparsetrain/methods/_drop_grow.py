"""What DST, GraNet and static share around :func:`~sparsetrain.criteria.drop_and_grow`.

The kernel selects; these helpers give it a method's tensors and inputs (:func:`sites`) and apply
its result to weights, optimizer state and sparse layers (:func:`apply_change`), the same way for
every method.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch

from sparsetrain.criteria import Change, GrowthCriterion, PruneCriterion, Site
from sparsetrain.masking.sharded import from_full, local_of
from sparsetrain.masking.targets import Target
from sparsetrain.masking.topk import random_mask
from sparsetrain.optim import check_state, fill_at, zero_state_at

if TYPE_CHECKING:
    from sparsetrain.methods.base import SparsityMethod


def criterion_options(
    criterion: PruneCriterion | GrowthCriterion,
    options: Mapping[str, Any] | None,
    **shorthands: Any,
) -> dict[str, Any]:
    """A criterion's options: ``shorthands`` it takes (e.g. DST's ``gamma``), then ``options``.

    Raises:
        ValueError: ``options`` names something the criterion does not take.
    """
    out = {k: v for k, v in shorthands.items() if k in criterion.options}
    out.update(criterion.check_options(options))
    return out


def sites(
    method: SparsityMethod,
    step: int,
    grads: Mapping[str, torch.Tensor | None],
    prune: PruneCriterion,
    grow: GrowthCriterion | None,
    *,
    grow_stream: int = 0,
) -> list[Site]:
    """One :class:`~sparsetrain.criteria.Site` per target, with what the criteria read.

    A gradient the criteria need but the batch did not give (the tensor took no part in the
    loss) is zero, and so is missing momentum (no optimizer step yet, or an optimizer that keeps
    none). Random streams: ``generator(step, i)`` for the drop, ``generator(step, grow_stream + i)``
    for the growth.
    """
    need_grad = prune.needs_grad or (grow is not None and grow.needs_grad)
    need_mom = prune.needs_momentum or (grow is not None and grow.needs_momentum)
    out = []
    for i, t in enumerate(method.targets):
        g = grads.get(t.name) if need_grad else None
        if need_grad and g is None:
            g = torch.zeros_like(t.param)
        m = method.dense_momentum(t) if need_mom else None
        if need_mom and m is None:
            m = torch.zeros_like(t.param)
        out.append(
            Site(
                t.param,
                t.mask,
                grads=g,
                momentum=m,
                prune_generator=method.generator(step, i),
                grow_generator=method.generator(step, grow_stream + i),
            )
        )
    return out


def check_states(method: SparsityMethod) -> None:
    """Raise before any change if the optimizer keeps a state layout that cannot be masked."""
    if method.optimizer is not None:
        for t in method.targets:
            check_state(method.optimizer, t.param, skip_keys=method.state_skip_keys)


@torch.no_grad()
def apply_change(method: SparsityMethod, t: Target, change: Change, *, keep_regrown: bool) -> None:
    """Apply one drop-and-grow change to ``t``: mask, then weights and optimizer state.

    Dropped and grown entries restart from zero (weight and optimizer state). With
    ``keep_regrown``, an entry dropped and regrown in the same change keeps both. A sparse target
    rebuilds its structure instead (kept entries keep value and state; grown ones start at zero).
    """
    flat_mask = local_of(t.mask).view(-1)  # FSDP2: the change is in this rank's rows
    flat_mask[change.drop] = False
    flat_mask[change.grow] = True
    if t.name in method._sparse:
        fresh = change.fresh if keep_regrown else change.grow
        grown = torch.zeros(t.numel, dtype=torch.bool, device=flat_mask.device)
        method._restructure(t, grown.index_fill_(0, fresh, True).view(t.shape))
        return
    if keep_regrown:
        grown = torch.zeros(flat_mask.numel(), dtype=torch.bool, device=flat_mask.device)
        stays_out = ~grown.index_fill_(0, change.grow, True)[change.drop]
        reset = torch.cat([change.drop[stays_out], change.fresh])
    else:
        reset = torch.cat([change.drop, change.grow])
    if method.hard_mask:
        fill_at(local_of(t.param.data), reset)
    if method.optimizer is not None and not method._dense_inactive:
        zero_state_at(method.optimizer, t.param, reset, skip_keys=method.state_skip_keys)


@torch.no_grad()
def random_start(method: SparsityMethod, counts: Mapping[str, int]) -> None:
    """Set each target's mask to ``counts[name]`` random entries (stream ``generator(0, i)``).

    Under FSDP2 every rank draws the whole one-process mask and keeps its own rows, so the
    draw does not depend on the world size.
    """
    for i, t in enumerate(method.targets):
        full = random_mask(t.shape, counts[t.name], method.generator(0, i))
        t.mask.copy_(from_full(full, t.mask))
