"""Drop-and-grow under an N:M or block structure (the kernel's structured paths).

:func:`sparsetrain.criteria.drop_and_grow` with ``structure=`` calls these: N:M regrowth
within each group (:func:`nm_regrow`), and whole-block drop and growth ranked by summed scores
(:func:`block_changes`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from sparsetrain.criteria.criterion import (
    Change,
    GrowthCriterion,
    PruneCriterion,
    Site,
    drop_count,
)
from sparsetrain.masking.structure import (
    Structure,
    block_any,
    block_scores,
    expand_blocks,
    group_counts,
    group_top,
)
from sparsetrain.masking.topk import global_topk_masks


def nm_regrow(
    sites: Sequence[Site],
    drops: Sequence[Change],
    structure: Structure,
    dims: Sequence[int],
    grow: GrowthCriterion,
    grow_options: Mapping[str, Any],
) -> list[Change]:
    """N:M growth: every group regrows as many entries as it lost, by ``grow`` within the group.

    The drop is the unstructured one (per tensor or global); each group then has N − d live
    entries and d of its dead (or just-dropped) entries with the highest growth scores are
    grown, so every group holds exactly N again.
    """
    out = []
    for s, c, d in zip(sites, drops, dims, strict=True):
        dropped = torch.zeros(s.mask.numel(), dtype=torch.bool, device=s.mask.device)
        dropped[c.drop] = True
        dropped = dropped.view(s.mask.shape)
        kept = s.mask & ~dropped
        scores = grow.scores(
            s.weights, s.grads, momentum=s.momentum, generator=s.grow_generator, **grow_options
        )
        counts = group_counts(dropped, structure.m, dim=d)
        new = group_top(scores, counts, structure.m, candidates=~kept, dim=d).reshape(-1)
        grown = new.nonzero().squeeze(1)
        out.append(Change(c.drop, grown, grown[~dropped.reshape(-1)[grown]], c.active))
    return out


def block_changes(
    sites: Sequence[Site],
    structure: Structure,
    dims: Sequence[int],
    counts: int | Sequence[int] | None,
    fraction: float | None,
    scope: str,
    prune: PruneCriterion,
    grow: GrowthCriterion | None,
    prune_options: Mapping[str, Any],
    grow_options: Mapping[str, Any],
    keep_top: bool,
) -> list[Change]:
    """Drop and grow whole blocks, ranked by the summed criterion score of each block.

    ``counts`` are in entries and round to whole blocks; ``fraction`` is of the active blocks.
    """
    if prune.selection:
        raise ValueError(
            f"prune criterion {prune.name!r} is a selection rule, not a score, so it cannot rank "
            "blocks; use a score criterion (e.g. 'magnitude') with a block structure"
        )
    r, c, unit = structure.rows, structure.cols, structure.unit
    coarse = [block_any(s.mask, r, c, dim=d) for s, d in zip(sites, dims, strict=True)]
    pscores = [
        block_scores(
            prune.scores(
                s.weights,
                s.grads,
                momentum=s.momentum,
                generator=s.prune_generator,
                **prune_options,
            ),
            r,
            c,
            dim=d,
        )
        for s, d in zip(sites, dims, strict=True)
    ]
    groups = [[i] for i in range(len(sites))] if scope == "layer" else [list(range(len(sites)))]
    drops: list[torch.Tensor] = [torch.empty(0)] * len(sites)
    kept: list[torch.Tensor] = [torch.empty(0)] * len(sites)
    for g, members in enumerate(groups):
        masks = [coarse[i] for i in members]
        active = sum(int(m.sum()) for m in masks)
        if fraction is not None:
            k = drop_count(None, fraction, active)
        else:
            k = min(round((counts if scope == "global" else counts[g]) / unit), active)  # type: ignore[index]
        scores = [pscores[i] for i in members]
        if keep_top:
            keep = global_topk_masks(scores, active - k, masks)
            dropped = [m & ~kp for m, kp in zip(masks, keep, strict=True)]
        else:
            dropped = global_topk_masks(scores, k, masks, largest=False)
            keep = [m & ~dp for m, dp in zip(masks, dropped, strict=True)]
        for i, dp, kp in zip(members, dropped, keep, strict=True):
            drops[i], kept[i] = dp, kp
    grows = [torch.zeros_like(m) for m in coarse]
    if grow is not None:
        for members in groups:
            gscores = [
                block_scores(
                    grow.scores(
                        sites[i].weights,
                        sites[i].grads,
                        momentum=sites[i].momentum,
                        generator=sites[i].grow_generator,
                        **grow_options,
                    ),
                    r,
                    c,
                    dim=dims[i],
                )
                for i in members
            ]
            n = sum(int(drops[i].sum()) for i in members)
            for i, gm in zip(
                members, global_topk_masks(gscores, n, [~kept[i] for i in members]), strict=True
            ):
                grows[i] = gm
    changes = []
    for s, d, dp, gm in zip(sites, dims, drops, grows, strict=True):
        shape = s.mask.shape
        drop_full = expand_blocks(dp, r, c, shape, dim=d).reshape(-1)
        grow_full = expand_blocks(gm, r, c, shape, dim=d).reshape(-1)
        grown = grow_full.nonzero().squeeze(1)
        changes.append(
            Change(
                drop_full.nonzero().squeeze(1),
                grown,
                grown[~drop_full[grown]],
                int(s.mask.sum()),
            )
        )
    return changes
