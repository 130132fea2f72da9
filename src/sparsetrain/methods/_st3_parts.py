"""Shared parts of ST-3 and DNW: exact selection on magnitudes, schedule, optimizer and BN set-up.

Selection: ``torch.kthvalue`` and ``torch.topk`` cost milliseconds per 10⁵ entries on a CPU and
``torch.quantile`` refuses more than 16M entries, too slow for a threshold recomputed after every
step. :class:`OrderStatistics` stays exact with two counting passes and one gather per call (see
its docstring). On the CPU it works on a numpy view of the buffer: on this torch build,
comparisons into ``bool`` tensors, ``bool`` reductions, ``nonzero`` and boolean indexing are 3-10x
slower than their numpy counterparts.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from sparsetrain.masking.structure import (
    block_scores,
    from_matrix,
    group_top,
    nm_groups,
    ungroup,
)
from sparsetrain.masking.targets import Target
from sparsetrain.masking.topk import select_topk

BN_MODES = ("corrected", "as_released")
WD_SCOPES = ("weights", "as_given")
SIGMAS = ("dims", "glorot")
# The official CIFAR budget (configs/*.toml): ramp over epochs 5 → 80, fix at 160, 10 more epochs.
_BEGIN, _END, _FT = 5 / 170, 80 / 170, 10 / 170
_SMALL = 8192  # below this many entries a full selection is cheaper than the bracket's passes


Array = np.ndarray | torch.Tensor  # CPU tensors are handled as numpy views (faster masks there)


def exact_ranks(x: Array, ranks: Sequence[int]) -> list[float]:
    """``sorted(x)[r]`` for each rank: a linear-time partition on the CPU, a sort elsewhere."""
    if isinstance(x, np.ndarray):
        return np.partition(x, list(ranks))[list(ranks)].tolist()
    return x.sort().values[list(ranks)].tolist()


class OrderStatistics:
    """Exact order statistics of a 1-D float tensor that drifts a little between calls.

    Keeps a bracket [lo, hi] of values around the ranks answered last time (the previous
    threshold, widened by a margin of ``frac``·n ranks each side). A call counts the entries
    ``< lo`` and ``<= hi`` (two passes); when the wanted ranks lie between the two counts, every
    entry of those ranks is in the bracket, so they are read exactly from a partition of the
    bracket's few values (one gather). Otherwise a bracket estimated from a strided sample is
    tried, then a full selection. The answer re-centres the bracket; its margin doubles after a
    miss and halves after a long run of hits. NaN entries count as larger than any number, as in
    a sort.
    """

    def __init__(self, frac: float = 0.004, *, use_numpy: bool = True) -> None:
        self._bounds: tuple[float, float] | None = None
        self._frac = frac  # bracket margin each side, in ranks / n
        self._hits = 0
        self._numpy = use_numpy  # False: the torch path other devices take (tested on the CPU)
        self._scratch: tuple[np.ndarray, np.ndarray] | None = None

    def __call__(self, x: torch.Tensor, ranks: Sequence[int]) -> list[float]:
        """``sorted(x)[r]`` for each 0-based rank ``r`` (ascending), as Python floats.

        >>> OrderStatistics()(torch.tensor([0.5, 0.1, 0.3]), [0, 2])
        [0.10000000149011612, 0.5]
        """
        cpu = x.device.type == "cpu" and self._numpy
        xa: Array = x.detach().numpy() if cpu else x.detach()
        if len(xa) <= _SMALL:
            return exact_ranks(xa, ranks)
        if self._bounds is not None:
            got = self._bracketed(xa, ranks, *self._bounds)
            if got is not None:
                self._hits += 1
                if self._hits >= 64:
                    self._frac, self._hits = max(self._frac / 2, 0.001), 0
                return got
            self._frac, self._hits = min(self._frac * 2, 0.05), 0
        got = self._bracketed(xa, ranks, *self._estimate(xa, ranks))
        if got is None:  # the sample missed, or NaN entries hold the ranks
            self._bounds = None
            return exact_ranks(xa, ranks)
        return got

    def _counts(self, x: Array, lo: float, hi: float) -> tuple[int, int, Array | None]:
        """#(x < lo), #(x <= hi) and a mask of lo <= x <= hi (numpy only)."""
        if isinstance(x, np.ndarray):
            if self._scratch is None or len(self._scratch[0]) != len(x):
                self._scratch = (np.empty(len(x), bool), np.empty(len(x), bool))
            below, upto = self._scratch
            np.less(x, lo, out=below)
            np.less_equal(x, hi, out=upto)
            return np.count_nonzero(below), np.count_nonzero(upto), below
        return int((x < lo).sum()), int((x <= hi).sum()), None

    def _bracketed(
        self, x: Array, ranks: Sequence[int], lo: float, hi: float
    ) -> list[float] | None:
        """The values if every wanted rank lies in [lo, hi] (and re-centre on them), else None."""
        n_below, n_upto, below = self._counts(x, lo, hi)
        if not n_below <= ranks[0] <= ranks[-1] < n_upto:
            return None
        if below is not None:  # below ⊆ upto: the xor is lo <= x <= hi
            inside: Array = x[np.logical_xor(below, self._scratch[1], out=below)]
        else:
            inside = x[(x >= lo) & (x <= hi)]
        k, w = len(inside), max(int(self._frac * len(x)), 16)
        a, b = ranks[0] - n_below, ranks[-1] - n_below
        want = sorted(
            {a, b, *[r - n_below for r in ranks], *(r for r in (a - w, b + w) if 0 <= r < k)}
        )
        part = dict(zip(want, exact_ranks(inside, want), strict=True))
        got = [part[r - n_below] for r in ranks]
        # next bracket: `w` ranks beyond the answer where the values are known, else the same
        # distance at the bracket's mean density
        step = (hi - lo) / k if math.isfinite(hi - lo) and k else 0.0
        new_lo = part[a - w] if a - w >= 0 else got[0] - w * step
        new_hi = part[b + w] if b + w < k else got[-1] + w * step
        self._bounds = (min(new_lo, got[0]), max(new_hi, got[-1]))
        return got

    def _estimate(self, x: Array, ranks: Sequence[int]) -> tuple[float, float]:
        """A bracket around ``ranks`` from a strided sample of ~4096 entries (±4σ, plus margin)."""
        n = len(x)
        sample = x[:: max(1, n // 4096)]
        m = len(sample)
        pad = int(4 * math.sqrt(m) + self._frac * m) + 2
        first, last = ranks[0] * (m - 1) // (n - 1) - pad, -(-ranks[-1] * (m - 1) // (n - 1)) + pad
        inner = [i for i in (first, last) if 0 <= i < m]
        est = dict(zip(inner, exact_ranks(sample, inner), strict=True))
        return est.get(first, -math.inf), est.get(last, math.inf)


def quantile(x: torch.Tensor, q: float, select: OrderStatistics | None = None) -> float:
    """The ``q``-quantile of ``x >= 0`` with linear interpolation, as ``torch.quantile``, any size.

    >>> quantile(torch.tensor([1.0, 2.0, 3.0, 4.0]), 0.5)
    2.5
    """
    select = OrderStatistics() if select is None else select
    n = x.numel()
    # torch.quantile's arithmetic (float32 rank and weight) up to its 2**24 limit, float64 above;
    # IEEE products and differences, so numpy scalars give the same bits as torch's 0-d tensors
    real = np.float32 if n <= 1 << 24 else np.float64
    rank = real(q) * real(n - 1)
    lo = int(rank)
    frac = np.float32(rank - real(lo))
    if frac == 0.0 or lo + 1 >= n:
        return select(x, [lo])[0]
    v_lo, v_hi = select(x, [lo, lo + 1])
    if v_lo == v_hi and math.isfinite(v_lo):  # lerp of equal ends: that value
        return v_lo
    return torch.lerp(torch.tensor(v_lo), torch.tensor(v_hi), torch.tensor(frac)).item()


def abs_buffer(
    targets: Sequence[Target], cache: list[torch.Tensor], scales: Sequence[float] | None = None
) -> torch.Tensor:
    """|W| of all targets (times ``scales``) concatenated in one reused float32 buffer.

    ``cache`` holds the buffer, then each target's view of it in the target's shape.
    """
    n = sum(t.numel for t in targets)
    dev = targets[0].param.device
    if not cache or cache[0].numel() != n or cache[0].device != dev:
        buf = torch.empty(n, dtype=torch.float32, device=dev)
        cache[:] = [
            buf,
            *(
                v.view(t.shape)
                for v, t in zip(buf.split([t.numel for t in targets]), targets, strict=True)
            ),
        ]
    for i, (t, dst) in enumerate(zip(targets, cache[1:], strict=True)):
        w = t.param.detach()
        torch.abs(w if w.dtype == torch.float32 else w.float(), out=dst)
        if scales is not None and scales[i] != 1.0:
            dst.mul_(scales[i])
    return cache[0]


def flat_layout(
    targets: Sequence[Target], sigmas: Sequence[float]
) -> tuple[list[slice], torch.Tensor]:
    """Each target's span in the flat magnitude buffer, and σ_l/fan_in for each output row."""
    spans, start, dev = [], 0, targets[0].param.device
    for t in targets:
        spans.append(slice(start, start + t.numel))
        start += t.numel
    rows = [(t.shape[0], g * t.shape[0] / t.numel) for t, g in zip(targets, sigmas, strict=True)]
    return spans, torch.cat([torch.full((r,), v, device=dev) for r, v in rows])


def rescale(kept: torch.Tensor, full: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """ST-3's per-row rescale c = 1.01/((kept·k + 1e-6)/(full·k + 1e-6) + 0.01), a new tensor.

    On the CPU the same float32 operations run in numpy (a few hundred rows: torch's per-call
    cost would dominate); ``1.01 / x`` is torch's ``reciprocal(x) * 1.01``, kept as such.
    """
    if kept.device.type != "cpu" or kept.dtype != torch.float32:
        return 1.01 / ((kept * k + 1e-6) / (full * k + 1e-6) + 0.01)
    f32, kn = np.float32, k.numpy()
    num = np.multiply(kept.numpy(), kn)
    num += f32(1e-6)
    den = np.multiply(full.numpy(), kn)
    den += f32(1e-6)
    num /= den
    num += f32(0.01)
    np.reciprocal(num, out=num)
    num *= f32(1.01)
    return torch.from_numpy(num)


def exact_mask(x: torch.Tensor, tau: float, keep: int) -> torch.Tensor:
    """Float mask of ``x > tau``, or of exactly the ``keep`` largest when ties make it miss."""
    mask = torch.gt(x, tau, out=torch.empty_like(x))
    if int(mask.sum(dtype=torch.float64)) != keep:
        mask.copy_(select_topk(x, keep))
    return mask


def sigma_of(shape: tuple[int, ...], formula: str) -> float:
    """ST-3σ's per-layer scale: 1/√(Σ dims) (the code) or 1/√(fan_in + fan_out) (Glorot)."""
    if formula == "dims":
        return 1.0 / math.sqrt(sum(shape))
    return 1.0 / math.sqrt((shape[0] + shape[1]) * math.prod(shape[2:]))


def resolve_schedule(
    total: int | None,
    begin: int | None,
    end: int | None,
    fix: int | None,
    finetune: int | None,
    name: str = "st3",
) -> tuple[int, int, int | None]:
    """ST-3's (begin_step, end_step, freeze_step), defaults scaled from the CIFAR config."""
    if fix is not None and finetune is not None:
        raise ValueError(f"{name}: give freeze_step or finetune_steps, not both")
    if total is None and finetune is not None:
        raise ValueError(f"{name}: finetune_steps needs total_steps; give freeze_step instead")
    if total is not None:
        begin = round(_BEGIN * total) if begin is None else begin
        end = round(_END * total) if end is None else end
        if fix is None:
            fix = total - (round(_FT * total) if finetune is None else finetune)
    if end is None:
        raise ValueError(
            f"{name}: needs end_step or total_steps (optimizer steps of the run, e.g. "
            "len(loader) * epochs)"
        )
    begin = begin or 0
    if not 0 <= begin <= end:
        raise ValueError(f"{name}: need 0 <= begin_step <= end_step, got {begin} and {end}")
    if fix is not None and fix < end:
        raise ValueError(
            f"{name}: freeze_step ({fix}) is before end_step ({end}); the mask can only be "
            "fixed once the ramp has ended"
        )
    if fix is not None and total is not None and fix > total:
        raise ValueError(f"{name}: freeze_step ({fix}) is after total_steps ({total})")
    return begin, end, fix


def set_bn_momentum(model: nn.Module, momentum: float) -> Callable[[], None]:
    """Set every BatchNorm's ``momentum``; returns a function restoring the old values."""
    kinds = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)
    old = [(m, m.momentum) for m in model.modules() if isinstance(m, kinds)]
    for m, _ in old:
        m.momentum = momentum

    def undo() -> None:
        for m, value in old:
            m.momentum = value

    return undo


def nm_threshold(absw: torch.Tensor, n_t: int, m: int, dim: int) -> tuple[Tensor, Tensor]:
    """ST-3 inside N:M groups: each entry's τ and the mask of the ``n_t`` largest per group.

    τ of a group is the largest |W| it prunes (its (n_t + 1)-th largest; 0 when n_t = M), so
    soft thresholding by it shrinks the kept entries as the global τ does without structure.
    """
    groups = nm_groups(absw, m, dim=dim)
    if n_t >= m:
        tau = torch.zeros_like(absw)
    else:
        per = groups.topk(n_t + 1, dim=1, sorted=True).values[:, -1:]
        tau = ungroup(per.expand(-1, m), absw.shape, dim)
    return tau, group_top(absw, n_t, m, dim=dim)


def block_shrink(
    raw: torch.Tensor, tau: float, rows: int, cols: int, dim: int, out: torch.Tensor
) -> None:
    """``out`` = W_b · max(1 − τ/S_b, 0) per block, S_b = Σ_b |W| (soft threshold on S_b)."""
    sums = block_scores(raw.abs(), rows, cols, dim=dim)
    factor = (1.0 - tau / sums.clamp_min(1e-30)).clamp_min(0.0).to(raw.dtype)
    coarse = factor.repeat_interleave(rows, 0).repeat_interleave(cols, 1)
    torch.mul(raw, from_matrix(coarse, raw.shape, dim=dim), out=out)
