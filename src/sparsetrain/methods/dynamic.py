"""Dynamic sparse training: constant density, periodic prune-and-regrow.

One :class:`DynamicSparse` covers every pruning criterion × growth criterion of the Fantastic
Weights study (Nowak et al., NeurIPS 2023); ``set``, ``rigl``, ``mest`` and ``dst`` are presets
of it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from sparsetrain import distributed as _dist
from sparsetrain.criteria import (
    drop_and_grow,
    get_growth_criterion,
    get_prune_criterion,
    random_scores,
)
from sparsetrain.distributions import DISTRIBUTIONS, allocate, allocate_densities
from sparsetrain.masking.topk import global_topk_masks
from sparsetrain.methods import structured
from sparsetrain.methods._drop_grow import (
    apply_change,
    check_states,
    criterion_options,
    random_start,
    sites,
)
from sparsetrain.methods.base import SparsityMethod
from sparsetrain.methods.options import checks, integer, number, one_of, option_error
from sparsetrain.methods.registry import preset, register_method
from sparsetrain.schedules import (
    ConstantRamp,
    Schedule,
    UpdateSchedule,
    cosine_decay,
    last_update_step,
)

ORDERS = ("auto", "pre_step", "post_step")
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
    after the optimizer step (``"post_step"``, on post-step weights and this batch's gradient);
    gradient-based criteria update before it (``"pre_step"``, on pre-step weights and
    gradients). Each criterion's choice is its ``default_order`` in
    :mod:`sparsetrain.criteria` (the code's ``opt_order="before"`` is ``"post_step"`` here, its
    ``"after"`` is ``"pre_step"``: it names where the *optimizer step* runs).

    The update itself is :func:`sparsetrain.criteria.drop_and_grow`, shared with GraNet's
    regrowth and static pruning at initialisation: any registered criterion works here.

    ``structure``: with N:M the start is N random weights per group (every layer at N/M,
    ``distribution`` does not apply) and every update drops as without structure, then each
    group regrows as many as it lost by the growth score within the group (random for SET and
    MEST, |g| for RigL), so every group holds exactly N after each update (our rule, in the
    spirit of JaxPruner's N:M sparsity type). With blocks, whole blocks are dropped and grown,
    ranked by the summed scores of their entries (score criteria only: SET's selection rule
    cannot rank blocks). See :mod:`~sparsetrain.methods.structured`.

    References:
        Nowak et al., "Fantastic Weights and How to Find Them: Where to Prune in Dynamic Sparse
        Training", NeurIPS 2023; Evci et al., "Rigging the Lottery", ICML 2020; Mocanu et al.,
        "Scalable training of artificial neural networks with adaptive sparse connectivity",
        Nature Communications 2018; Yuan et al., "MEST", NeurIPS 2021.

    Args:
        prune: Pruning criterion (see ``sparsetrain.criteria.PRUNE_CRITERIA``).
        grow: Growth criterion (``random``, ``gradient``, ``momentum``; see
            ``sparsetrain.criteria.GROWTH_CRITERIA``).
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
        order: When the update runs: ``pre_step`` (between ``loss.backward()`` and the optimizer
            step), ``post_step`` (after the optimizer step) or ``auto`` (the prune criterion's
            ``default_order``, as Fantastic Weights does).
        scope: ``layer`` (per-tensor counts kept) or ``global`` (one ranking; counts move).
        bernoulli: Official FW random draws (init and random growth exact only in expectation;
            the growth in ``layer`` scope).
        gamma: γ of the MEST and GradStep criteria (shorthand for ``prune_options``).
        prune_options: Hyper-parameters of the prune criterion (a dict such as ``{"gamma": 0.5}``).
        grow_options: Hyper-parameters of the growth criterion.
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
    fsdp2_note = None  # sharded selections; random draws kept per rank's rows
    supported_structures = ("unstructured", "nm", "block")
    defers_updates = True
    supports_sparse_execution = True
    CHECKS = checks(
        distribution=one_of(DISTRIBUTIONS),
        update_interval=integer(1),
        drop_fraction=number(0, 1, low_open=True),
        drop_fraction_end=number(0, 1),
        drop_schedule=one_of(DROP_SCHEDULES),
        begin_step=integer(0),
        end_step=integer(0, optional=True),
        stop_fraction=number(0, 1, low_open=True),
        scope=one_of(SCOPES),
        inactive_grads=one_of(INACTIVE_GRADS),
        regrown_value=one_of(REGROWN_VALUES),
        order=one_of(ORDERS),
    )

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
        prune_options: Mapping[str, Any] | None = None,
        grow_options: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.prune = get_prune_criterion(prune)
        self.grow = get_growth_criterion(grow)
        if not drop_fraction_end <= drop_fraction:
            raise option_error(
                self.name,
                f"drop_fraction_end must be <= drop_fraction ({drop_fraction}), got "
                f"{drop_fraction_end}",
            )
        if scope == "global" and self.prune.selection:
            raise option_error(
                self.name, f"prune criterion {prune!r} is per-layer only; use scope='layer'"
            )
        if end_step is None and self.total_steps is None:
            raise option_error(self.name, "needs total_steps (or end_step) for its drop schedule")
        if self.structure.structured and bernoulli:
            raise option_error(self.name, "bernoulli=True draws each weight alone; no structure")
        if self.structure.kind == "block" and self.prune.selection:
            raise option_error(
                self.name,
                f"prune criterion {prune!r} is a selection rule and cannot rank blocks; use a "
                "score criterion such as 'magnitude' with a block structure",
            )
        if end_step is not None:
            end = end_step if self.total_steps is None else min(end_step, self.total_steps - 1)
        else:
            total = self.total_steps or 0
            end = min(int(stop_fraction * total), last_update_step(total, update_interval))
        self.cadence = UpdateSchedule(update_interval, begin_step, max(begin_step, end))
        self.schedule = Schedule(ConstantRamp(self.sparsity), (self.cadence,))
        self.distribution, self.drop_schedule, self.scope = distribution, drop_schedule, scope
        self.drop_fraction, self.drop_fraction_end = drop_fraction, drop_fraction_end
        self.order = self.prune.default_order if order == "auto" else order
        self.bernoulli, self.gamma = bernoulli, gamma
        given = (prune_options or {}).get("gamma", gamma)
        if gamma != 1.0 and given != gamma:
            raise option_error(
                self.name, f"gamma={gamma!r} and prune_options gamma={given!r} disagree"
            )
        self.prune_options = criterion_options(self.prune, prune_options, gamma=gamma)
        self.grow_options = criterion_options(self.grow, grow_options)
        self.inactive_grads, self.regrown_value = inactive_grads, regrown_value
        self._dense_inactive = inactive_grads == "dense"
        self.needs_grad = self.prune.needs_grad or self.grow.needs_grad
        self._counts: dict[str, int] | None = None

    # ------------------------------------------------------------------ init

    def _on_attach(self) -> None:
        shapes = {t.name: t.shape for t in self.targets}
        if self.structure.structured:
            masks, counts = structured.random_init(
                self.structure,
                self.targets,
                self.generator,
                self.sparsity,
                self.distribution,
                self.blocks(),
            )
            self._counts = counts
            for t, m in zip(self.targets, masks, strict=True):
                t.mask.copy_(m)
        elif self.bernoulli:
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
            random_start(self, self._counts)
        self.apply_masks()

    # ------------------------------------------------------------------ schedule

    def drop_fraction_at(self, step: int) -> float:
        """ζ_t: the fraction of active weights replaced at an update at ``step``."""
        if self.drop_schedule == "constant":
            return self.drop_fraction
        span = (self.cadence.end or step) - self.cadence.start
        return cosine_decay(
            step - self.cadence.start,
            initial=self.drop_fraction,
            final=self.drop_fraction_end,
            total=span,
        )

    def needs_dense_grad(self, step: int) -> bool:
        return self.needs_grad and self.schedule.is_update(step)

    # ------------------------------------------------------------------ hooks

    def _before_step(self, step: int) -> None:
        if not self.schedule.is_update(step):
            return
        if self.order == "pre_step":
            self.update_topology(step, {t.name: t.param.grad for t in self.targets})
        elif self.needs_grad:  # keep this batch's dense gradient for the post-step update
            self._grads = {
                t.name: t.param.grad.detach().clone()
                for t in self.targets
                if t.param.grad is not None
            }

    def _after_step(self, step: int) -> None:
        if self.order == "post_step" and self.schedule.is_update(step):
            self.update_topology(step, self._grads or {})

    # ------------------------------------------------------------------ the update

    @torch.no_grad()
    def update_topology(self, step: int, grads: dict[str, torch.Tensor | None]) -> None:
        """Drop and regrow on every target (or globally); record churn in ``history``."""
        zeta = self.drop_fraction_at(step)
        check_states(self)  # an unmaskable state layout fails before any change
        stream = 10_000 if self.scope == "global" else 0  # global: growth draws its own stream
        keep = self.regrown_value == "kept"
        changes = drop_and_grow(  # each drops ⌈ζ·n⌉ of its n active entries (layer or global)
            sites(self, step, grads, self.prune, self.grow, grow_stream=stream),
            self.prune,
            self.grow,
            scope=self.scope,
            fraction=zeta,
            prune_options=self.prune_options,
            grow_options=self.grow_options,
            bernoulli=self.bernoulli,
            commit=lambda i, c: apply_change(self, self.targets[i], c, keep_regrown=keep),
            structure=self.structure,
            dims=[structured.grouped_dim(t) for t in self.targets],
        )
        pruned, grown, new = _dist.sum_over_shards(  # FSDP2: each rank counted its rows
            self.model,
            [
                sum(c.drop.numel() for c in changes),
                sum(c.grow.numel() for c in changes),
                sum(c.fresh.numel() for c in changes),
            ],
        )
        active = sum(c.active for c in changes)
        self.history.append(
            {
                "step": step,
                "drop_fraction": round(zeta, 6),
                "pruned": pruned,
                "grown": grown,
                "churn": round(new / active, 6) if active else 0.0,
            }
        )

    def target_counts(self) -> dict[str, int] | None:
        per_tensor = self.scope == "layer" or self.structure.kind == "nm"
        return self._counts if per_tensor else None

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
