"""Dynamic sparse training: constant density, periodic prune-and-regrow.

One :class:`DynamicSparse` covers every pruning criterion × growth criterion of the Fantastic
Weights study (Nowak et al., NeurIPS 2023); ``set``, ``rigl``, ``mest`` and ``dst`` are presets
of it.
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch

from sparsetrain.criteria import (
    get_growth_criterion,
    get_prune_criterion,
    growth_scores,
    random_scores,
)
from sparsetrain.distributions import DISTRIBUTIONS, allocate, allocate_densities
from sparsetrain.masking.targets import Target
from sparsetrain.masking.topk import global_topk_masks, random_mask, topk_indices
from sparsetrain.methods.base import SparsityMethod
from sparsetrain.methods.registry import preset, register_method
from sparsetrain.optim import check_state, fill_at, zero_state_at
from sparsetrain.schedules import UpdateSchedule, cosine_decay, last_update_step

ORDERS = ("auto", "before", "after")
INACTIVE_GRADS = ("masked", "dense")
REGROWN_VALUES = ("zero", "kept")
SCOPES = ("layer", "global")
DROP_SCHEDULES = ("cosine", "constant")


class DynamicSparse(SparsityMethod):
    """Constant-density dynamic sparse training with pluggable prune and growth criteria.

    Every ``update_interval`` steps in ``(begin_step, end_step]``, each tensor (``scope="layer"``,
    the default; no redistribution across layers) drops ``ceil(ζ_t · n_active)`` active weights
    chosen by ``prune`` and regrows as many inactive ones chosen by ``grow``; just-dropped
    positions may be regrown. Regrown weights and their optimizer state start at zero. The drop
    fraction ζ_t decays by cosine from ``drop_fraction`` to ``drop_fraction_end`` over
    ``[begin_step, end_step]`` (``drop_schedule="constant"`` keeps it fixed).

    Every update leaves grown weights time to train: by default the last update is at least
    ``update_interval`` steps before the end of training (so a schedule that updates "until the
    end", like SET's or Fantastic Weights', stops one ΔT early), and no update ever happens at the
    final step, where regrown zeros would be the final model's weights.

    ``order="auto"`` follows the Fantastic Weights code: magnitude, SET and random update
    after the optimizer step ("before" in the code's naming: the optimizer step comes before the
    update); gradient-based criteria update before it, on pre-step weights and gradients.

    References:
        Nowak et al., "Fantastic Weights and How to Find Them: Where to Prune in Dynamic Sparse
        Training", NeurIPS 2023; Evci et al., "Rigging the Lottery", ICML 2020; Mocanu et al.,
        "Scalable training of artificial neural networks with adaptive sparse connectivity",
        Nature Communications 2018; Yuan et al., "MEST", NeurIPS 2021.

    Args:
        prune: Pruning criterion (see ``sparsetrain.criteria.PRUNE_CRITERIA``).
        grow: Growth criterion: ``random``, ``gradient`` or ``momentum``.
        distribution: Layer densities: uniform, er, erk (or global with ``scope="global"``).
        update_interval: ΔT, steps between topology updates.
        drop_fraction: ζ at ``begin_step``.
        drop_fraction_end: ζ at ``end_step`` (cosine schedule).
        drop_schedule: ``cosine`` or ``constant``.
        begin_step: No update at or before this step.
        end_step: No update after this step; default ``stop_fraction * total_steps``, and
            never later than ``total_steps - update_interval`` (see below). An explicit
            ``end_step`` is capped at ``total_steps - 1``.
        stop_fraction: Fraction of training with updates when ``end_step`` is not given.
        order: ``auto``, ``before`` or ``after`` (Fantastic Weights' opt_order).
        scope: ``layer`` (per-tensor counts kept) or ``global`` (one ranking; counts move).
        bernoulli: Official FW random draws (init and random growth exact only in expectation).
        gamma: γ of the MEST and GradStep criteria.
        inactive_grads: ``"masked"`` (default: pruned weights get zero gradient, and their
            optimizer state stays zero) or ``"dense"`` (the Fantastic Weights code: every weight
            takes its dense gradient step, momentum included, and pruned ones are re-zeroed after
            the step; state is never reset, so a regrown weight starts with stale momentum).
        regrown_value: ``"zero"`` (default: a weight dropped and regrown in the same update
            restarts from zero) or ``"kept"`` (the Fantastic Weights code: it keeps its value
            and optimizer state).
        **kwargs: Common options of :class:`SparsityMethod`.
    """

    name = "dst"
    supports_sparse_execution = True

    def __init__(
        self,
        *,
        prune: str = "magnitude",
        grow: str = "random",
        distribution: str = "erk",
        update_interval: int = 800,
        drop_fraction: float = 0.5,
        drop_fraction_end: float = 0.005,
        drop_schedule: str = "cosine",
        begin_step: int = 0,
        end_step: int | None = None,
        stop_fraction: float = 1.0,
        order: str = "auto",
        scope: str = "layer",
        bernoulli: bool = False,
        gamma: float = 1.0,
        inactive_grads: str = "masked",
        regrown_value: str = "zero",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.prune = get_prune_criterion(prune)
        self.grow = get_growth_criterion(grow)
        for opt, val, valid in (
            ("distribution", distribution, DISTRIBUTIONS),
            ("drop_schedule", drop_schedule, DROP_SCHEDULES),
            ("order", order, ORDERS),
            ("scope", scope, SCOPES),
            ("inactive_grads", inactive_grads, INACTIVE_GRADS),
            ("regrown_value", regrown_value, REGROWN_VALUES),
        ):
            if val not in valid:
                raise ValueError(f"unknown {opt} {val!r}; valid: {', '.join(valid)}")
        if not 0.0 < drop_fraction <= 1.0 or not 0.0 <= drop_fraction_end <= drop_fraction:
            raise ValueError(
                f"need 0 < drop_fraction <= 1 and 0 <= drop_fraction_end <= drop_fraction, got "
                f"{drop_fraction}, {drop_fraction_end}"
            )
        if scope == "global" and self.prune.select_fn is not None:
            raise ValueError(f"prune criterion {prune!r} is per-layer only; use scope='layer'")
        if not 0.0 < stop_fraction <= 1.0:
            raise ValueError(f"stop_fraction must be in (0, 1], got {stop_fraction}")
        if end_step is None and self.total_steps is None:
            raise ValueError(f"{self.name} needs total_steps (or end_step) for its drop schedule")
        if end_step is not None:
            end = end_step if self.total_steps is None else min(end_step, self.total_steps - 1)
        else:
            total = self.total_steps or 0
            end = min(int(stop_fraction * total), last_update_step(total, update_interval))
        self.schedule = UpdateSchedule(update_interval, begin_step, max(begin_step, end))
        self.distribution, self.drop_schedule, self.scope = distribution, drop_schedule, scope
        self.drop_fraction, self.drop_fraction_end = drop_fraction, drop_fraction_end
        self.order = self.prune.order if order == "auto" else order
        self.bernoulli, self.gamma = bernoulli, gamma
        self.inactive_grads, self.regrown_value = inactive_grads, regrown_value
        self._dense_inactive = inactive_grads == "dense"
        self.needs_grad = self.prune.needs_grad or self.grow.needs_grad
        self._counts: dict[str, int] | None = None

    # ------------------------------------------------------------------ init

    def _on_attach(self) -> None:
        shapes = {t.name: t.shape for t in self.targets}
        if self.bernoulli:
            dens = allocate_densities(
                shapes, self.sparsity, self.distribution, blocks=self.blocks()
            )
            for i, t in enumerate(self.targets):
                t.mask.copy_(torch.rand(t.shape, generator=self.generator(0, i)) < dens[t.name])
        elif self.distribution == "global":
            scores = [
                random_scores(t.param, self.generator(0, i)) for i, t in enumerate(self.targets)
            ]
            for t, m in zip(
                self.targets,
                global_topk_masks(scores, self.global_target_count() or 0),
                strict=True,
            ):
                t.mask.copy_(m)
        else:
            self._counts = allocate(shapes, self.sparsity, self.distribution, blocks=self.blocks())
            for i, t in enumerate(self.targets):
                t.mask.copy_(random_mask(t.shape, self._counts[t.name], self.generator(0, i)))
        self.apply_masks()

    # ------------------------------------------------------------------ schedule

    def drop_fraction_at(self, step: int) -> float:
        """ζ_t: the fraction of active weights replaced at an update at ``step``."""
        if self.drop_schedule == "constant":
            return self.drop_fraction
        span = (self.schedule.end or step) - self.schedule.start
        return cosine_decay(
            step - self.schedule.start,
            initial=self.drop_fraction,
            final=self.drop_fraction_end,
            total=span,
        )

    def update_steps(self, total_steps: int) -> list[int]:
        return self.schedule.steps(total_steps)

    def is_update_step(self, step: int) -> bool:
        return self.schedule.is_update(step)

    def needs_dense_grad(self, step: int) -> bool:
        return self.needs_grad and self.schedule.is_update(step)

    # ------------------------------------------------------------------ hooks

    def _before_step(self, step: int) -> None:
        if not self.schedule.is_update(step):
            return
        if self.order == "after":
            self.update_topology(step, {t.name: t.param.grad for t in self.targets})
        elif self.needs_grad:  # keep this batch's dense gradient for the post-step update
            self._grads = {
                t.name: t.param.grad.detach().clone()
                for t in self.targets
                if t.param.grad is not None
            }

    def _after_step(self, step: int) -> None:
        if self.order == "before" and self.schedule.is_update(step):
            self.update_topology(step, self._grads or {})

    # ------------------------------------------------------------------ the update

    @torch.no_grad()
    def update_topology(self, step: int, grads: dict[str, torch.Tensor | None]) -> None:
        """Drop and regrow on every target (or globally); record churn in ``history``."""
        zeta = self.drop_fraction_at(step)
        if self.optimizer is not None:  # an unmaskable state layout fails before any change
            for t in self.targets:
                check_state(self.optimizer, t.param, skip_keys=self.state_skip_keys)
        if self.scope == "global":
            active = sum(t.nnz for t in self.targets)
            pruned, grown, new = self._update_global(step, zeta, grads)
        else:
            # Layers are independent (own generator, mask, state), and most selection ops run
            # single-threaded, so a thread per core overlaps them; results do not depend on it.
            jobs = [(step, i, t, zeta, self._grad(t, grads)) for i, t in enumerate(self.targets)]
            workers = min(torch.get_num_threads(), len(jobs))
            if workers > 1:
                with ThreadPoolExecutor(workers) as pool:
                    counts = list(pool.map(lambda job: self._update_layer(*job), jobs))
            else:
                counts = [self._update_layer(*job) for job in jobs]
            active, pruned, grown, new = (sum(c) for c in zip(*counts, strict=True))
        self.history.append(
            {
                "step": step,
                "drop_fraction": round(zeta, 6),
                "pruned": pruned,
                "grown": grown,
                "churn": round(new / active, 6) if active else 0.0,
            }
        )

    def _grad(self, t: Target, grads: dict[str, torch.Tensor | None]) -> torch.Tensor | None:
        g = grads.get(t.name)
        if g is None and self.needs_grad:
            return torch.zeros_like(t.param)  # the tensor took no part in this step's loss
        return g

    def _grow_indices(
        self, step: int, index: int, t: Target, n: int, grad: torch.Tensor | None
    ) -> torch.Tensor:
        """Flat indices of ``n`` inactive entries of ``t`` to grow."""
        inactive = ~t.mask.view(-1)
        if self.grow.name == "random":
            gen = self.generator(step, index)
            if self.bernoulli:  # the official FW draw: exact only in expectation
                p = n / max(int(inactive.sum()), 1)
                return ((torch.rand(t.numel, generator=gen) < p) & inactive).nonzero().squeeze(1)
            return topk_indices(torch.rand(t.numel, generator=gen), n, inactive)
        mom = self.dense_momentum(t)
        if self.grow.name == "momentum" and mom is None:
            mom = torch.zeros_like(t.param)
        return topk_indices(growth_scores(self.grow.name, grad, mom).reshape(-1), n, inactive)

    def _update_layer(
        self, step: int, index: int, t: Target, zeta: float, grad: torch.Tensor | None
    ) -> tuple[int, int, int, int]:
        """Drop-and-grow on one tensor, working on flat indices (no full-size temporaries).

        Returns:
            (active before, pruned, grown, newly active) counts.
        """
        flat_mask = t.mask.view(-1)
        active = flat_mask.nonzero().squeeze(1)
        k = min(math.ceil(zeta * active.numel()), active.numel())
        w_active = t.param.detach().reshape(-1)[active]
        g_active = None if grad is None else grad.reshape(-1)[active]
        gen = self.generator(step, index)
        drop = active[self.prune.select_indices(w_active, g_active, k, gen, self.gamma)]
        flat_mask[drop] = False
        grow = self._grow_indices(step, index, t, drop.numel(), grad)
        flat_mask[grow] = True
        if t.name in self._sparse:  # the CSR structure follows the mask; grown entries start at 0
            fresh = grow  # as below: an entry dropped and regrown at once may keep its value
            if self.regrown_value == "kept":
                fresh = grow[~torch.isin(grow, drop)]
            grown = torch.zeros(t.numel, dtype=torch.bool, device=flat_mask.device)
            self._restructure(t, grown.index_fill_(0, fresh, True).view(t.shape))
        else:
            reset = torch.cat([drop, grow])  # dropped, and grown (new weights start at zero)
            if self.regrown_value == "kept":  # dropped and regrown at once: value and state kept
                reset = torch.cat([drop[~torch.isin(drop, grow)], grow[~torch.isin(grow, drop)]])
            if self.hard_mask:
                fill_at(t.param.data, reset)
            if self.optimizer is not None and not self._dense_inactive:
                zero_state_at(self.optimizer, t.param, reset, skip_keys=self.state_skip_keys)
        was_dropped = torch.zeros(t.numel, dtype=torch.bool, device=flat_mask.device)
        regrown = int(was_dropped.index_fill_(0, drop, True)[grow].sum())
        return active.numel(), drop.numel(), grow.numel(), grow.numel() - regrown

    def _update_global(
        self, step: int, zeta: float, grads: dict[str, torch.Tensor | None]
    ) -> tuple[int, int, int]:
        gs = [self._grad(t, grads) for t in self.targets]
        masks = [t.mask for t in self.targets]
        n_active = sum(t.nnz for t in self.targets)
        k = min(math.ceil(zeta * n_active), n_active)
        gens = [self.generator(step, i) for i in range(len(self.targets))]
        scores = [
            self.prune.scores(t.param.detach(), g, gen, self.gamma)
            for t, g, gen in zip(self.targets, gs, gens, strict=True)
        ]
        drops = global_topk_masks(scores, k, masks, largest=False)
        kept = [m & ~d for m, d in zip(masks, drops, strict=True)]
        if self.grow.name == "random":
            gscores = [
                random_scores(t.param, self.generator(step, 10_000 + i))
                for i, t in enumerate(self.targets)
            ]
        else:
            moms = [self.dense_momentum(t) for t in self.targets]
            if self.grow.name == "momentum":  # no momentum state yet (or none kept): zero
                moms = [
                    torch.zeros_like(t.param) if m is None else m
                    for t, m in zip(self.targets, moms, strict=True)
                ]
            gscores = [growth_scores(self.grow.name, g, m) for g, m in zip(gs, moms, strict=True)]
        grows = global_topk_masks(gscores, k, [~m for m in kept])
        new = 0
        for t, kp, gr in zip(self.targets, kept, grows, strict=True):
            fresh = gr & ~t.mask
            new += int(fresh.sum())
            self.set_mask(t, kp | gr, fresh if self.regrown_value == "kept" else gr)
        return k, k, new

    def target_counts(self) -> dict[str, int] | None:
        return None if self.scope == "global" else self._counts

    def global_target_count(self) -> int | None:
        return None if self.bernoulli else super().global_target_count()


_INFO = dict(dense_grad="update", sparse_execution=True)

register_method(
    "dst",
    description="generic DST: any prune criterion x growth criterion (Fantastic Weights defaults)",
    paper="Nowak et al., NeurIPS 2023 (Fantastic Weights)",
    **_INFO,
)(DynamicSparse)
register_method(
    "rigl",
    description="RigL: ERK, drop lowest |w|, grow largest |grad|, cosine drop to 75% of training",
    paper="Evci et al., ICML 2020",
    **_INFO,
)(
    preset(
        DynamicSparse,
        "rigl",
        prune="magnitude",
        grow="gradient",
        distribution="erk",
        update_interval=100,
        drop_fraction=0.3,
        drop_fraction_end=0.0,
        stop_fraction=0.75,
    )
)
register_method(
    "set",
    description="SET: ER, drop smallest positives/negatives closest to 0, random regrowth",
    paper="Mocanu et al., Nature Communications 2018",
    **_INFO,
)(
    preset(
        DynamicSparse,
        "set",
        prune="set",
        grow="random",
        distribution="er",
        update_interval=100,
        drop_fraction=0.3,
        drop_schedule="constant",
    )
)
register_method(
    "mest",
    description="MEST: drop lowest |w| + gamma|g|, random regrowth",
    paper="Yuan et al., NeurIPS 2021",
    **_INFO,
)(
    preset(
        DynamicSparse,
        "mest",
        prune="mest",
        grow="random",
        distribution="erk",
        update_interval=100,
        drop_fraction=0.3,
        drop_fraction_end=0.0,
    )
)
