"""GraNet: gradual magnitude pruning with zero-cost neuroregeneration (Liu et al., NeurIPS 2021).

GMP (cubic schedule, **global** magnitude criterion by default) plus, on every update step,
a drop-and-regrow round: drop ⌈ζ_t·n⌉ more active weights by lowest |w| and regrow as many
inactive ones by largest |dense gradient| of the current batch (RigL-style; regrown weights and
their optimizer state start at zero), so the active count still follows the schedule and the
target is reached exactly. The round is :func:`sparsetrain.criteria.drop_and_grow`, as in DST:
``prune`` and ``grow`` choose its criteria (any registered one; the gradual pruning itself stays
magnitude), run after the optimizer step on this batch's dense gradient. ζ_t decays by cosine
from ``regrow_fraction`` to ``regrow_fraction_end`` over the whole run.

As in the released code (``CIFAR/sparselearning/core.py``: ``pruning`` then
``truncate_weights``), the defaults are:

- ``regrow_scope="layer"``: each tensor drops ⌈ζ_t·n_l⌉ and regrows as many (per-tensor counts
  kept); ``"global"`` ranks all tensors together for both.
- ``regrow_after_pruning=True``: regrowth continues every ``update_interval`` steps after the
  pruning window (RigL-like DST at the final sparsity); ``False`` regrows on pruning steps only.
- ``initial_mask="erk"``: a start at ``initial_sparsity`` > 0 is a random ERK mask (the
  README's ``--sparse-init ERK``); ``"magnitude"`` prunes by global magnitude instead.
- ζ: 0.5 → 0.005 (``--prune-rate``, ``CosineDecay``'s ``eta_min``), cosine over total_steps.

With ``structure`` (see :mod:`~sparsetrain.methods.structured`): the gradual pruning is GMP's
(N:M: N_t decaying from M to N per group; blocks: whole blocks by summed |w|), the random ERK
start at ``initial_sparsity`` draws whole groups' or blocks' worth, and each regrowth round drops
as without structure and regrows within each group what it lost (N:M), or whole blocks.

An entry dropped and regrown in the same round keeps its value (the released code only zeroes
it when it stays inactive); every other regrown entry restarts at zero.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from sparsetrain import distributed as _dist
from sparsetrain.criteria import drop_and_grow, get_growth_criterion, get_prune_criterion
from sparsetrain.distributions import allocate
from sparsetrain.methods import structured
from sparsetrain.methods._drop_grow import (
    apply_change,
    check_states,
    criterion_options,
    random_start,
    sites,
)
from sparsetrain.methods.gmp import GMP, SCOPES
from sparsetrain.methods.options import checks, number, one_of, option_error
from sparsetrain.methods.registry import register_method
from sparsetrain.schedules import Schedule, UpdateSchedule, cosine_decay, last_update_step

REGROW_SCOPES = ("layer", "global")
INITIAL_MASKS = ("erk", "magnitude")


class GraNet(GMP):
    """GraNet: GMP with gradient-based neuroregeneration on every update step.

    Serves FSDP2-sharded models as GMP and DST do (sharded selections, random draws per rank's
    rows).

    References:
        Liu et al., "Sparse Training via Boosting Pruning Plasticity with Neuroregeneration",
        NeurIPS 2021, arXiv 2106.10404 (official code: github.com/VITA-Group/GraNet).

    Args:
        regrow_fraction: ζ at step 0: fraction of active weights dropped and regrown.
        regrow_fraction_end: ζ at ``total_steps`` (cosine decay).
        regrow_scope: ``layer`` (official) or ``global``.
        regrow_after_pruning: Keep regrowing every ``update_interval`` steps after ``end_step``.
        initial_mask: ``erk`` (random ERK, official) or ``magnitude``, for initial_sparsity > 0.
        scope: Scope of the gradual pruning: ``global`` (GraNet) or ``layer``.
        prune: Criterion of the regrowth round's drop (default ``magnitude``; see
            ``sparsetrain.criteria.PRUNE_CRITERIA``).
        grow: Criterion of the regrowth (default ``gradient``; see
            ``sparsetrain.criteria.GROWTH_CRITERIA``).
        prune_options: Hyper-parameters of ``prune``.
        grow_options: Hyper-parameters of ``grow``.
        **kwargs: Options of :class:`GMP` (``update_interval``, ``begin_step``, ``end_step``, ...).
    """

    name = "granet"
    CHECKS = checks(
        regrow_fraction=number(0, 1),
        regrow_fraction_end=number(0, 1),
        regrow_scope=one_of(REGROW_SCOPES),
        initial_mask=one_of(INITIAL_MASKS),
        scope=one_of(SCOPES),
    )

    def __init__(
        self,
        *,
        regrow_fraction: float = 0.5,
        regrow_fraction_end: float = 0.005,
        regrow_scope: str = "layer",
        regrow_after_pruning: bool = True,
        initial_mask: str = "erk",
        scope: str = "global",
        prune: str = "magnitude",
        grow: str = "gradient",
        prune_options: Mapping[str, Any] | None = None,
        grow_options: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(scope=scope, **kwargs)
        self.prune, self.grow = get_prune_criterion(prune), get_growth_criterion(grow)
        self.prune_options = criterion_options(self.prune, prune_options)
        self.grow_options = criterion_options(self.grow, grow_options)
        if regrow_scope == "global" and self.prune.selection:
            raise option_error(
                self.name, f"prune criterion {prune!r} is per-layer only; use regrow_scope='layer'"
            )
        if not regrow_fraction_end <= regrow_fraction:
            raise option_error(
                self.name,
                f"regrow_fraction_end must be <= regrow_fraction ({regrow_fraction!r}), got "
                f"{regrow_fraction_end!r}",
            )
        if scope == "layer" and regrow_scope == "global":
            raise option_error(
                self.name, "regrow_scope='global' would move per-layer counts; use scope='global'"
            )
        self.regrow_fraction, self.regrow_fraction_end = regrow_fraction, regrow_fraction_end
        self.regrow_scope, self.regrow_after_pruning = regrow_scope, regrow_after_pruning
        self.initial_mask = initial_mask
        # regrowth on the pruning cadence, and after it if regrow_after_pruning, until one
        # interval before the end: grown weights get at least one interval of training
        start, interval, end = self.pruning.start, self.pruning.interval or 1, self.end_step
        last = None if self.total_steps is None else last_update_step(self.total_steps, interval)
        if not regrow_after_pruning:
            last = end if last is None else min(last, end)
        at = (end,) if start < end and (last is None or end <= last) else ()
        stop = None if last is None else max(start, last)  # an empty window if last < start
        self.regrowth = UpdateSchedule(interval, start, stop, at=at)
        self.schedule = Schedule(self.schedule.ramp, (self.pruning, self.regrowth))

    # ------------------------------------------------------------------ schedule

    def regrow_fraction_at(self, step: int) -> float:
        """ζ_t: cosine from ``regrow_fraction`` at 0 to ``regrow_fraction_end`` at total_steps."""
        total = self.total_steps or self.end_step
        return cosine_decay(
            step, initial=self.regrow_fraction, final=self.regrow_fraction_end, total=total
        )

    def is_regrow_step(self, step: int) -> bool:
        """Whether a drop-and-regrow round ends optimizer step ``step``."""
        return self.regrowth.is_update(step)

    # ------------------------------------------------------------------ hooks

    def _on_attach(self) -> None:
        if self.initial_sparsity > 0 and self.initial_mask == "erk" and self.structure.structured:
            self._structured_start()
        elif self.initial_sparsity > 0 and self.initial_mask == "erk":
            shapes = {t.name: t.shape for t in self.targets}
            counts = allocate(shapes, self.initial_sparsity, "erk", blocks=self.blocks())
            random_start(self, counts)
        super()._on_attach()  # the global prune to initial_sparsity keeps an ERK mask as it is

    def _structured_start(self) -> None:
        if self.structure.kind == "nm":
            gens = [self.generator(0, i) for i in range(len(self.targets))]
            scores = [
                torch.rand(t.shape, generator=g) for t, g in zip(self.targets, gens, strict=True)
            ]
            masks = structured.keep_masks(
                self.structure, self.targets, scores, density=1.0 - self.initial_sparsity
            )
        else:
            masks, _ = structured.random_init(
                self.structure,
                self.targets,
                self.generator,
                self.initial_sparsity,
                "erk",
                self.blocks(),
            )
        for t, m in zip(self.targets, masks, strict=True):
            t.mask.copy_(m.to(t.mask.device))

    def _before_step(self, step: int) -> None:
        if self.is_regrow_step(step):  # the dense gradient of this batch, for the regrowth
            self._grads = {
                t.name: t.param.grad.detach().clone()
                for t in self.targets
                if t.param.grad is not None
            }

    def needs_dense_grad(self, step: int) -> bool:
        return self.is_regrow_step(step)

    def _update(self, step: int) -> None:
        super()._update(step)  # gradual magnitude pruning on its schedule
        if self.is_regrow_step(step):
            self.regrow(step, self._grads or {})

    @torch.no_grad()
    def regrow(self, step: int, grads: dict[str, torch.Tensor]) -> None:
        """Drop ⌈ζ·n⌉ active weights by ``prune`` and regrow as many by ``grow``."""
        zeta = self.regrow_fraction_at(step)
        check_states(self)
        changes = drop_and_grow(  # each drops ⌈ζ·n⌉ of its n active entries (layer or global)
            sites(self, step, grads, self.prune, self.grow, grow_stream=10_000),
            self.prune,
            self.grow,
            scope=self.regrow_scope,
            fraction=zeta,
            prune_options=self.prune_options,
            grow_options=self.grow_options,
            commit=lambda i, c: apply_change(self, self.targets[i], c, keep_regrown=True),
            structure=self.structure,
            dims=[structured.grouped_dim(t) for t in self.targets],
        )
        [fresh] = _dist.sum_over_shards(self.model, [sum(c.fresh.numel() for c in changes)])
        active = sum(c.active for c in changes)
        self.history.append(
            {
                "step": step,
                "regrow_fraction": round(zeta, 6),
                "regrown": fresh,
                "churn": round(fresh / active, 6) if active else 0.0,
            }
        )


register_method(
    "granet",
    description="GraNet: global GMP (cubic) + gradient neuroregeneration with cosine-decaying ζ",
    paper="Liu et al., NeurIPS 2021, arXiv 2106.10404",
    dense_grad="update",
    sparse_execution=True,
)(GraNet)
