"""OptG: supermask training of trainable scores next to the weights (Zhang et al. 2022).

Scores S (zeros, one per weight) are trained by the supermask optimizer: by default its own SGD
(momentum 0.9, no weight decay, as released), whatever the user's optimizer is;
``score_optimizer="user"`` trains them with an optimizer of the user's class and hyper-parameters
(weight decay 0; identical when that is SGD with momentum 0.9). Either way the scores never join
the user's optimizer (see :class:`~sparsetrain.optim.Companion`). Forward W ⊙ M with M a
global top-k of S; backward W.grad = g ⊙ M and S.grad = g ⊙ W on every entry (identity STE). M is
re-selected every ``update_interval`` steps (default: per epoch, as released) at s(e) =
s_target·σ(β(e − E/2)), E = ⌈total_steps / steps_per_epoch⌉. Before each step the score lr is set to
lr_w·σ(β(e − E/2)), lr_w the weight group's current lr (so the user's LR scheduler drives both, as
in the released per-epoch schedule). Between steps ``weight`` holds W ⊙ M and ``weight_raw`` W (see
:mod:`~sparsetrain.methods._inplace`). Re-selection leaves optimizer state alone (as released).

Options vs the official code: ``score_lr_mode`` ``corrected`` (default: lr_S = lr_w·r·score_lr/lr0)
or ``as_released`` (``score_lr`` ignored). ``selection`` ``exact`` (ours, default:
exactly round((1 − s)·N) kept, ties at the threshold τ broken by larger |W|) or ``as_released``
(every score ≥ τ kept: the official strict ``<``). Both keep everything in the early epochs of a
long run, where ties matter (all S = 0), since there k = N. Short runs (ours):
``final_epochs_at_target=1`` (default) forces s = s_target, r = 1 in the last epoch (a no-op for
E ≥ 100: σ(E/2 − 1) rounds to 1); ``beta_ref_epochs`` uses β·max(1, ref/E) instead. β = 1 with
``final_epochs_at_target=0`` and no ``beta_ref_epochs`` is the official behaviour.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, cast

import torch

from sparsetrain.masking.topk import select_topk
from sparsetrain.methods import structured
from sparsetrain.methods._inplace import InPlaceMethod
from sparsetrain.methods.options import checks, integer, number, one_of, option_error
from sparsetrain.methods.registry import register_method
from sparsetrain.optim import Companion, group_of
from sparsetrain.schedules import Schedule, SigmoidRamp, UpdateSchedule

SCORE_LR_MODES = ("corrected", "as_released")
SCORE_OPTIMIZERS = ("sgd", "user")
SELECTIONS = ("exact", "as_released")
SHORT_CADENCE = 10
"""The short cadence: ``update_interval`` (steps) for runs shorter than ``PER_EPOCH_EPOCHS``,
chosen on the validation split of LeNet-300-100 / Fashion-MNIST (benchmarks/RESULTS.md)."""
PER_EPOCH_EPOCHS = 60
"""Epochs the released once-per-epoch re-selection needs before its late swaps die out."""


def select_global(
    scores: Sequence[torch.Tensor],
    weights: Sequence[torch.Tensor],
    k: int,
    *,
    exact: bool = True,
) -> list[torch.Tensor]:
    """OptG's global selection: the ``k`` highest scores over all tensors.

    Args:
        scores: One score tensor per layer.
        weights: The matching weights; |W| breaks ties at the threshold (``exact`` only).
        k: Entries to keep in total.
        exact: Keep exactly ``k``; else keep every score ≥ the k-th largest (as released).

    Returns:
        One flat ``bool`` mask per layer.
    """
    flat = torch.cat([s.detach().reshape(-1) for s in scores])
    n = flat.numel()
    if k >= n or k <= 0:
        keep = torch.full((n,), k > 0, dtype=torch.bool, device=flat.device)
    else:
        tau = torch.kthvalue(flat, n - k + 1).values  # the k-th largest score
        keep = flat > tau if exact else flat >= tau
        if exact:
            mags = torch.cat([w.detach().abs().reshape(-1) for w in weights])
            keep |= select_topk(mags, k - int(keep.sum()), flat == tau)
    return list(keep.split([s.numel() for s in scores]))


class OptG(InPlaceMethod):
    """OptG: global top-k supermask over trainable scores, with the supermask optimizer.

    With ``structure`` (:mod:`~sparsetrain.methods.structured`): N:M keeps the N_t highest
    scores of every group, N_t decaying from M to N on the sigmoid ramp (ties: the lower index);
    blocks keep the blocks of highest summed score over all targets (the ranking stays global).
    Exact selection only.

    References:
        Zhang et al., "Optimizing Gradient-driven Criteria in Network Sparsity: Gradient is All
        You Need", arXiv 2201.12826, 2022 (official code: github.com/zyxxmu/OptG).

    Args:
        steps_per_epoch: Optimizer steps per epoch (required; the ramp is per epoch).
        update_interval: Re-select the mask every this many steps (default: once per epoch, as
            released; the short cadence for runs under 60 epochs: 10). The per-epoch cadence
            needs about 60 epochs to settle; ``attach`` and ``plan`` warn below that.
        beta: Slope β of the sigmoid ramp, > 0 (1 in every official config).
        final_epochs_at_target: Last epochs forced to s_target (ours; 0: official).
        beta_ref_epochs: If set, use β·max(1, beta_ref_epochs / E) (short-run alternative).
        score_lr: Base lr of the scores (``score_lr_mode="corrected"`` only; default: lr0).
        score_lr_mode: ``corrected`` (default) or ``as_released`` (``score_lr`` ignored).
        selection: ``exact`` (default, exactly k kept) or ``as_released`` (ties at τ kept).
        score_optimizer: ``sgd`` (default): the released supermask optimizer, SGD with
            momentum 0.9 and no weight decay, stepped with the user's optimizer; ``user``: an
            optimizer of the user's class with its hyper-parameters (weight decay 0). With
            Adam-type optimizers ``user`` makes every score move by about lr per step whatever
            its gradient's size, so the scores stop being an accumulated Taylor saliency (on
            MNIST-1D with AdamW it collapsed training).
        **kwargs: Common options of :class:`SparsityMethod` (``total_steps`` is required;
            ``dense_first``/``dense_last`` are the official ``--first-layer-dense`` and
            ``--last-layer-dense``).
    """

    name = "optg"
    supported_structures = ("unstructured", "nm", "block")
    defers_updates = True
    CHECKS = checks(
        steps_per_epoch=integer(1, optional=True),
        update_interval=integer(1, optional=True),
        beta=number(0, low_open=True),
        final_epochs_at_target=integer(0),
        beta_ref_epochs=integer(1, optional=True),
        score_lr=number(0, low_open=True, optional=True),
        score_lr_mode=one_of(SCORE_LR_MODES),
        selection=one_of(SELECTIONS),
        score_optimizer=one_of(SCORE_OPTIMIZERS),
    )

    def __init__(
        self,
        *,
        steps_per_epoch: int | None = None,
        update_interval: int | None = None,
        beta: float = 1.0,
        final_epochs_at_target: int = 1,
        beta_ref_epochs: int | None = None,
        score_lr: float | None = None,
        score_lr_mode: str = "corrected",
        selection: str = "exact",
        score_optimizer: str = "sgd",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if steps_per_epoch is None or self.total_steps is None:
            raise option_error(
                self.name,
                "ramps and re-selects its mask per epoch: pass steps_per_epoch="
                "len(loader) and total_steps=len(loader) * epochs (optimizer steps), got "
                f"steps_per_epoch={steps_per_epoch!r}, total_steps={self.total_steps!r}",
            )
        self.steps_per_epoch = steps_per_epoch
        self._released_cadence = update_interval is None
        self.update_interval = steps_per_epoch if update_interval is None else update_interval
        self.final_epochs_at_target = final_epochs_at_target
        self.epochs = math.ceil(self.total_steps / self.steps_per_epoch)
        if beta_ref_epochs is not None:
            beta *= max(1.0, beta_ref_epochs / self.epochs)
        self.beta = beta
        # the mask is re-selected every update_interval steps before the last one, and at the
        # first step of the forced final epochs; it holds its selection's sparsity until the next
        e_forced = self.epochs - final_epochs_at_target
        forced = max(e_forced, 0) * steps_per_epoch if final_epochs_at_target > 0 else 0
        updates = UpdateSchedule(
            self.update_interval,
            phase=0,
            at=(forced,) if forced else (),
            final="never",
            total=self.total_steps,
        )
        ramp = SigmoidRamp(
            self.sparsity, self.epochs, steps_per_epoch, beta, final_epochs_at_target
        )
        self.schedule = Schedule(ramp, (updates,), held=True)
        self.score_lr, self.score_lr_mode, self.selection = score_lr, score_lr_mode, selection
        if selection == "as_released" and self.structure.structured:
            raise option_error(
                self.name, "selection='as_released' keeps every tie, which breaks a structure"
            )
        self.score_optimizer = score_optimizer
        self._scores_opt: Companion | None = None  # the supermask optimizer (see optim.Companion)
        self.scores: list[torch.Tensor] = []
        self._fmasks: list[torch.Tensor] = []
        self._dense: list[bool] = []
        self._lr0 = 0.0

    def schedule_notes(self, total_steps: int) -> list[str]:
        epochs = math.ceil(total_steps / self.steps_per_epoch)
        if not self._released_cadence or epochs >= PER_EPOCH_EPOCHS:
            return []
        return [
            f"optg: re-selecting the mask once per epoch (the released cadence) needs about "
            f"{PER_EPOCH_EPOCHS} epochs to settle and this run has {epochs}; set "
            f"update_interval={SHORT_CADENCE} (the short cadence), or pass update_interval="
            f"{self.steps_per_epoch} to keep the released one without this warning"
        ]

    def ramp(self, epoch: int) -> float:
        """r(e) = σ(β(e − E/2)), or 1 in the last ``final_epochs_at_target`` epochs."""
        return cast(SigmoidRamp, self.schedule.ramp).fraction(epoch)

    def score_lr_factor(self, epoch: int) -> float:
        """lr_S / lr_w in ``epoch``: r(e), times score_lr/lr0 when ``score_lr`` is honoured."""
        honoured = self.score_lr_mode == "corrected" and self.score_lr is not None
        return self.ramp(epoch) * (self.score_lr / self._lr0 if honoured else 1.0)  # type: ignore[operator]

    def _validate(self, targets: Any, optimizer: torch.optim.Optimizer | None) -> None:
        if optimizer is None:
            raise ValueError("optg trains its scores: attach(model, optimizer) needs an optimizer")

    def _on_attach(self) -> None:
        opt: Any = self.optimizer  # not None: checked by _validate
        self.scores = [torch.zeros_like(t.param).requires_grad_() for t in self.targets]
        self._fmasks = [torch.ones_like(t.param) for t in self.targets]
        super()._on_attach()  # raw-weight buffers, then refresh(0) and publish()
        anchor = self.targets[0].param  # the score LR follows this weight's group
        home = group_of(opt, anchor)
        self._lr0 = float(home.get("initial_lr", home["lr"]))
        if self.score_optimizer == "sgd":
            self._scores_opt = Companion(opt, "sgd")
            self._scores_opt.add(self.scores, anchor, scale=0.0, momentum=0.9)
        else:
            self._scores_opt = Companion(opt, "like")
            self._scores_opt.add(self.scores, anchor, scale=0.0, weight_decay=0.0)
        self._set_score_lr(1)

    def _on_detach(self) -> None:
        if self._scores_opt is not None:
            self._scores_opt.release()
        self._scores_opt = None
        super()._on_detach()

    @property
    def score_group(self) -> dict[str, Any]:
        """The param group that trains the scores (in the method's own optimizer)."""
        return self._scores_opt.groups[0]  # type: ignore[union-attr]

    def _set_score_lr(self, step: int) -> None:
        assert self._scores_opt is not None  # attached (internal invariant)
        self._scores_opt.set_scale(0, self.score_lr_factor((step - 1) // self.steps_per_epoch))
        self._scores_opt.sync_lr()

    def _before_step(self, step: int) -> None:
        self._set_score_lr(step)
        super()._before_step(step)  # grad_transform(), then W back into the parameters
        if self._scores_opt is not None:  # the scores' step, next to the user's weight step
            self._scores_opt.step()

    @torch.no_grad()
    def grad_transform(self) -> None:
        """Dense g (∂L/∂W_eff) → S.grad = g ⊙ W on every entry and W.grad = g ⊙ M.

        S.grad is overwritten, not accumulated: g already sums every backward since the last
        step, and W does not change in between (so ``model.zero_grad()`` loops work too).
        """
        for i, t in enumerate(self.targets):
            g = t.param.grad
            self.scores[i].grad = None if g is None else g * self.raw_weight(i)
            if g is not None and not self._dense[i]:
                g.mul_(self._fmasks[i])

    def refresh(self, step: int) -> None:
        if step == 0 or self.schedule.is_update(step):
            self.reselect(step)

    def effective(self, index: int, raw: torch.Tensor, out: torch.Tensor) -> bool:
        if self._dense[index]:
            return False  # W_eff = W: nothing to swap
        torch.mul(raw, self._fmasks[index], out=out)
        return True

    @torch.no_grad()
    def reselect(self, step: int) -> None:
        """Select the masks of the epoch of ``step`` from the scores (called automatically)."""
        epoch = step // self.steps_per_epoch
        s = self.sparsity * self.ramp(epoch)
        k = structured.global_count(self.structure, self.targets, s)
        weights = [t.param for t in self.targets]  # the raw weights W here
        if self.structure.structured:
            masks = structured.keep_masks(
                self.structure, self.targets, self.scores, density=1.0 - s, counts=k
            )
            k = sum(int(m.sum()) for m in masks)
        else:
            masks = select_global(self.scores, weights, k, exact=self.selection == "exact")
        before, grown = sum(t.nnz for t in self.targets), 0
        for t, m in zip(self.targets, masks, strict=True):
            grown += int((m.view(t.shape) & ~t.mask).sum())
            t.mask.copy_(m.view(t.shape))
        self._sync_masks()
        self.history.append(
            {"step": step, "epoch": epoch, "sparsity": round(s, 6), "active": k}
            | ({"churn": round(grown / before, 6)} if step and before else {})
        )

    def _extra_state(self) -> dict[str, Any]:
        extra: dict[str, Any] = {"scores": [s.detach().clone() for s in self.scores]}
        if self._scores_opt is not None:
            extra["score_optimizer"] = self._scores_opt.state_dict()
        return extra | {"lr0": self._lr0}

    def _load_extra_state(self, state: dict[str, Any]) -> None:
        with torch.no_grad():
            for s, saved in zip(self.scores, state["scores"], strict=True):
                s.copy_(saved)
        self._lr0 = float(state["lr0"])
        if self._scores_opt is not None and "score_optimizer" in state:
            self._scores_opt.load_state_dict(state["score_optimizer"])
        self._sync_masks()
        self.republish()

    def _sync_masks(self) -> None:
        self._fmasks = [t.mask.to(t.param.dtype) for t in self.targets]
        self._dense = [t.nnz == t.numel for t in self.targets]


register_method(
    "optg",
    description="OptG: global top-k of trainable scores (supermask), sigmoid ramp per epoch",
    paper="Zhang et al. 2022, arXiv 2201.12826",
    dense_grad="always",
)(OptG)
