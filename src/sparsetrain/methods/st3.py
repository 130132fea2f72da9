"""ST-3 and ST-3σ: straight-through gradients, soft thresholding and a cubic sparsity ramp.

In optimizer steps: dense until ``begin_step``; the target rises as s·(1 − (1 − t/T)³) until
``end_step``, then stays at s; threshold, mask and rescale are recomputed after every step (as
the official code: step t + 1's forward uses the weights after step t). After ``freeze_step``
they are recomputed at s once more, baked into the raw weights and frozen for the fine-tune (the
paper's "fix" phase). From the official epochs: ``begin_step = start_epoch · steps_per_epoch``,
``end_step = end_epoch · steps_per_epoch``, ``freeze_step = fix_from · steps_per_epoch + 1`` (it
fixes after the first batch of that epoch), ``total_steps = (n_epochs + n_ft_epochs) ·
steps_per_epoch``.
"""

from __future__ import annotations

import itertools
import math
import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from sparsetrain.masking.structure import block_any, block_scores
from sparsetrain.methods import structured
from sparsetrain.methods._inplace import InPlaceMethod
from sparsetrain.methods._st3_parts import (
    BN_MODES,
    SIGMAS,
    WD_SCOPES,
    OrderStatistics,
    abs_buffer,
    block_shrink,
    exact_mask,
    flat_layout,
    nm_threshold,
    quantile,
    rescale,
    resolve_schedule,
    set_bn_momentum,
    sigma_of,
)
from sparsetrain.methods.groups import RecipeWarning, check_recipe
from sparsetrain.methods.options import checks, integer, one_of
from sparsetrain.methods.registry import preset, register_method
from sparsetrain.schedules import PolynomialRamp, Schedule, UpdateSchedule


class ST3(InPlaceMethod):
    """ST-3 / ST-3σ: magnitude mask, soft threshold, per-channel rescale, identity STE.

    Forward Q = c ⊙ (W − sign(W)·τ_l) ⊙ M, M = 1[|W| > τ_l], per output channel
    c_o = 1.01/(ρ_o + 0.01), ρ_o = (mean_i |W|·M + 1e-6)/(mean_i |W| + 1e-6); backward the
    identity (every raw weight, pruned or not, gets g). τ is the s-quantile of |W| over all
    targets (linear interpolation as ``torch.quantile``, exact at any size); ST-3σ takes τ* of
    |W_l|/σ_l and τ_l = τ*·σ_l. During the ramp M is the ``>`` threshold (within a weight of the
    target, plus ties at τ); the fix uses an exact global top-k: exactly round((1 − s)·N) weights,
    then W_eff = W ⊙ M with masked gradients, pruned weights and optimizer state zero. Between
    steps ``weight`` holds Q and ``weight_raw`` W (:mod:`~sparsetrain.methods._inplace`).

    With ``structure`` (our extension; :mod:`~sparsetrain.methods.structured`): N:M keeps the
    N_t largest |W| of every group, N_t decaying from M to N on the cubic ramp, and soft-
    thresholds each group by the largest |W| it prunes (its own τ_g; ST-3σ's σ_l does not
    change a ranking within a group, so it equals ST-3 there); blocks keep the blocks of largest
    summed |W|/σ_l over all targets and shrink each kept block by the largest pruned block
    score τ: Q_b = W_b·(1 − τ_l/S_b) (the soft threshold applied to the block's L1 score). The
    mask is exact at every update and fixed between updates; rescale and fix as above.

    References:
        Vanderschueren & De Vleeschouwer, "Are Straight-Through gradients and Soft-Thresholding
        all you need for Sparse Training?", WACV 2023, arXiv 2212.01076.

    Args:
        begin_step: Last dense step; default round(5/170 · total_steps).
        end_step: End of the ramp; default round(80/170 · total_steps).
        freeze_step: Bake and freeze the mask after this step; default
            ``total_steps - finetune_steps``;
            ``None`` without ``total_steps`` (call :meth:`fix` yourself).
        finetune_steps: Fixed-mask steps at the end; default round(10/170 · total_steps).
        sigma: ``None`` (ST-3), ``"dims"`` (ST-3σ, the code's 1/√(Σ dims)) or ``"glorot"``
            (1/√(fan_in + fan_out), the Glorot scale).
        soft: Soft threshold (``False``: hard threshold, still with the STE).
        rescale: Per-output-channel rescale c (``False``: c = 1).
        bn_momentum: ``"corrected"`` (default: PyTorch's 0.1 kept) or ``"as_released"`` (every
            BatchNorm gets momentum 0.99 at attach, restored at detach, as the official code).
        weight_decay_scope: ``"weights"`` (default, as the official ``configure_optimizers``:
            weight decay on Conv/Linear weights and the targets only; build the optimizer from
            :func:`sparsetrain.param_groups` to get it, ``attach`` warns once with a
            :class:`~sparsetrain.methods.groups.RecipeWarning` naming the other decayed
            parameters otherwise) or ``"as_given"`` (the optimizer's groups are the recipe,
            no warning). The user's optimizer is used as given either way.
        update_interval: Recompute τ and c every this many steps (default 1, the official
            ``update_frequency``); more is a speed option: the last τ_l, c apply in between.
        **kwargs: Common options of :class:`~sparsetrain.methods.base.SparsityMethod`.

    >>> ST3(sparsity=0.9, total_steps=1700).freeze_step
    1600
    """

    name = "st3"
    supported_structures = ("unstructured", "nm", "block")
    decay_scope = "weights"
    CHECKS = checks(
        begin_step=integer(0, optional=True),
        end_step=integer(0, optional=True),
        freeze_step=integer(0, optional=True),
        finetune_steps=integer(0, optional=True),
        sigma=one_of((None, *SIGMAS)),
        bn_momentum=one_of(BN_MODES),
        weight_decay_scope=one_of(WD_SCOPES),
        update_interval=integer(1),
    )

    def __init__(
        self,
        *,
        begin_step: int | None = None,
        end_step: int | None = None,
        freeze_step: int | None = None,
        finetune_steps: int | None = None,
        sigma: str | None = None,
        soft: bool = True,
        rescale: bool = True,
        bn_momentum: str = "corrected",
        weight_decay_scope: str = "weights",
        update_interval: int = 1,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.begin_step, self.end_step, self.freeze_step = resolve_schedule(
            self.total_steps, begin_step, end_step, freeze_step, finetune_steps, self.name
        )
        self.update_interval = update_interval
        begin, freeze = self.begin_step, self.freeze_step
        # τ every update_interval steps (of the run, not of the ramp) after begin_step until the
        # mask is frozen, and at the first step of the ramp and at freeze_step
        last = math.inf if freeze is None else freeze
        at = tuple(s for s in (begin + 1, freeze) if s is not None and begin < s <= last)
        updates = UpdateSchedule(update_interval, begin, freeze, phase=0, at=at)
        ramp = PolynomialRamp(0.0, self.sparsity, begin, self.end_step)
        self.schedule = Schedule(ramp, (updates,))
        self.sigma, self.soft, self.rescale = sigma, bool(soft), bool(rescale)
        self.bn_momentum, self.weight_decay_scope = bn_momentum, weight_decay_scope
        self.decay_scope = "weights" if weight_decay_scope == "weights" else "all"
        self._tau: list[float] | None = None  # per-target τ_l; None: dense phase
        self._scale: list[torch.Tensor | None] = []
        self._fixed, self._select = False, OrderStatistics()
        self._masks_f: list[torch.Tensor] = []
        self._sigmas: list[float] = []
        self._buf: list[torch.Tensor] = []  # |W_l|/σ_l of all targets, flat
        self._spans: list[slice] = []  # each target's entries in it
        self._row_k = torch.empty(0)  # per output row: σ_l / fan_in (row sum → row mean of |W|)
        self._row_ends: list[tuple[int, int]] = []  # each target's rows in the row vectors
        self._sums: list[torch.Tensor] = []  # row sums of |W_l|/σ_l and of the kept part
        self._inv_sigmas: list[float] = []
        self._undo: list[Callable[[], None]] = []

    def _on_attach(self) -> None:
        sig = self.sigma
        self._sigmas = [1.0 if sig is None else sigma_of(t.shape, sig) for t in self.targets]
        self._scale = [None] * len(self.targets)
        self._inv_sigmas = [1.0 / g for g in self._sigmas]
        self._spans, self._row_k = flat_layout(self.targets, self._sigmas)
        rows = list(itertools.accumulate(t.shape[0] for t in self.targets))
        self._row_ends = list(itertools.pairwise([0, *rows]))
        self._sums = [torch.empty(rows[-1], device=self._row_k.device) for _ in range(2)]
        super()._on_attach()  # raw-weight buffers, refresh(0), publish(): may raise, so first
        model, opt = self._require_attached(), self.optimizer
        decayed = [] if opt is None else check_recipe(self, model, opt)
        if decayed:
            warnings.warn(
                f"{self.name}: the optimizer decays {len(decayed)} parameter(s) that ST-3's "
                f"recipe keeps free of weight decay ({', '.join(decayed[:3])}"
                f"{', ...' if len(decayed) > 3 else ''}); they are trained as given. Build the "
                f"optimizer from sparsetrain.param_groups(model, method, weight_decay=...) for "
                "the recipe, or pass weight_decay_scope='as_given' to keep yours",
                RecipeWarning,
                stacklevel=3,
            )
        if self.bn_momentum == "as_released":  # the official 0.99, in PyTorch's convention
            self._undo.append(set_bn_momentum(model, 0.99))

    def _on_detach(self) -> None:
        super()._on_detach()
        while self._undo:
            self._undo.pop()()

    def refresh(self, step: int) -> None:
        if self._fixed:
            return
        if step == self.freeze_step:
            self._fix()
        elif step == 0 or self.schedule.is_update(step):
            self._update(self.sparsity_at(step))  # otherwise τ_l and c stay, applied to new W

    def effective(self, index: int, raw: torch.Tensor, out: torch.Tensor) -> bool:
        if self._fixed or self._tau is None:
            return False  # dense phase, or baked: W_eff = W (pruned W are zero)
        self._shrink(index, raw, out, self.targets[index].mask)
        return True

    def _shrink(self, i: int, raw: torch.Tensor, out: torch.Tensor, mask: Tensor | None) -> None:
        """Write c ⊙ shrink(W, τ_i) into ``out``; ``mask`` (if given) gets out ≠ 0: |W| > τ_i."""
        if self.structure.structured:
            self._shrink_structured(i, raw, out)
            return
        shrink = torch._C._nn.softshrink if self.soft else torch.hardshrink
        shrink(raw, self._tau[i], out=out)  # soft: W − sign(W)·τ where |W| > τ
        if mask is not None:
            mask.copy_(out)
        scale = self._scale[i]
        if scale is not None:
            out.mul_(scale)

    def grad_transform(self) -> None:
        if self._fixed:  # ordinary masked gradient; before the fix: the identity STE
            for t, m in zip(self.targets, self._masks_f, strict=True):
                if t.param.grad is not None:
                    t.param.grad.mul_(m)

    @torch.no_grad()
    def _update(self, s: float, exact: bool = False) -> None:
        """Recompute τ_l and c from W at sparsity ``s`` (the mask follows as Q ≠ 0, or here)."""
        if s <= 0.0:
            self._tau = None
            self._scale = [None] * len(self.targets)
            for t in self.targets:
                t.mask.fill_(True)
            return
        if self.structure.structured:
            self._update_structured(s)
            if exact:
                self._masks_f = [t.mask.to(t.param.dtype, copy=True) for t in self.targets]
            return
        buf = abs_buffer(self.targets, self._buf, self._inv_sigmas)
        tau = quantile(buf, s, self._select)
        if not math.isfinite(tau):
            raise FloatingPointError(f"{self.name}: threshold {tau} (non-finite weights)")
        self._tau = [tau * g for g in self._sigmas]
        full = self._row_sums(self._buf[1:], 0)
        if exact:  # the fix: exactly round((1 - s)·N) weights, ties at τ broken by top-k
            mf = exact_mask(buf, tau, round((1.0 - s) * buf.numel()))
            views = list(zip(self._spans, self.targets, strict=True))
            self._masks_f = [mf[v].view(t.shape).to(t.param.dtype, copy=True) for v, t in views]
            for t, m in zip(self.targets, self._masks_f, strict=True):
                t.mask.copy_(m)
            mf.mul_(buf)
            kept_views = [mf[v].view(t.shape) for v, t in views]
        else:
            torch.nn.functional.threshold_(buf, tau, 0.0)  # |W|·M in place, one pass
            kept_views = self._buf[1:]
        if self.rescale:  # c_o = 1.01/(ρ_o + 0.01), all rows of all layers at once
            c = rescale(self._row_sums(kept_views, 1), full, self._row_k)
            for i, (a, b) in enumerate(self._row_ends):
                t = self.targets[i]
                part = c[a:b].view(-1, *([1] * (len(t.shape) - 1)))
                self._scale[i] = part if t.param.dtype == c.dtype else part.to(t.param.dtype)

    def _shrink_structured(self, i: int, raw: Tensor, out: Tensor) -> None:
        """Q = c ⊙ shrink(W) ⊙ M with the structure's τ; the mask stays the last update's."""
        t, tau = self.targets[i], self._tau[i]  # type: ignore[index]
        if self.structure.kind == "nm":
            torch.sub(raw.abs(), tau, out=out).clamp_(min=0.0)
            if not self.soft:
                out.copy_(raw.abs())
            out.mul_(raw.sign()).mul_(t.mask)
        else:
            st, d = self.structure, structured.grouped_dim(t)
            if self.soft:
                block_shrink(raw, tau, st.rows, st.cols, d, out)  # type: ignore[arg-type]
            else:
                out.copy_(raw)
            out.mul_(t.mask)
        scale = self._scale[i]
        if scale is not None:
            out.mul_(scale)

    @torch.no_grad()
    def _update_structured(self, s: float) -> None:
        """τ, masks and c under the structure at sparsity ``s`` (exact masks at every update)."""
        st, dims = self.structure, [structured.grouped_dim(t) for t in self.targets]
        absw = [t.param.detach().abs().float() for t in self.targets]
        if st.kind == "nm":
            n_t = structured.nm_keep(st, 1.0 - s)
            parts = [nm_threshold(a, n_t, st.m, d) for a, d in zip(absw, dims, strict=True)]
            self._tau = [
                tau.to(t.param.dtype) for (tau, _), t in zip(parts, self.targets, strict=True)
            ]
            masks = [m for _, m in parts]
        else:
            scaled = [a / g for a, g in zip(absw, self._sigmas, strict=True)]
            keep = structured.global_count(st, self.targets, s)
            masks = structured.keep_masks(st, self.targets, scaled, counts=keep)
            pruned = [
                block_scores(x, st.rows, st.cols, dim=d)[~block_any(m, st.rows, st.cols, dim=d)]
                for x, m, d in zip(scaled, masks, dims, strict=True)
            ]
            top = max((float(p.max()) for p in pruned if p.numel()), default=0.0)
            self._tau = [top * g for g in self._sigmas]
        for t, m in zip(self.targets, masks, strict=True):
            t.mask.copy_(m)
        if self.rescale:
            for i, (t, a, m) in enumerate(zip(self.targets, absw, masks, strict=True)):
                rows = t.shape[0]
                full, kept = a.reshape(rows, -1).sum(1), (a * m).reshape(rows, -1).sum(1)
                k = torch.full_like(full, rows / t.numel)
                c = rescale(kept, full, k).to(full.device)
                self._scale[i] = c.view(-1, *([1] * (len(t.shape) - 1))).to(t.param.dtype)

    def _row_sums(self, views: list[Tensor], slot: int) -> Tensor:
        """Per-output-row sums of each target's view, into one reused vector of all rows."""
        out = self._sums[slot]
        for (a, b), v in zip(self._row_ends, views, strict=True):
            torch.sum(v.view(v.shape[0], -1), 1, out=out[a:b])
        return out

    @torch.no_grad()
    def _fix(self) -> None:
        """Recompute at full sparsity, bake W ← Q ⊙ M, freeze M (the raw weights are in place)."""
        self._masks_f = []
        if self.sparsity > 0.0:
            self._update(self.sparsity, exact=True)
            for i, t in enumerate(self.targets):
                q = torch.empty_like(t.param)
                self._shrink(i, t.param.data, q, None)
                t.param.copy_(q.mul_(self._masks_f[i]))
        else:
            self._masks_f = [torch.ones_like(t.param) for t in self.targets]
        self._fixed, self._tau = True, None
        self.apply_masks()  # optimizer state at pruned positions restarts from zero
        nnz = sum(t.nnz for t in self.targets)
        self.history.append({"step": self.step, "event": "fix", "nnz": nnz})

    def fix(self) -> None:
        """Bake and freeze now (done automatically after ``freeze_step``)."""
        self._require_attached()
        self.unpublish()
        self._fix()
        self.publish()

    def _extra_state(self) -> dict[str, Any]:
        scale = [None if c is None else c.clone() for c in self._scale]
        tau = (
            None
            if self._tau is None
            else [x.clone() if isinstance(x, Tensor) else x for x in self._tau]
        )
        return {"tau": tau, "scale": scale, "fixed": self._fixed}

    def _load_extra_state(self, state: dict[str, Any]) -> None:
        self._tau, self._fixed = state["tau"], bool(state["fixed"])
        dev = self.targets[0].param.device
        if self._tau is not None:
            self._tau = [x.to(dev) if isinstance(x, Tensor) else x for x in self._tau]
        self._scale = [None if c is None else c.to(dev) for c in state["scale"]]
        self._masks_f = [t.mask.to(t.param.dtype) for t in self.targets] if self._fixed else []
        self.republish()


_PAPER = "Vanderschueren & De Vleeschouwer, WACV 2023, arXiv 2212.01076"
register_method(
    "st3",
    description="ST-3: soft threshold + rescale, identity STE, global cubic ramp, fixed fine-tune",
    paper=_PAPER,
    dense_grad="always",
)(ST3)
register_method(
    "st3_sigma",
    description="ST-3σ: ST-3 with the global threshold on |W|/σ_l (more uniform layers)",
    paper=_PAPER,
    dense_grad="always",
)(preset(ST3, "st3_sigma", sigma="dims"))
