"""SR-STE: N:M structured sparsity from scratch with the sparse-refined straight-through rule."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from sparsetrain.checks import number
from sparsetrain.masking.structure import nm_mask
from sparsetrain.masking.targets import Target
from sparsetrain.methods._inplace import InPlaceMethod
from sparsetrain.methods.options import checks, integer, option_error
from sparsetrain.methods.registry import register_method
from sparsetrain.schedules import ConstantRamp, Schedule, UpdateSchedule

_CONV_TRANSPOSE = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)


def grouped_dim(target: Target) -> int:
    """The dimension N:M groups run along: the inputs / input channels of the target.

    1 for Linear ``(out, in)``, Conv ``(out, in, k...)`` and every other tensor (for a 2-D
    matrix, its rows); 0 for a ConvTranspose weight ``(in, out/groups, k...)``.
    """
    transposed = isinstance(target.module, _CONV_TRANSPOSE) and target.param_name == "weight"
    return 0 if transposed else 1


class SRSTE(InPlaceMethod):
    """SR-STE: W_eff = W ⊙ M_{N:M}(|W|), ∂L/∂W = g + λ_w · (1 − M) ⊙ W.

    At every step the mask keeps, in every group of M consecutive weights, the N largest |W| of
    the current dense weights (ties: the lower index in the group wins), so the network has
    exactly N live weights per group from step 0 on. Groups run along the inputs: M consecutive
    inputs of a Linear row; for a Conv the weight is read as ``(out, kh, kw, in)``, so a group is
    M consecutive input channels at one kernel position (NHWC, as the official code and NVIDIA's
    ASP); other tensors as :mod:`sparsetrain.masking.structure` says (ConvTranspose: its input
    channels, our choice). The backward is straight-through to every dense weight, plus the
    *sparse-refined* term λ_w · (1 − M) ⊙ W that pulls the pruned weights towards zero, so the
    mask stops flipping (the paper's sparse-refined regularisation, ``decay``).

    Like DNW, the mask is recomputed from the raw weights after every optimizer step (and at
    attach), which is what the official per-forward selection sees; between steps ``weight``
    holds W ⊙ M and ``weight_raw`` holds W (see :mod:`~sparsetrain.methods._inplace`). The
    sparsity is 1 − N/M and needs no ``sparsity=``.

    As in the official code, the last layer (the classifier) stays dense (``dense_last=True``).
    Differences from it: a target whose grouped dimension is not divisible by M is refused at
    attach, naming it and ``exclude=[...]`` (the official code flattens such a tensor anyway, e.g.
    the 3-channel stem, so its groups straddle kernel positions); the sparse-refined term is
    added once per optimizer step, after gradient accumulation and ``GradScaler`` unscaling (the
    official code adds it in every backward: the same with one backward per step).

    References:
        Zhou, Ma, Zhu, Liu, Zhang, Yuan, Sun & Li, "Learning N:M Fine-grained Structured Sparse
        Neural Networks From Scratch", ICLR 2021, arXiv 2102.04010; official code
        aojunzz/NM-sparsity (``devkit/sparse_ops/sparse_ops.py``).

    Args:
        n: Weights kept per group, ``1 <= n <= m`` (default 2, as in 2:4).
        m: Group size (default 4). Every target's grouped dimension must be divisible by it.
        decay: λ_w of the sparse-refined term, >= 0 (default 2e-4, the official code's; 0 gives
            the plain straight-through estimator).
        sparsity: Optional; it is 1 − n/m, and a different value is a ``ValueError``.
        dense_last: Keep the last layer dense (default ``True``: the official code keeps the
            classifier dense).
        **kwargs: Common options of :class:`~sparsetrain.methods.base.SparsityMethod`.

    >>> method = SRSTE(n=2, m=4)
    >>> method.sparsity
    0.5
    """

    name = "srste"
    CHECKS = checks(
        n=integer(1),
        m=integer(1),
        decay=number(0),
        sparsity=number(0, 1, high_open=True, optional=True),
    )

    def __init__(
        self,
        *,
        n: int = 2,
        m: int = 4,
        decay: float = 2e-4,
        sparsity: float | None = None,
        dense_last: bool = True,
        **kwargs: Any,
    ) -> None:
        if not n <= m:
            raise option_error(self.name, f"need n <= m (n of every m weights kept), got {n}:{m}")
        implied = 1.0 - n / m
        if sparsity is not None and not math.isclose(sparsity, implied, rel_tol=0, abs_tol=1e-6):
            raise option_error(
                self.name,
                f"sparsity={sparsity!r} does not match n:m = {n}:{m} (sparsity 1 - n/m = "
                f"{implied:g}); omit sparsity or choose n and m",
            )
        super().__init__(sparsity=implied, dense_last=dense_last, **kwargs)
        self.n, self.m, self.decay = n, m, float(decay)
        every_step = UpdateSchedule(1, total=self.total_steps)
        self.schedule = Schedule(ConstantRamp(self.sparsity), (every_step,))
        self._dims: list[int] = []
        self._scratch: list[torch.Tensor | None] = []  # per target: (1 − M) ⊙ W, reused

    def _validate(self, targets: list[Target], optimizer: torch.optim.Optimizer | None) -> None:
        bad = [t for t in targets if t.shape[grouped_dim(t)] % self.m]
        if bad:
            shown = ", ".join(
                f"{t.name!r} {tuple(t.shape)} (dim {grouped_dim(t)}: {t.shape[grouped_dim(t)]})"
                for t in bad
            )
            raise option_error(
                self.name,
                f"N:M groups of m={self.m} run along the inputs / input channels, whose size is "
                f"not divisible by {self.m} in {shown}; keep them dense with "
                f"exclude={[t.name for t in bad]!r} or choose another m",
            )

    def _on_attach(self) -> None:
        self._dims = [grouped_dim(t) for t in self.targets]
        self._scratch = []
        super()._on_attach()

    @torch.no_grad()
    def refresh(self, step: int) -> None:
        for t, d in zip(self.targets, self._dims, strict=True):  # t.param holds W here
            t.mask.copy_(nm_mask(t.param.detach().abs(), self.n, self.m, dim=d, name=t.name))

    def effective(self, index: int, raw: torch.Tensor, out: torch.Tensor) -> bool:
        if self.n == self.m:
            return False  # every weight kept: W_eff = W
        torch.mul(raw, self.targets[index].mask, out=out)
        return True

    @torch.no_grad()
    def grad_transform(self) -> None:
        """Add λ_w · (1 − M) ⊙ W to every target's gradient g (straight-through: g passes as is)."""
        if self.decay == 0.0 or self.n == self.m:
            return
        if len(self._scratch) != len(self.targets):
            self._scratch = [None] * len(self.targets)
        for i, t in enumerate(self.targets):
            g = t.param.grad
            if g is None:
                continue
            raw, buf = self.raw_weight(i), self._scratch[i]
            if buf is None or (buf.shape, buf.dtype, buf.device) != (
                raw.shape,
                raw.dtype,
                raw.device,
            ):
                buf = self._scratch[i] = torch.empty_like(raw)
            torch.sub(raw, t.param.data, out=buf)  # W − W ⊙ M = (1 − M) ⊙ W, exactly
            g.add_(buf, alpha=self.decay)

    def target_counts(self) -> dict[str, int]:
        return {t.name: t.numel // self.m * self.n for t in self.targets}

    def global_target_count(self) -> int:
        return sum(t.numel // self.m * self.n for t in self.targets)

    def _load_extra_state(self, state: dict[str, Any]) -> None:
        self.republish()


register_method(
    "srste",
    description="SR-STE: N:M structured top-|w| forward, straight-through + sparse-refined decay",
    paper="Zhou et al., ICLR 2021, arXiv 2102.04010",
    dense_grad="always",
)(SRSTE)
