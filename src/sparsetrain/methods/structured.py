"""The ``structure`` option: how a method's mask choices keep an N:M or block pattern.

Every method that chooses a mask takes ``structure``: ``"unstructured"`` (the default),
``"N:M"`` (``"2:4"``, ``"1:4"``, ``"4:8"``: exactly N live weights in every group of M
consecutive inputs, Conv input channels at one kernel position) or a block shape
(``"block:4x4"`` or ``(4, 4)``: every block of the weight's matrix view all-live or all-pruned).
The grouping and the matrix view are :mod:`sparsetrain.masking.structure`'s.

The rules, the same for every method (each method's docstring says which it uses):

- **Scores stay the method's own.** A selection that keeps the top-k of some score keeps, under
  N:M, the top entries of that score *within each group*; under a block structure, the blocks
  with the highest *summed* score (a block is a unit; counts round to whole blocks).
- **Gradual methods reach N:M by decaying N** (the decaying-mask recipe of Kao et al.,
  "Training Recipe for N:M Structured Sparsity with Decaying Pruning Mask", arXiv 2209.07617,
  2022): at planned sparsity s_t each group keeps N_t = clamp(round(M·(1 − s_t)), N, M), so
  2:4 goes 4:4 → 3:4 → 2:4 on the method's own ramp. Under a block structure the count of
  blocks follows the ramp.
- **N:M fixes every layer's density at N/M**: layer allocations (``distribution``: ERK, ER)
  and global rankings across layers do not apply. With blocks they apply to block counts.
- **Drop-and-grow (DST, GraNet's regrowth)** under N:M drops as without structure, then every
  group regrows as many entries as it lost, by the growth score within the group (our rule;
  see :func:`sparsetrain.criteria.drop_and_grow`).

With N:M, ``sparsity`` may be omitted (it is 1 − N/M); a different value is an error.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch
from torch import nn

from sparsetrain.distributions import allocate
from sparsetrain.masking.structure import (
    Structure,
    block_any,
    block_scores,
    expand_blocks,
    group_top,
    parse_structure,
)
from sparsetrain.masking.targets import Target
from sparsetrain.masking.topk import global_topk_masks

_CONV_TRANSPOSE = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)


def grouped_dim(target: Target) -> int:
    """The dimension N:M groups and block columns run along: the target's inputs.

    1 for Linear ``(out, in)``, Conv ``(out, in, k...)`` and every other tensor (for a 2-D
    matrix, its rows); 0 for a ConvTranspose weight ``(in, out/groups, k...)``.
    """
    transposed = isinstance(target.module, _CONV_TRANSPOSE) and target.param_name == "weight"
    return 0 if transposed else 1


def structure_option(method: str, value: object, supported: Sequence[str], note: str) -> Structure:
    """The ``structure`` option parsed, or one line naming the value and what is valid."""
    try:
        parsed = parse_structure(value)
    except ValueError as err:
        raise ValueError(f"{method}: {err}") from None
    if parsed.kind not in supported:
        raise ValueError(
            f"{method}: structure={str(parsed)!r} is not supported ({note}); valid kinds: "
            f"{', '.join(supported)}"
        )
    return parsed


def sparsity_option(
    method: str, structure: Structure, sparsity: float | None, emergent: bool
) -> float:
    """The ``sparsity`` option: 0.9 by default (0 for emergent methods), 1 − N/M under N:M."""
    if structure.kind != "nm":
        if sparsity is None:
            return 0.0 if emergent else 0.9
        return float(sparsity)
    implied = 1.0 - structure.n / structure.m
    if sparsity is not None and abs(sparsity - implied) > 1e-6:
        raise ValueError(
            f"{method}: sparsity={sparsity!r} does not match structure {str(structure)!r} "
            f"(1 - N/M = {implied:g}); omit sparsity or change it"
        )
    return implied


def check_targets(method: str, structure: Structure, targets: Sequence[Target]) -> None:
    """Raise (one line naming every bad target and ``exclude=``) unless all can carry it."""
    if not structure.structured:
        return
    bad, first = [], ""
    for t in targets:
        try:
            structure.check(t.shape, dim=grouped_dim(t), name=t.name)
        except ValueError as err:
            bad.append(t.name)
            first = first or str(err).split("; keep it dense")[0]
    if bad:
        raise ValueError(
            f"{method}: structure {str(structure)!r} does not fit {len(bad)} target(s): {first}; "
            f"keep them dense with exclude={bad!r}"
        )


def nm_keep(structure: Structure, density: float) -> int:
    """N_t: entries kept per group of M at planned ``density`` (between N and M)."""
    n_t = round(structure.m * density)
    return min(max(n_t, structure.n), structure.m)


def keep_masks(
    structure: Structure,
    targets: Sequence[Target],
    scores: Sequence[torch.Tensor],
    *,
    density: float | None = None,
    counts: Sequence[int] | int | None = None,
    candidates: Sequence[torch.Tensor] | None = None,
) -> list[torch.Tensor]:
    """The structured masks keeping the highest ``scores`` (among ``candidates``).

    N:M: every group keeps :func:`nm_keep` ``(density)`` entries (``density`` required; the
    others are ignored). Block: the blocks with the highest summed score, ``counts`` entries
    per target (a list) or in total (an int: one ranking over every target), rounded to whole
    blocks; or ``density`` of each target's blocks.
    """
    dims = [grouped_dim(t) for t in targets]
    cands = [None] * len(targets) if candidates is None else list(candidates)
    if structure.kind == "nm":
        if density is None:
            raise ValueError("an N:M selection needs the planned density")
        n_t = nm_keep(structure, density)
        return [
            group_top(s, n_t, structure.m, candidates=c, dim=d)
            for s, c, d in zip(scores, cands, dims, strict=True)
        ]
    r, c, unit = structure.rows, structure.cols, structure.unit
    coarse = [block_scores(s, r, c, dim=d) for s, d in zip(scores, dims, strict=True)]
    coarse_c = [
        None if m is None else block_any(m, r, c, dim=d) for m, d in zip(cands, dims, strict=True)
    ]
    if isinstance(counts, int):  # one ranking over every target
        kept = global_topk_masks(coarse, round(counts / unit), _all(coarse, coarse_c))
    else:
        per = (
            [round(density * x.numel()) for x in coarse]
            if counts is None
            else [round(k / unit) for k in counts]
        )
        kept = [
            global_topk_masks([x], k, None if m is None else [m])[0]
            for x, k, m in zip(coarse, per, coarse_c, strict=True)
        ]
    return [
        expand_blocks(k, r, c, t.shape, dim=d) for k, t, d in zip(kept, targets, dims, strict=True)
    ]


def _all(
    coarse: Sequence[torch.Tensor], cands: Sequence[torch.Tensor | None]
) -> list[torch.Tensor] | None:
    if all(m is None for m in cands):
        return None
    return [
        torch.ones_like(x, dtype=torch.bool) if m is None else m
        for x, m in zip(coarse, cands, strict=True)
    ]


def random_masks(
    structure: Structure,
    targets: Sequence[Target],
    generators: Sequence[torch.Generator],
    counts: Sequence[int] | int | None,
) -> list[torch.Tensor]:
    """Random structured masks: N random entries per group, or random whole blocks.

    Block ``counts``: entries per target (a list) or in total (an int), rounded to blocks.
    """
    scores = [
        torch.rand(t.shape, generator=g).to(t.param.device)
        for t, g in zip(targets, generators, strict=True)
    ]
    if structure.kind == "nm":
        return keep_masks(structure, targets, scores, density=structure.n / structure.m)
    return keep_masks(structure, targets, scores, counts=counts)


def target_count(structure: Structure, target: Target, count: int) -> int:
    """A per-target keep count as the structure rounds it (N:M: N/M of the entries)."""
    if structure.kind == "nm":
        return target.numel // structure.m * structure.n
    if structure.kind == "block":
        return round(count / structure.unit) * structure.unit
    return count


def global_count(structure: Structure, targets: Sequence[Target], sparsity: float) -> int:
    """Live entries over all targets at ``sparsity``, as the structure rounds them."""
    total = sum(t.numel for t in targets)
    if structure.kind == "nm":
        return sum(t.numel // structure.m * structure.n for t in targets)
    if structure.kind == "block":
        return round((1.0 - sparsity) * total / structure.unit) * structure.unit
    return round((1.0 - sparsity) * total)


def random_init(
    structure: Structure,
    targets: Sequence[Target],
    generator: Callable[[int, int], torch.Generator],
    sparsity: float,
    distribution: str,
    blocks: Mapping[str, int],
) -> tuple[list[torch.Tensor], dict[str, int] | None]:
    """A random structured start: the masks, and the per-target counts to keep (or ``None``).

    N:M: N random entries of every group (``distribution`` does not apply). Block: random whole
    blocks, per target as ``distribution`` allocates (rounded to blocks), or over all targets
    for ``"global"``. Draws: ``generator(0, i)`` for target ``i``, as unstructured starts.
    """
    gens = [generator(0, i) for i in range(len(targets))]
    if structure.kind == "block" and distribution == "global":
        masks = random_masks(structure, targets, gens, global_count(structure, targets, sparsity))
        return masks, None
    shapes = {t.name: t.shape for t in targets}
    kind = "uniform" if structure.kind == "nm" else distribution
    alloc = allocate(shapes, sparsity, kind, blocks=blocks)
    counts = [target_count(structure, t, alloc[t.name]) for t in targets]
    masks = random_masks(structure, targets, gens, counts)
    return masks, {t.name: c for t, c in zip(targets, counts, strict=True)}
