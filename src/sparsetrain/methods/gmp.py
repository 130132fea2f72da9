"""Gradual magnitude pruning (Zhu & Gupta): dense start, cubic ramp, pruned weights stay zero."""

from __future__ import annotations

from typing import Any

from sparsetrain.criteria import magnitude
from sparsetrain.distributions import DISTRIBUTIONS, allocate
from sparsetrain.masking.sharded import count
from sparsetrain.masking.targets import Target
from sparsetrain.masking.topk import global_topk_masks, select_bottomk
from sparsetrain.methods import structured
from sparsetrain.methods.base import SparsityMethod
from sparsetrain.methods.options import checks, integer, number, one_of, option_error
from sparsetrain.methods.registry import register_method
from sparsetrain.schedules import PolynomialRamp, Schedule, UpdateSchedule, polynomial

SCOPES = ("layer", "global")


class GMP(SparsityMethod):
    """Gradual magnitude pruning.

    Every ``update_interval`` steps in ``(begin_step, end_step]`` (and at ``end_step``) prune the
    lowest-|w| active weights so that sparsity follows
    s_t = s_f + (s_i − s_f)(1 − (t − t₀)/(t₁ − t₀))³. ``scope="layer"`` (the original) prunes each
    tensor to its own allocation (``distribution``); ``scope="global"`` ranks all tensors together.
    Pruned weights are frozen at zero (hard mask). With ``execution="sparse"`` a Linear target
    trains masked-dense until a pruning step leaves it at density ≤ ``sparse_from_density``
    (0.3), then on sparse kernels (see :mod:`~sparsetrain.methods._execution`).

    With ``structure="N:M"`` every group keeps its N_t largest |w| among the live ones, N_t
    decaying from M to N on the same cubic ramp (Kao et al. 2022's decaying mask; every layer at
    N/M, ``distribution`` and ``scope`` do not apply); with a block structure the blocks of
    largest summed |w| are kept, per layer or globally, counts on the ramp in whole blocks
    (:mod:`~sparsetrain.methods.structured`).

    Under FSDP2 (attach after ``fully_shard``) masks are sharded as their parameters and every
    pruning step selects on the shards, equal to one process (unstructured only; see
    :mod:`sparsetrain.distributed`).

    References:
        Zhu & Gupta, "To prune, or not to prune: exploring the efficacy of pruning for model
        compression", arXiv 1710.01878, 2017.

    Args:
        initial_sparsity: s_i at ``begin_step``.
        begin_step: t₀, in optimizer steps.
        end_step: t₁; default ``0.75 * total_steps``.
        update_interval: Steps between pruning events (formerly ``interval``).
        scope: ``layer`` or ``global``.
        distribution: Per-layer final allocation for ``scope="layer"``.
        **kwargs: Common options of :class:`SparsityMethod`.
    """

    name = "gmp"
    fsdp2_note = None  # every decision is a top-k of |w|: sharded selections serve it
    supported_structures = ("unstructured", "nm", "block")
    defers_updates = True
    supports_sparse_execution = True
    sparse_from_density = 0.3
    CHECKS = checks(
        initial_sparsity=number(0, 1, high_open=True),
        begin_step=integer(0),
        end_step=integer(0, optional=True),
        update_interval=integer(1),
        scope=one_of(SCOPES),
        distribution=one_of(DISTRIBUTIONS),
    )

    def __init__(
        self,
        *,
        initial_sparsity: float = 0.0,
        begin_step: int = 0,
        end_step: int | None = None,
        update_interval: int = 100,
        scope: str = "layer",
        distribution: str = "uniform",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if not initial_sparsity <= self.sparsity:
            raise option_error(
                self.name,
                f"initial_sparsity must be <= sparsity ({self.sparsity}), got {initial_sparsity}",
            )
        if end_step is None and self.total_steps is None:
            raise option_error(
                self.name,
                "needs total_steps (optimizer steps of the run, e.g. "
                "len(loader) * epochs) or end_step for its pruning schedule",
            )
        end = end_step if end_step is not None else max(1, int(0.75 * (self.total_steps or 0)))
        # pruning every update_interval steps in (begin_step, end], and at end_step itself
        self.pruning = UpdateSchedule(update_interval, begin_step, end, at=(end,))
        ramp = PolynomialRamp(initial_sparsity, self.sparsity, begin_step, end)
        self.schedule = Schedule(ramp, (self.pruning,))
        self.initial_sparsity, self.scope, self.distribution = initial_sparsity, scope, distribution
        self._final: dict[str, int] = {}

    @property
    def end_step(self) -> int:
        return self.pruning.end or 0

    def _on_attach(self) -> None:
        shapes = {t.name: t.shape for t in self.targets}
        final = allocate(shapes, self.sparsity, self.distribution, blocks=self.blocks())
        self._final = {
            t.name: structured.target_count(self.structure, t, final[t.name]) for t in self.targets
        }
        if self.initial_sparsity > 0:
            self._prune_to(0)
        self.apply_masks()

    def _keep_count(self, t: Target, step: int) -> int:
        if step >= self.end_step:
            return self._final[t.name]
        final_s = 1.0 - self._final[t.name] / t.numel
        s = polynomial(
            step,
            initial=self.initial_sparsity,
            final=final_s,
            start=self.pruning.start,
            end=self.end_step,
        )
        return round((1.0 - s) * t.numel)

    def _after_step(self, step: int) -> None:
        if self.is_update_step(step):
            self._update(step)
            self.switch_shrunk_layers(step)  # sparse execution: layers pruned far enough

    def _update(self, step: int) -> None:
        """The topology update ending step ``step`` (GMP: prune to the schedule)."""
        if self.pruning.is_update(step):
            self._prune_to(step)

    def _prune_to(self, step: int) -> None:
        pruned = 0
        if self.structure.structured:
            pruned = self._prune_structured(step)
        elif self.scope == "global":
            keep = round((1.0 - self.sparsity_at(step)) * sum(t.numel for t in self.targets))
            scores = [magnitude(t.param.detach()) for t in self.targets]
            masks = global_topk_masks(scores, keep, [t.mask for t in self.targets])
            for t, m in zip(self.targets, masks, strict=True):
                pruned += t.nnz - count(m)
                self.set_mask(t, m)
        else:
            for t in self.targets:
                nnz = t.nnz
                k = max(nnz - self._keep_count(t, step), 0)
                drop = select_bottomk(magnitude(t.param.detach()), k, t.mask)
                self.set_mask(t, t.mask & ~drop)
                pruned += k
        self.history.append(
            {"step": step, "sparsity": round(self.sparsity_at(step), 6), "pruned": pruned}
        )

    def _prune_structured(self, step: int) -> int:
        scores = [magnitude(t.param.detach()) for t in self.targets]
        live = [t.mask for t in self.targets]
        if self.structure.kind == "nm":
            density = 1.0 - self.sparsity_at(step)
            masks = structured.keep_masks(
                self.structure, self.targets, scores, density=density, candidates=live
            )
        elif self.scope == "global":
            total = structured.global_count(self.structure, self.targets, self.sparsity_at(step))
            masks = structured.keep_masks(
                self.structure, self.targets, scores, counts=total, candidates=live
            )
        else:
            counts = [self._keep_count(t, step) for t in self.targets]
            masks = structured.keep_masks(
                self.structure, self.targets, scores, counts=counts, candidates=live
            )
        pruned = 0
        for t, m in zip(self.targets, masks, strict=True):
            pruned += t.nnz - int(m.sum())
            self.set_mask(t, m)
        return pruned

    def target_counts(self) -> dict[str, int] | None:
        if self.scope == "layer" or self.structure.kind == "nm":
            return dict(self._final)
        return None


register_method(
    "gmp",
    description="gradual magnitude pruning, cubic ramp (Zhu & Gupta)",
    paper="Zhu & Gupta 2017, arXiv 1710.01878",
    sparse_execution=True,
)(GMP)
