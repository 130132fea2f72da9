"""Exact-count selection of entries by score, per tensor or globally.

Every function here returns exactly the requested number of entries: ties are broken by
``torch.topk`` (deterministic on CPU), never by a threshold that could keep too many or too few.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def _check_k(k: int, available: int, what: str) -> None:
    if k < 0 or k > available:
        raise ValueError(f"cannot select {k} {what} entries out of {available}")


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
    flat = scores.detach().reshape(-1)
    out = torch.zeros(flat.numel(), dtype=torch.bool, device=scores.device)
    if candidates is None:
        _check_k(k, flat.numel(), "")
        if k:
            out[torch.topk(torch.nan_to_num(flat, nan=-torch.inf), k, sorted=False).indices] = True
        return out.view(scores.shape)
    idx = candidates.reshape(-1).nonzero().squeeze(1)
    _check_k(k, idx.numel(), "candidate")
    if k:
        vals = torch.nan_to_num(flat[idx], nan=-torch.inf)
        out[idx[torch.topk(vals, k, sorted=False).indices]] = True
    return out.view(scores.shape)


def select_bottomk(
    scores: torch.Tensor, k: int, candidates: torch.Tensor | None = None
) -> torch.Tensor:
    """Mark the ``k`` lowest-scoring entries among ``candidates`` (see :func:`select_topk`).

    >>> select_bottomk(torch.tensor([3.0, 1.0, 2.0]), 1).tolist()
    [False, True, False]
    """
    neg = -scores.detach().to(torch.promote_types(scores.dtype, torch.float32))
    return select_topk(neg, k, candidates)


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
    flat = torch.cat([s.detach().reshape(-1).float() for s in scores])
    cand = None if candidates is None else torch.cat([c.reshape(-1) for c in candidates])
    picked = select_topk(flat if largest else -flat, k, cand)
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
