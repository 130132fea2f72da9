"""The one drop-and-grow kernel (:func:`drop_and_grow`) behind DST, GraNet and static pruning."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch

from sparsetrain.criteria.criterion import (
    SCOPES,
    Change,
    GrowthCriterion,
    PruneCriterion,
    Site,
    drop_count,
)
from sparsetrain.criteria.registry import get_growth_criterion, get_prune_criterion
from sparsetrain.criteria.structured import block_changes, nm_regrow
from sparsetrain.masking.sharded import count, is_row_sharded, like, local_of, sharded_topk
from sparsetrain.masking.structure import Structure
from sparsetrain.masking.topk import global_topk_masks, select_topk


def _gather(x: torch.Tensor | None, index: torch.Tensor) -> torch.Tensor | None:
    return None if x is None else x.detach().reshape(-1)[index]


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
    if is_row_sharded(site.mask):
        return _sharded_layer_change(
            site, k, fraction, prune, grow, prune_options, grow_options, keep_top
        )
    flat_mask = site.mask.reshape(-1)
    active = flat_mask.nonzero().squeeze(1)
    local = prune.drop_indices(
        site.weights.detach().reshape(-1)[active],
        drop_count(k, fraction, active.numel()),
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


def _local_flat(mask: torch.Tensor) -> torch.Tensor:
    """Flat indices of the set entries of ``mask`` (of this rank's shard under FSDP2)."""
    return local_of(mask).reshape(-1).nonzero().squeeze(1)


def _sharded_drop(
    site: Site, n: int, prune: PruneCriterion, prune_options: Mapping[str, Any]
) -> torch.Tensor:
    """The ``n`` lowest-scoring active entries of a row-sharded site, as a sharded mask.

    Each rank scores its own active entries only (gathered in row order, so the ranks' lists
    in rank order are the one-process list) and one sharded selection picks the ``n`` lowest.
    """
    mask = local_of(site.mask)
    act = mask.reshape(-1).nonzero().squeeze(1)
    scores = prune.scores(
        _gather(local_of(site.weights), act),  # type: ignore[arg-type]
        _gather(local_of(site.grads), act) if prune.needs_grad else None,  # type: ignore[arg-type]
        momentum=_gather(local_of(site.momentum), act) if prune.needs_momentum else None,  # type: ignore[arg-type]
        **prune_options,
    )
    group = site.mask.device_mesh.get_group()  # type: ignore[attr-defined]
    [pick] = sharded_topk([scores], [n], largest=False, group=group)
    out = torch.zeros(mask.numel(), dtype=torch.bool, device=mask.device)
    out[act[pick]] = True
    return like(out.view(mask.shape), site.mask)


def _sharded_layer_change(
    site: Site,
    k: int | None,
    fraction: float | None,
    prune: PruneCriterion,
    grow: GrowthCriterion | None,
    prune_options: Mapping[str, Any],
    grow_options: Mapping[str, Any],
    keep_top: bool,
) -> Change:
    """:func:`_layer_change` on a row-sharded site: masks in, this shard's flat indices out.

    The selections run on the shards (:mod:`sparsetrain.masking.sharded`); ``active`` is the
    count over all shards, the indices are into this rank's local rows.
    """
    active = count(site.mask)
    n = drop_count(k, fraction, active)
    inputs = {"momentum": site.momentum, **prune_options}
    if "generator" in prune.inputs:
        raise ValueError(
            f"prune criterion {prune.name!r} draws one random score per active entry, a stream "
            "that depends on how the tensor is sharded; it is not supported under FSDP2"
        )
    if prune.selection:
        if keep_top:
            raise ValueError(f"prune criterion {prune.name!r} is a selection rule: no keep_top")
        drop = prune.select(site.weights, site.grads, site.mask, n, site.prune_generator, **inputs)
    elif keep_top:
        scores = prune.scores(site.weights, site.grads, generator=site.prune_generator, **inputs)
        drop = site.mask & ~select_topk(scores, active - n, site.mask)
    else:  # score only the active entries, as one process does
        drop = _sharded_drop(site, n, prune, prune_options)
    dropped = _local_flat(drop)
    if grow is None:
        return Change(dropped, dropped.new_empty(0), dropped.new_empty(0), active)
    scores = grow.scores(
        site.weights,
        site.grads,
        momentum=site.momentum,
        generator=site.grow_generator,
        **grow_options,
    )
    grown = _local_flat(select_topk(scores, count(drop), ~site.mask | drop))
    fresh = grown[~local_of(drop).reshape(-1)[grown]]
    return Change(dropped, grown, fresh, active)


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
    actives = [count(m) for m in masks]
    k = drop_count(k, fraction, sum(actives))
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
        grown = _local_flat(g)
        fresh = grown[~local_of(d).reshape(-1)[grown]]
        changes.append(Change(_local_flat(d), grown, fresh, n))
    return changes


def _structured(
    sites: Sequence[Site],
    structure: Structure,
    dims: Sequence[int] | None,
    counts: int | Sequence[int] | None,
    fraction: float | None,
    scope: str,
    prune: PruneCriterion,
    grow: GrowthCriterion | None,
    prune_options: Mapping[str, Any],
    grow_options: Mapping[str, Any],
    keep_top: bool,
) -> list[Change]:
    dims = [1] * len(sites) if dims is None else list(dims)
    if structure.kind == "block":
        return block_changes(
            sites,
            structure,
            dims,
            counts,
            fraction,
            scope,
            prune,
            grow,
            prune_options,
            grow_options,
            keep_top,
        )
    if grow is None:
        raise ValueError(
            "an N:M mask keeps N entries in every group: prune to it by ranking within the "
            "groups (sparsetrain.masking.structure.group_top), not by drop_and_grow without growth"
        )
    drops = drop_and_grow(
        sites,
        prune,
        None,
        counts,
        scope,
        fraction=fraction,
        prune_options=prune_options,
        keep_top=keep_top,
    )
    return nm_regrow(sites, drops, structure, dims, grow, grow_options)


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
    structure: Structure | None = None,
    dims: Sequence[int] | None = None,
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
        structure: An N:M or block :class:`~sparsetrain.masking.structure.Structure` the masks
            keep. N:M: the drop is as without it, then every group regrows as many entries as
            it lost, by the growth scores within the group (so each group holds N again).
            Block: whole blocks are dropped and grown, ranked by the summed criterion scores
            of their entries (score criteria only); counts round to whole blocks.
        dims: Each site's grouped dimension (default 1: Linear inputs, Conv input channels).

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
    if structure is not None and structure.structured:
        changes = _structured(
            sites, structure, dims, counts, fraction, scope, prune, grow, popts, gopts, keep_top
        )
        if commit is not None:
            for i, change in enumerate(changes):
                commit(i, change)
        return changes
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
