"""SR-STE: N:M structured sparsity from scratch with the sparse-refined straight-through rule."""

from __future__ import annotations

from typing import Any

import torch

from sparsetrain.checks import number
from sparsetrain.masking.structure import nm_mask
from sparsetrain.methods._inplace import InPlaceMethod
from sparsetrain.methods.options import checks
from sparsetrain.methods.registry import register_method
from sparsetrain.methods.structured import grouped_dim
from sparsetrain.schedules import ConstantRamp, Schedule, UpdateSchedule


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
        structure: The N:M pattern (default ``"2:4"``; ``"1:4"``, ``"4:8"``, ...). Every
            target's grouped dimension must be divisible by M.
        decay: λ_w of the sparse-refined term, >= 0 (default 2e-4, the official code's; 0 gives
            the plain straight-through estimator).
        sparsity: Optional; it is 1 − N/M, and a different value is a ``ValueError``.
        dense_last: Keep the last layer dense (default ``True``: the official code keeps the
            classifier dense).
        **kwargs: Common options of :class:`~sparsetrain.methods.base.SparsityMethod`.

    >>> SRSTE(structure="1:4").sparsity
    0.75
    """

    name = "srste"
    supported_structures = ("nm",)
    structure_note = "SR-STE is an N:M method"
    CHECKS = checks(decay=number(0))

    def __init__(
        self,
        *,
        structure: str = "2:4",
        decay: float = 2e-4,
        dense_last: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(structure=structure, dense_last=dense_last, **kwargs)
        self.n, self.m, self.decay = self.structure.n, self.structure.m, float(decay)
        every_step = UpdateSchedule(1, total=self.total_steps)
        self.schedule = Schedule(ConstantRamp(self.sparsity), (every_step,))
        self._dims: list[int] = []
        self._scratch: list[torch.Tensor | None] = []  # per target: (1 − M) ⊙ W, reused

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

    def _load_extra_state(self, state: dict[str, Any]) -> None:
        self.republish()


register_method(
    "srste",
    description="SR-STE: N:M structured top-|w| forward, straight-through + sparse-refined decay",
    paper="Zhou et al., ICLR 2021, arXiv 2102.04010",
    dense_grad="always",
)(SRSTE)
