"""Exact top-k selections over tensors sharded across processes, without gathering them.

Under FSDP2 (``torch.distributed.fsdp.fully_shard``) every parameter is a ``DTensor`` split by
rows (``Shard(0)``): rank r holds rows ``[r·c, (r+1)·c)`` of the global tensor, c = ⌈rows /
world⌉ (``torch.chunk``; the last ranks may hold fewer rows, or none). A method's decision on
such a tensor (keep the k largest |w|, drop the k smallest among the active, grow the k largest
|g| among the inactive, or one ranking over many tensors) must be the one a single process
takes on the full tensors, bit for bit, whatever the world size. :func:`sharded_topk` makes it
so with collectives over counts only:

1. Every score becomes an integer key with the order of its float value (:func:`sortable_keys`,
   ``int32`` for scores up to float32, ``int64`` for float64;
   ``-0.0`` equals ``0.0``, ``NaN`` ranks as ``-inf``, as in :mod:`sparsetrain.masking.topk`).
2. The k-th largest key T is found from counts: a pooled sample of every rank's keys brackets
   it (a range a few standard errors wide, checked by one all-reduce of the counts at its ends,
   so a bad guess costs a round, never exactness); each round keeps only the keys inside,
   about 1% of the last; once a few thousand keys are left over all ranks they are gathered
   and ranked. A bracket that does not shrink falls back to a bisection on counts (64 rounds
   at most).
3. Every key above T is selected; of the keys equal to T, the ``k − #above`` at the lowest
   *global* flat indices (the rule of :mod:`sparsetrain.masking.topk`): one all-gather of each
   rank's tie counts tells every rank how many of its own ties (in its row order) it takes.

Nothing but samples, counts and the last few thousand keys near the cut crosses processes:
no rank materialises another rank's rows. Without a process group (or with one process) the
same code runs locally.

:func:`is_row_sharded` and :func:`sharded_select` let :mod:`~sparsetrain.masking.topk` take
``DTensor`` scores and candidates directly: it selects on the local shards and returns masks
as ``DTensor`` with the scores' placement.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def _limits(dtype: torch.dtype) -> tuple[int, int]:
    """(the sentinel below every real key: non-candidates, the largest key) of a key dtype."""
    info = torch.iinfo(dtype)
    return info.min, info.max


def sortable_keys(
    x: torch.Tensor, *, largest: bool = True, wide: bool | None = None
) -> torch.Tensor:
    """Integer keys whose order is ``x``'s float order (reversed for ``largest=False``).

    ``int32`` keys for scores of at most float32 precision (``wide=False``), ``int64`` for
    float64 (``wide``: default by ``x``'s dtype). Every real key lies strictly between the key
    dtype's minimum (the non-candidate sentinel) and its maximum.

    >>> k = sortable_keys(torch.tensor([-2.0, -0.0, 0.0, 1.5, float("nan")]))
    >>> [int(a < b) for a, b in zip(k[:-1], k[1:])], bool(k[1] == k[2]), bool(k[4] < k[0])
    ([1, 0, 1, 1], True, True)
    """
    wide = x.dtype == torch.float64 if wide is None else wide
    real, key = (torch.float64, torch.int64) if wide else (torch.float32, torch.int32)
    v = torch.nan_to_num(x.detach().to(real), nan=-torch.inf)
    v.add_(0.0)  # -0.0 -> +0.0
    bits = v.view(key)
    keys = torch.where(bits < 0, bits ^ _limits(key)[1], bits)
    return keys if largest else keys.bitwise_not_()  # ~k = -k - 1: reversed, no overflow


def _world(group: object | None) -> tuple[int, int]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(group), dist.get_world_size(group)
    return 0, 1


def _all_reduce(t: torch.Tensor, group: object | None, world: int) -> torch.Tensor:
    if world > 1:
        import torch.distributed as dist

        dist.all_reduce(t, group=group)
    return t


def _all_gather(t: torch.Tensor, group: object | None, world: int) -> torch.Tensor:
    if world == 1:
        return t.unsqueeze(0)
    import torch.distributed as dist

    out = [torch.empty_like(t) for _ in range(world)]
    dist.all_gather(out, t, group=group)
    return torch.stack(out)


_SAMPLE = 8192  # keys each rank contributes to the pooled sample that brackets the cut


def _sample_bracket(
    inside: list[torch.Tensor],
    ks: list[int],
    group: object | None,
    world: int,
    limits: tuple[int, int],
) -> list[tuple[int, int] | None]:
    """Per list: a key range [lo, hi] likely to hold the k-th largest key, from a sample.

    Every rank contributes ``_SAMPLE`` of its candidates' keys (evenly strided over its rows) and
    its count; the pooled sample estimates each key's global rank, and the bracket is that
    estimate ± a few standard errors. ``None``: too few keys to bother.
    """
    n, (missing, top) = len(inside), limits
    local = torch.full((n, _SAMPLE), missing, dtype=torch.int64)
    sizes = torch.zeros(n, dtype=torch.int64)
    for i, keys in enumerate(inside):
        sizes[i] = keys.numel()
        if keys.numel():
            pos = torch.linspace(0, keys.numel() - 1, _SAMPLE).round().long()
            local[i] = keys[pos]
    pooled = _all_gather(torch.cat([local.reshape(-1), sizes]), group, world)
    samples = pooled[:, : n * _SAMPLE].reshape(world, n, _SAMPLE)
    counts = pooled[:, n * _SAMPLE :]  # (world, n)
    out: list[tuple[int, int] | None] = []
    for i in range(n):
        total = int(counts[:, i].sum())
        if total < 4 * _SAMPLE:
            out.append(None)
            continue
        # each sample key stands for count_r / _SAMPLE keys of its rank
        vals = samples[:, i].reshape(-1)
        weight = (counts[:, i].double() / _SAMPLE).repeat_interleave(_SAMPLE)
        order = vals.argsort(descending=True)
        above = weight[order].cumsum(0)  # estimated #keys >= each sample value
        p = min(max(ks[i] / total, 1e-9), 1.0)
        error = total * (p * (1.0 - p) / (world * _SAMPLE)) ** 0.5  # std. error of the rank
        margin = 6.0 * error + 4.0 * float(weight.max()) + 16.0
        hi_pos = int(torch.searchsorted(above, torch.tensor(ks[i] - margin).double()))
        lo_pos = int(torch.searchsorted(above, torch.tensor(ks[i] + margin).double()))
        hi = int(vals[order[max(hi_pos - 1, 0)]]) if hi_pos > 0 else top
        lo = (
            int(vals[order[min(lo_pos, vals.numel() - 1)]])
            if lo_pos < vals.numel()
            else missing + 1
        )
        out.append((max(lo, missing + 1), hi))
    return out


_EXACT = 1 << 14  # in-bracket keys of one list (all ranks) below which they are gathered


def _bisect(
    inside: torch.Tensor, k: int, lo: int, hi: int, group: object | None, world: int
) -> int:
    """The k-th largest key among ``inside`` (all ranks) in [lo, hi], by bisection on counts."""
    above = 0
    while lo < hi:
        mid = lo + (hi - lo + 1) // 2  # Python ints: no overflow
        count = int(_all_reduce(torch.tensor([int((inside >= mid).sum())]), group, world))
        if above + count >= k:
            lo, inside = mid, inside[inside >= mid]
        else:
            above, hi, inside = above + count, mid - 1, inside[inside < mid]
    return lo


def _gathered_kth(
    inside: list[torch.Tensor], ks: list[int], group: object | None, world: int, missing: int
) -> list[int]:
    """The k-th largest key of each list from all ranks' keys, gathered (lists are small)."""
    n = len(inside)
    if n == 0:  # the same on every rank: the sizes it depends on are all-reduced
        return []
    longest = torch.tensor([max((x.numel() for x in inside), default=0)])
    if world > 1:
        import torch.distributed as dist

        dist.all_reduce(longest, op=dist.ReduceOp.MAX, group=group)
    width = max(int(longest), 1)
    local = torch.full((n, width), missing, dtype=torch.int64)
    for i, x in enumerate(inside):
        local[i, : x.numel()] = x
    pooled = _all_gather(local, group, world).transpose(0, 1).reshape(n, -1)
    return [int(torch.topk(pooled[i], ks[i]).values[-1]) for i in range(n)]


def _kth_keys(
    keys: list[torch.Tensor],
    ks: list[int],
    group: object | None,
    world: int,
    limits: tuple[int, int],
) -> list[int]:
    """Per list entry: the k-th largest key over all ranks.

    Sampled brackets first (each round keeps the keys of a range a few standard errors around
    the estimated cut, verified by one count round, so a bad estimate costs a round, never
    exactness), then the few keys left are gathered and ranked; a list whose bracket does not
    shrink enough falls back to a bisection on counts.
    """
    n, (missing, top) = len(keys), limits
    inside = [k[k > missing] for k in keys]
    lo, hi, above = [missing + 1] * n, [top] * n, [0] * n
    for _ in range(6):
        sizes = _all_reduce(torch.tensor([x.numel() for x in inside]), group, world).tolist()
        todo = [i for i in range(n) if sizes[i] > _EXACT]
        if not todo:
            break
        rel = [ks[i] - above[i] for i in range(n)]
        guesses = _sample_bracket(inside, rel, group, world, limits)
        probe = torch.zeros(n, 2, dtype=torch.int64)
        for i in todo:
            g = guesses[i]
            if g is not None:
                probe[i, 0], probe[i, 1] = (
                    int((inside[i] >= g[0]).sum()),
                    int((inside[i] > g[1]).sum()),
                )
        probe = _all_reduce(probe, group, world)
        moved = False
        for i in todo:
            g, (at_lo, over_hi) = guesses[i], probe[i].tolist()
            if g is not None and over_hi < rel[i] <= at_lo and at_lo - over_hi < sizes[i]:
                lo[i], hi[i], above[i] = g[0], g[1], above[i] + over_hi
                inside[i] = inside[i][(inside[i] >= g[0]) & (inside[i] <= g[1])]
                moved = True
        if not moved:
            break
    sizes = _all_reduce(torch.tensor([x.numel() for x in inside]), group, world).tolist()
    rel = [ks[i] - above[i] for i in range(n)]
    small = [i for i in range(n) if sizes[i] <= _EXACT]
    out = list(lo)
    for i, v in zip(
        small,
        _gathered_kth([inside[i] for i in small], [rel[i] for i in small], group, world, missing),
        strict=True,
    ):
        out[i] = v
    for i in range(n):
        if i not in small:
            out[i] = _bisect(inside[i], rel[i], lo[i], hi[i], group, world)
    return out


def sharded_topk(
    scores: Sequence[torch.Tensor],
    ks: Sequence[int] | int,
    *,
    candidates: Sequence[torch.Tensor | None] | None = None,
    largest: bool = True,
    group: object | None = None,
) -> list[torch.Tensor]:
    """This rank's part of an exact top-k over tensors sharded by rows (see the module doc).

    Args:
        scores: This rank's local shard of each tensor (any shape; read in row-major order,
            which is the global order within the rank's rows).
        ks: Entries to select per tensor over all ranks (a list), or in total over all tensors
            by one ranking (an int).
        candidates: Optional local ``bool`` shard per tensor restricting the choice.
        largest: Highest scores (``True``) or lowest.
        group: The process group the tensors are sharded over (default: the world).

    Returns:
        One local ``bool`` mask per tensor, of its shard's shape. Over all ranks exactly the
        requested counts are set; ties at the cut go to the lowest global flat index (per
        tensor, in tensor order for one ranking), as :func:`~sparsetrain.masking.topk.topk_indices`
        chooses on the full tensor.

    Raises:
        ValueError: A count exceeds the candidates over all ranks.
    """
    rank, world = _world(group)
    cands = list(candidates) if candidates is not None else [None] * len(scores)
    wide = any(s.dtype == torch.float64 for s in scores)
    limits = _limits(torch.int64 if wide else torch.int32)
    keys = []
    for s, c in zip(scores, cands, strict=True):
        k = sortable_keys(s.reshape(-1), largest=largest, wide=wide)
        if c is not None:
            k.masked_fill_(~c.reshape(-1), limits[0])
        keys.append(k)
    pooled = isinstance(ks, int)
    lists = [torch.cat(keys)] if pooled else keys
    wanted = [int(ks)] if pooled else [int(k) for k in ks]  # type: ignore[arg-type]
    n_cand = torch.tensor([int((k > limits[0]).sum()) for k in lists], dtype=torch.int64)
    n_cand = _all_reduce(n_cand, group, world)
    for k, n in zip(wanted, n_cand.tolist(), strict=True):
        if not 0 <= k <= n:
            raise ValueError(f"cannot select {k} entries out of {n} candidates")
    cut = _kth_keys(lists, [max(k, 1) for k in wanted], group, world, limits)
    if pooled:
        cut = cut * len(keys)
        above = int(
            _all_reduce(torch.tensor([sum(int((k > cut[0]).sum()) for k in keys)]), group, world)
        )
        need = [wanted[0] - above]
    else:
        above_t = torch.tensor([int((k > c).sum()) for k, c in zip(keys, cut, strict=True)])
        need = (torch.tensor(wanted) - _all_reduce(above_t, group, world)).tolist()
    ties = torch.tensor([int((k == c).sum()) for k, c in zip(keys, cut, strict=True)])
    table = _all_gather(ties, group, world)  # (world, tensors): each rank's ties per tensor
    quota = _quotas(table, need, pooled)[rank]
    out = []
    for s, k, c, q, want in zip(
        scores, keys, cut, quota.tolist(), _expand(wanted, len(keys)), strict=True
    ):
        if want == 0 and not pooled:
            out.append(torch.zeros(s.shape, dtype=torch.bool, device=s.device))
            continue
        sel = k > c
        tied = (k == c).nonzero().squeeze(1)
        sel[tied[:q]] = True
        out.append(sel.view(s.shape))
    if pooled and wanted[0] == 0:
        out = [torch.zeros(s.shape, dtype=torch.bool, device=s.device) for s in scores]
    return out


def _expand(wanted: list[int], n: int) -> list[int]:
    return wanted * n if len(wanted) == 1 and n != 1 else wanted


def _quotas(table: torch.Tensor, need: list[int], pooled: bool) -> torch.Tensor:
    """Ties each rank takes per tensor: the lowest global indices first (tensor, then rank)."""
    world, n = table.shape
    quota = torch.zeros_like(table)
    if pooled:
        left = need[0]
        for i in range(n):
            for r in range(world):
                take = min(int(table[r, i]), max(left, 0))
                quota[r, i], left = take, left - take
        return quota
    for i in range(n):
        left = need[i]
        for r in range(world):
            take = min(int(table[r, i]), max(left, 0))
            quota[r, i], left = take, left - take
    return quota


def is_row_sharded(x: object) -> bool:
    """Whether ``x`` is a ``DTensor`` sharded by rows on a 1-D mesh (FSDP2's parameters)."""
    import sys

    dtensor = getattr(sys.modules.get("torch.distributed.tensor"), "DTensor", None)
    if not (isinstance(dtensor, type) and isinstance(x, dtensor)):
        return False
    from torch.distributed.tensor import Shard

    mesh, placements = x.device_mesh, x.placements  # type: ignore[attr-defined]
    return mesh.ndim == 1 and len(placements) == 1 and placements[0] == Shard(0)


def count(mask: torch.Tensor) -> int:
    """Set entries of ``mask``; of all shards for a row-sharded ``DTensor`` (a collective)."""
    if is_row_sharded(mask):
        return int(mask.sum().full_tensor())  # type: ignore[attr-defined]
    return int(mask.sum())


def row_range(ref: torch.Tensor) -> tuple[int, int]:
    """``(first row, rows)`` of this rank's shard of a row-sharded ``DTensor`` (``torch.chunk``)."""
    mesh = ref.device_mesh  # type: ignore[attr-defined]
    world, rank = mesh.size(), mesh.get_local_rank()
    chunk = -(-ref.shape[0] // world)
    start = min(rank * chunk, ref.shape[0])
    return start, min(chunk, ref.shape[0] - start)


def from_full(full: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """A tensor of ``ref``'s global shape, placed as ``ref``: its local rows (else ``full``).

    For decisions drawn from a random stream over the whole tensor (random masks, random
    scores): every rank draws the same stream and keeps its rows, so the draw is the one of a
    single process whatever the world size.
    """
    if not is_row_sharded(ref):
        return full
    start, rows = row_range(ref)
    local = full[start : start + rows].to(local_of(ref).device).contiguous()
    return like(local, ref)


def single_shard(x: torch.Tensor) -> bool:
    """Whether a row-sharded ``DTensor`` lives on one rank (its shard is the whole tensor)."""
    return x.device_mesh.size() == 1  # type: ignore[attr-defined]


def local_of(x: torch.Tensor) -> torch.Tensor:
    """The local shard of a row-sharded ``DTensor`` (shares its storage), else ``x``."""
    return x.to_local() if is_row_sharded(x) else x  # type: ignore[attr-defined]


def like(local: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """``local`` as a ``DTensor`` placed as ``ref`` (a row-sharded ``DTensor``)."""
    from torch.distributed.tensor import DTensor

    mesh, placements = ref.device_mesh, ref.placements  # type: ignore[attr-defined]
    return DTensor.from_local(local, mesh, placements, shape=ref.shape, stride=ref.stride())


def sharded_select(
    scores: Sequence[torch.Tensor],
    ks: Sequence[int] | int,
    candidates: Sequence[torch.Tensor | None] | None,
    largest: bool,
) -> list[torch.Tensor]:
    """:func:`sharded_topk` on row-sharded ``DTensor`` scores: ``DTensor`` masks back."""
    group = scores[0].device_mesh.get_group()  # type: ignore[attr-defined]
    local = [local_of(s) for s in scores]
    cands = None if candidates is None else [None if c is None else local_of(c) for c in candidates]
    out = sharded_topk(local, ks, candidates=cands, largest=largest, group=group)
    return [like(m, s) for m, s in zip(out, scores, strict=True)]
