"""Shared parts of ST-3 and DNW: exact selection on magnitudes, schedule, optimizer and BN set-up.

Selection: ``torch.kthvalue`` and ``torch.topk`` cost milliseconds per 10⁵ entries on a CPU and
``torch.quantile`` refuses more than 16M entries, too slow for a threshold recomputed after every
step. :class:`OrderStatistics` stays exact with about two counting passes per call (see its
docstring). On the CPU it works on a numpy view of the buffer: on this torch build, comparisons
into ``bool`` tensors, ``bool`` reductions, ``nonzero`` and ``torch.where`` are 3-10x slower than
their numpy counterparts or than float ops with ``out=`` (hence also the float scratch buffers).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import nn
from torch.nn.utils import parametrize

from sparsetrain.masking.targets import SUPPORTED_MODULES, Target
from sparsetrain.masking.topk import select_topk
from sparsetrain.optim import Companion

BN_MODES = ("corrected", "as_released")
WD_SCOPES = ("weights", "as_given")
SIGMAS = ("dims", "glorot")
# The official CIFAR budget (configs/*.toml): ramp over epochs 5 → 80, fix at 160, 10 more epochs.
_BEGIN, _END, _FT = 5 / 170, 80 / 170, 10 / 170
_SMALL = 8192  # below this many entries a full sort is cheaper than the band bookkeeping


Array = np.ndarray | torch.Tensor  # CPU tensors are handled as numpy views (faster masks there)


def exact_ranks(x: Array, ranks: Sequence[int]) -> list[float]:
    """``sorted(x)[r]`` for each rank: a linear-time partition on the CPU, a sort elsewhere."""
    if isinstance(x, np.ndarray):
        return np.partition(x, list(ranks))[list(ranks)].tolist()
    return x.sort().values[list(ranks)].tolist()


def _count(mask: Array) -> int:
    return int(np.count_nonzero(mask)) if isinstance(mask, np.ndarray) else int(mask.sum())


def _where(mask: Array) -> Array:
    return np.flatnonzero(mask) if isinstance(mask, np.ndarray) else mask.nonzero().squeeze(1)


class OrderStatistics:
    """Exact order statistics of a 1-D float tensor that drifts a little between calls.

    Keeps a band: the indices of every entry whose value lay in [L', U'] when the band was
    built, around an inner window [L, U] that holds the wanted ranks. A call counts the entries
    below L and up to U (two passes), and if the band's entries now inside [L, U] number exactly
    ``#(x <= U) - #(x < L)``, the band holds all of them and the ranks are read from them: exact,
    with no full selection. Otherwise the band is rebuilt (a sampled estimate, one masked pass,
    then trimmed around the ranks). The window widens when rebuilds come often (a sparsity ramp
    moves the ranks; large steps move entries) and narrows when they are rare.
    """

    def __init__(self) -> None:
        self._idx: Array | None = None
        self._window = (0.0, 0.0)
        self._frac = {"rank": 0.002, "count": 0.004}  # window and extra band, fractions of n
        self._age = 0

    def __call__(self, x: torch.Tensor, ranks: Sequence[int]) -> list[float]:
        """``sorted(x)[r]`` for each 0-based rank ``r`` (ascending), as Python floats.

        >>> OrderStatistics()(torch.tensor([0.5, 0.1, 0.3]), [0, 2])
        [0.10000000149011612, 0.5]
        """
        xa: Array = x.detach().numpy() if x.device.type == "cpu" else x
        if len(xa) <= _SMALL:
            return exact_ranks(xa, ranks)
        if self._idx is not None and type(self._idx) is not type(xa):
            self._idx = None  # the device changed
        got = self._from_band(xa, ranks)
        if isinstance(got, str):  # widen what failed if it failed soon; narrow all if it lasted
            if self._age < 8:
                self._frac[got] = min(self._frac[got] * 2, 0.25)
            elif self._age > 64:
                self._frac = {k: max(v / 2, 0.001) for k, v in self._frac.items()}
            self._build(xa, ranks)
            got = self._from_band(xa, ranks)
        if isinstance(got, str):  # only with NaN entries
            self._idx = None
            return exact_ranks(xa, ranks)
        self._age += 1
        return got

    def _from_band(self, x: Array, ranks: Sequence[int]) -> list[float] | str:
        """The values, or why the band cannot give them: ``"rank"`` or ``"count"``."""
        if self._idx is None:
            return "rank"
        lo, hi = self._window
        below, upto = _count(x < lo), _count(x <= hi)
        if not below <= ranks[0] <= ranks[-1] < upto:
            return "rank"  # the ranks left the window
        cand = x[self._idx]
        inside = cand[(cand >= lo) & (cand <= hi)]
        if len(inside) != upto - below:
            return "count"  # an entry entered the window from outside the band
        return exact_ranks(inside, [r - below for r in ranks])

    def _build(self, x: Array, ranks: Sequence[int]) -> None:
        n = len(x)
        w, extra = (max(int(self._frac[k] * n), 16) for k in ("rank", "count"))
        sample = x[:: max(1, n // 4096)]
        m = len(sample)
        pad = int(4 * math.sqrt(m) + (w + extra) * m / n) + 2
        first, last = ranks[0] * (m - 1) // (n - 1), -(-ranks[-1] * (m - 1) // (n - 1))
        inner = [i for i in (first - pad, last + pad) if 0 <= i < m]
        est = dict(zip(inner, exact_ranks(sample, inner), strict=True))
        lo, hi = est.get(first - pad, -math.inf), est.get(last + pad, math.inf)
        idx = _where((x >= lo) & (x <= hi))
        vals = x[idx]
        below, k = _count(x < lo), len(vals)
        a, b = ranks[0] - below, ranks[-1] - below
        self._age = 0
        if a < 0 or b >= k:  # the sample missed: the band is everything
            self._idx, self._window = _where(x == x), (-math.inf, math.inf)
            return
        # window: ranks ± w; band: window ± extra; both cut exactly on the band's values
        pos = sorted(
            {max(a - w - extra, 0), max(a - w, 0), min(b + w, k - 1), min(b + w + extra, k - 1)}
        )
        cut = dict(zip(pos, exact_ranks(vals, pos), strict=True))
        self._window = (cut[max(a - w, 0)], cut[min(b + w, k - 1)])
        keep = (vals >= cut[max(a - w - extra, 0)]) & (vals <= cut[min(b + w + extra, k - 1)])
        self._idx = idx[keep]


def quantile(x: torch.Tensor, q: float, select: OrderStatistics | None = None) -> float:
    """The ``q``-quantile of ``x >= 0`` with linear interpolation, as ``torch.quantile``, any size.

    >>> quantile(torch.tensor([1.0, 2.0, 3.0, 4.0]), 0.5)
    2.5
    """
    select = OrderStatistics() if select is None else select
    n = x.numel()
    # torch.quantile's arithmetic (float32 rank and weight) up to its 2**24 limit, float64 above
    rank = torch.tensor(q, dtype=torch.float32 if n <= 1 << 24 else torch.float64) * (n - 1)
    lo = int(rank)
    frac = (rank - lo).float()
    if frac.item() == 0.0 or lo + 1 >= n:
        return select(x, [lo])[0]
    v_lo, v_hi = select(x, [lo, lo + 1])
    return torch.lerp(torch.tensor(v_lo), torch.tensor(v_hi), frac).item()


def abs_buffer(
    targets: Sequence[Target], cache: list[torch.Tensor], scales: Sequence[float] | None = None
) -> torch.Tensor:
    """|W| of all targets (times ``scales``) concatenated in one reused float32 buffer."""
    n = sum(t.numel for t in targets)
    dev = targets[0].param.device
    if not cache or cache[0].numel() != n or cache[0].device != dev:
        cache[:] = [torch.empty(n, dtype=torch.float32, device=dev)]
    buf, start = cache[0], 0
    for i, t in enumerate(targets):
        dst = buf[start : start + t.numel].view(t.shape)
        torch.abs(t.param.detach().float(), out=dst)
        if scales is not None and scales[i] != 1.0:
            dst.mul_(scales[i])
        start += t.numel
    return buf


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


def check_choice(what: str, value: object, valid: Sequence[object]) -> None:
    """Raise a one-line ValueError naming ``value`` and the valid options."""
    if value not in valid:
        raise ValueError(f"unknown {what} {value!r}; valid: {', '.join(map(str, valid))}")


def check_interval(value: int) -> int:
    """Validate an update interval (an int >= 1)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"update_interval must be an int >= 1, got {value!r}")
    if value < 1:
        raise ValueError(f"update_interval must be >= 1, got {value}")
    return value


def resolve_schedule(
    total: int | None,
    begin: int | None,
    end: int | None,
    fix: int | None,
    finetune: int | None,
    name: str = "st3",
) -> tuple[int, int, int | None]:
    """ST-3's (ramp_begin_step, ramp_end_step, fix_step), defaults scaled from the CIFAR config."""
    if fix is not None and finetune is not None:
        raise ValueError("give fix_step or finetune_steps, not both")
    if total is None and finetune is not None:
        raise ValueError("finetune_steps needs total_steps; give fix_step instead")
    if total is not None:
        begin = round(_BEGIN * total) if begin is None else begin
        end = round(_END * total) if end is None else end
        if fix is None:
            fix = total - (round(_FT * total) if finetune is None else finetune)
    if end is None:
        raise ValueError(
            f"{name} needs ramp_end_step or total_steps (optimizer steps of the run, e.g. "
            "len(loader) * epochs)"
        )
    begin = begin or 0
    if not 0 <= begin <= end:
        raise ValueError(f"need 0 <= ramp_begin_step <= ramp_end_step, got {begin} and {end}")
    if fix is not None and fix < end:
        raise ValueError(
            f"fix_step ({fix}) is before ramp_end_step ({end}); the mask can only be fixed once "
            "the ramp has ended"
        )
    if fix is not None and total is not None and fix > total:
        raise ValueError(f"fix_step ({fix}) is after total_steps ({total})")
    return begin, end, fix


def decay_only_weights(
    model: nn.Module, optimizer: torch.optim.Optimizer, targets: Sequence[Target] = ()
) -> tuple[Companion | None, Callable[[], None]]:
    """Make weight decay apply only to Conv/Linear weights (ST-3's ``configure_optimizers``).

    The user's optimizer keeps its parameter groups (so LR schedulers built before ``attach``
    keep working): from each group with non-zero ``weight_decay`` that holds Conv/Linear weights
    or ``targets`` (attention and recurrent weight matrices, included embeddings), the other
    parameters of ``model`` (biases, normalisation parameters, ...) move, with their
    optimizer state, into a :class:`~sparsetrain.optim.Companion` group with the same options,
    ``weight_decay=0`` and the LR of the group they came from at every step. A group holding no
    Conv/Linear weight just gets ``weight_decay=0``. Parameters that are not the model's, and
    groups without weight decay, are untouched.

    Returns:
        The companion (``None`` if nothing moved; step it after the user's update) and a
        function undoing the change.
    """
    decayed: set[int] = {id(t.param) for t in targets}
    for module in model.modules():
        if isinstance(module, SUPPORTED_MODULES):
            w = (
                module.parametrizations.weight.original
                if parametrize.is_parametrized(module, "weight")
                else module.weight
            )
            decayed.add(id(w))
    exempt = {id(p) for p in model.parameters()} - decayed
    zeroed: list[tuple[dict, float]] = []
    companion = Companion(optimizer, "like")
    for group in optimizer.param_groups:
        if not group.get("weight_decay") or not any(id(p) in exempt for p in group["params"]):
            continue
        keep = [p for p in group["params"] if id(p) not in exempt]
        if not keep:
            zeroed.append((group, group["weight_decay"]))
            group["weight_decay"] = 0.0
            continue
        rest = [p for p in group["params"] if id(p) in exempt]
        companion.add(rest, keep[0], take=True, weight_decay=0.0)

    def undo() -> None:
        companion.release()
        for group, wd in zeroed:
            group["weight_decay"] = wd

    return (companion if companion.groups else None), undo


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
