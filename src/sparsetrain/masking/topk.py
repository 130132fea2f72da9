"""Exact-count selection of entries by score, per tensor or globally.

Every function here returns exactly the requested number of entries, never by a threshold that
could keep too many or too few. Ties at the cut are broken by position: among equal scores the
entry at the lower flat index is selected first (for the lowest scores too), so a selection is a
function of the scores alone, the same however the tensor is split (a sharded selection over
processes gives the same entries, see :mod:`sparsetrain.masking.sharded`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from sparsetrain.masking.sharded import (
    is_row_sharded,
    like,
    local_of,
    sharded_select,
    single_shard,
)


def _check_k(k: int, available: int, what: str) -> None:
    if k < 0 or k > available:
        raise ValueError(f"cannot select {k} {what} entries out of {available}")


_FAST_MIN_NUMEL = 1 << 20
_SAMPLE = 1 << 16


def _threshold_topk(flat: torch.Tensor, k: int, cand: torch.Tensor | None) -> torch.Tensor | None:
    """Exact top-k indices for large tensors via a sampled threshold (``None``: fall back).

    A quantile of a fixed-seed random sample gives a threshold with (about 1.5×) more than ``k``
    entries above it; only those are gathered and ranked exactly. The result is the exact top-k:
    every entry not gathered scores at most the threshold, below every gathered one.
    """
    n = flat.numel()
    gen = torch.Generator().manual_seed(n * 1_000_003 + k)
    probe = torch.randint(n, (_SAMPLE,), generator=gen, device=flat.device)
    sample = flat[probe]
    if cand is not None:
        sample = sample[cand[probe]]
    sample = sample[~torch.isnan(sample)]
    if sample.numel() < 1024:
        return None
    n_eff = n * sample.numel() / _SAMPLE  # estimated number of (non-NaN) candidates
    excess = 1.5 * k / n_eff + 4.0 / sample.numel() ** 0.5
    for _ in range(3):
        q = 1.0 - min(excess, 1.0)
        if q <= 0.0:
            return None
        rank = min(max(int(q * sample.numel()), 1), sample.numel())
        thr = torch.kthvalue(sample, rank).values  # O(n) selection, no sort
        above = flat > thr
        if cand is not None:
            above &= cand
        idx = above.nonzero().squeeze(1)
        if idx.numel() >= k:
            return idx[torch.topk(flat[idx], k, sorted=False).indices]
        excess *= 3.0
    return None


def topk_indices(
    flat: torch.Tensor, k: int, candidates: torch.Tensor | None = None, *, largest: bool = True
) -> torch.Tensor:
    """Flat indices of the ``k`` highest (or lowest) entries of a 1-D tensor among candidates.

    The core of every selection here; exact in count, ``NaN`` ranks last.

    Args:
        flat: 1-D scores.
        k: Number of entries, ``0 <= k <= #candidates``.
        candidates: Optional 1-D ``bool`` tensor restricting the choice.
        largest: Highest scores (``True``) or lowest.

    Returns:
        ``int64`` indices into ``flat``, unordered.
    """
    flat = flat.detach()
    if not largest:
        flat = -flat.to(torch.promote_types(flat.dtype, torch.float32))
    n = flat.numel()
    if k <= 0:
        _check_k(k, n, "")
        return torch.empty(0, dtype=torch.long, device=flat.device)
    if n >= _FAST_MIN_NUMEL and k <= n // 8:
        idx = _threshold_topk(flat, k, candidates)
        if idx is not None:
            return _lowest_index_ties(flat, idx, candidates)
    if candidates is None:
        _check_k(k, n, "")
        flat = torch.nan_to_num(flat, nan=-torch.inf)
        return _lowest_index_ties(flat, torch.topk(flat, k, sorted=False).indices, None)
    idx = candidates.nonzero().squeeze(1)
    _check_k(k, idx.numel(), "candidate")
    vals = torch.nan_to_num(flat[idx], nan=-torch.inf)
    return idx[_lowest_index_ties(vals, torch.topk(vals, k, sorted=False).indices, None)]


def _lowest_index_ties(
    flat: torch.Tensor, idx: torch.Tensor, candidates: torch.Tensor | None
) -> torch.Tensor:
    """``idx`` (a top-k of ``flat``) with the ties at its lowest value taken by lowest index."""
    vals = torch.nan_to_num(flat[idx], nan=-torch.inf)
    cut = vals.min()
    at_cut = vals == cut
    n_tied = int(at_cut.sum())
    if n_tied == 0:
        return idx
    full = torch.nan_to_num(flat, nan=-torch.inf) == cut
    if candidates is not None:
        full &= candidates
    if int(full.sum()) == n_tied:  # every tied entry is in: nothing to choose
        return idx
    return torch.cat([idx[~at_cut], full.nonzero().squeeze(1)[:n_tied]])


def select_topk(
    scores: torch.Tensor, k: int, candidates: torch.Tensor | None = None
) -> torch.Tensor:
    """Mark the ``k`` highest-scoring entries among ``candidates``.

    Args:
        scores: Scores of any shape; ``NaN`` counts as lowest.
        k: Number of entries to select, ``0 <= k <= candidates.sum()``.
        candidates: Optional ``bool`` tensor of ``scores``' shape; ``None`` means all entries.

    Returns:
        A ``bool`` tensor of ``scores``' shape with exactly ``k`` ``True`` entries.

    >>> select_topk(torch.tensor([3.0, 1.0, 2.0]), 2).tolist()
    [True, False, True]
    """
    if is_row_sharded(scores):  # FSDP2: select on the shards, masks placed as the scores
        if single_shard(scores):  # one rank holds it all: the plain selection
            local = None if candidates is None else local_of(candidates)
            return like(select_topk(local_of(scores), k, local), scores)
        return sharded_select([scores], [k], None if candidates is None else [candidates], True)[0]
    cand = None if candidates is None else candidates.reshape(-1)
    out = torch.zeros(scores.numel(), dtype=torch.bool, device=scores.device)
    out[topk_indices(scores.reshape(-1), k, cand)] = True
    return out.view(scores.shape)


def select_bottomk(
    scores: torch.Tensor, k: int, candidates: torch.Tensor | None = None
) -> torch.Tensor:
    """Mark the ``k`` lowest-scoring entries among ``candidates`` (see :func:`select_topk`).

    >>> select_bottomk(torch.tensor([3.0, 1.0, 2.0]), 1).tolist()
    [False, True, False]
    """
    if is_row_sharded(scores):
        if single_shard(scores):
            local = None if candidates is None else local_of(candidates)
            return like(select_bottomk(local_of(scores), k, local), scores)
        return sharded_select([scores], [k], None if candidates is None else [candidates], False)[0]
    cand = None if candidates is None else candidates.reshape(-1)
    out = torch.zeros(scores.numel(), dtype=torch.bool, device=scores.device)
    out[topk_indices(scores.reshape(-1), k, cand, largest=False)] = True
    return out.view(scores.shape)


def global_topk_masks(
    scores: Sequence[torch.Tensor],
    k: int,
    candidates: Sequence[torch.Tensor] | None = None,
    *,
    largest: bool = True,
) -> list[torch.Tensor]:
    """Select ``k`` entries in total across several tensors by one global ranking.

    Args:
        scores: One score tensor per layer.
        k: Total number of entries to select.
        candidates: Optional ``bool`` tensor per layer restricting the selection.
        largest: Select the highest scores (``True``) or the lowest.

    Returns:
        One ``bool`` mask per layer; their ``True`` counts sum to exactly ``k``.
    """
    if scores and is_row_sharded(scores[0]):
        if single_shard(scores[0]):
            local = None if candidates is None else [local_of(c) for c in candidates]
            got = global_topk_masks([local_of(x) for x in scores], k, local, largest=largest)
            return [like(m, x) for m, x in zip(got, scores, strict=True)]
        return sharded_select(scores, k, candidates, largest)
    flat = torch.cat([s.detach().reshape(-1).float() for s in scores])
    cand = None if candidates is None else torch.cat([c.reshape(-1) for c in candidates])
    picked = torch.zeros(flat.numel(), dtype=torch.bool, device=flat.device)
    picked[topk_indices(flat, k, cand, largest=largest)] = True
    out, start = [], 0
    for s in scores:
        out.append(picked[start : start + s.numel()].view(s.shape))
        start += s.numel()
    return out


def random_mask(
    shape: Sequence[int],
    n_active: int,
    generator: torch.Generator | None = None,
    *,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """A uniformly random ``bool`` mask with exactly ``n_active`` ``True`` entries."""
    numel = 1
    for d in shape:
        numel *= d
    _check_k(n_active, numel, "random")
    perm = torch.randperm(numel, generator=generator)[:n_active]
    out = torch.zeros(numel, dtype=torch.bool)
    out[perm] = True
    return out.view(*shape).to(device) if device is not None else out.view(*shape)
