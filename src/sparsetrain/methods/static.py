"""Static sparse training: a mask chosen once and kept for the whole run."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from sparsetrain.criteria import PRUNE_CRITERIA, drop_and_grow, get_prune_criterion
from sparsetrain.distributions import DISTRIBUTIONS, allocate, allocate_densities
from sparsetrain.masking.sharded import from_full
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
from sparsetrain.methods.options import checks, one_of, option_error
from sparsetrain.methods.registry import register_method
from sparsetrain.schedules import Schedule, StepRamp, UpdateSchedule

INITS = ("random", "snip")
"""The documented values of ``init``; any pruning criterion of ``sparsetrain.criteria`` works."""


class Static(SparsityMethod):
    """A fixed sparse mask: random with uniform/ER/ERK layer densities, or SNIP at init.

    ``init="random"`` draws exactly the allocated number of weights per tensor (``bernoulli=True``
    draws each weight with its layer's density, as the official Fantastic Weights code does, so
    counts are exact only in expectation and no exactness check is made). ``init="snip"`` keeps
    the global top-k of |w·g| computed on the first training batch (the model is dense for that
    one forward/backward; SNIP's own single-batch scoring), then trains the fixed mask. Any other
    pruning criterion works the same way (``init="magnitude"``, ``"taylor"``, a registered one:
    :func:`sparsetrain.criteria.drop_and_grow` with nothing grown), before the first optimizer
    step.

    ``structure``: a random start keeps N random weights of every group (N:M) or random whole
    blocks, allocated by ``distribution`` in blocks; a criterion keeps the N highest scores of
    every group, or the blocks of highest summed score over all tensors (the ranking stays
    global), see :mod:`~sparsetrain.methods.structured`.

    References:
        Static ERK: Evci et al., "Rigging the Lottery", ICML 2020 (and the Fantastic Weights
        "static" baseline). SNIP: Lee et al., "SNIP: Single-shot Network Pruning based on
        Connection Sensitivity", ICLR 2019.

    Args:
        distribution: Layer densities for random init: uniform, er, erk or global.
        init: ``random``, ``snip`` or the name of another pruning criterion (see
            ``sparsetrain.criteria.PRUNE_CRITERIA``; score criteria only, the ranking is global).
        bernoulli: Bernoulli draw per weight instead of exact counts (random init only).
        prune_options: Hyper-parameters of the ``init`` criterion.
        **kwargs: Common options of :class:`SparsityMethod`.
    """

    name = "static"
    fsdp2_note = None  # sharded selections (SNIP & co); random masks drawn whole, rows kept
    supported_structures = ("unstructured", "nm", "block")
    supports_sparse_execution = True
    CHECKS = checks(distribution=one_of(DISTRIBUTIONS))

    def __init__(
        self,
        *,
        distribution: str = "erk",
        init: str = "random",
        bernoulli: bool = False,
        prune_options: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        scored = [n for n, c in PRUNE_CRITERIA.items() if not c.selection and n != "random"]
        one_of(["random", *scored])(self.name, "init", init)  # criteria register at run time
        self.distribution, self.init, self.bernoulli = distribution, init, bernoulli
        if bernoulli and self.structure.structured:
            raise option_error(self.name, "bernoulli=True draws each weight alone; no structure")
        self.criterion = None if init == "random" else get_prune_criterion(init)
        self.prune_options = (
            {} if self.criterion is None else criterion_options(self.criterion, prune_options)
        )
        self._counts: dict[str, int] | None = None
        if self.criterion is not None:  # dense until the one update, pruning at the first step
            at_first = UpdateSchedule(None, at=(1,))
            self.schedule = Schedule(StepRamp(self.sparsity, 1), (at_first,))

    def _on_attach(self) -> None:
        shapes = {t.name: t.shape for t in self.targets}
        if self.init == "random" and self.structure.structured:
            masks, self._counts = structured.random_init(
                self.structure,
                self.targets,
                self.generator,
                self.sparsity,
                self.distribution,
                self.blocks(),
            )
            for t, m in zip(self.targets, masks, strict=True):
                t.mask.copy_(m)
        elif self.init == "random":
            if self.bernoulli:
                dens = allocate_densities(
                    shapes, self.sparsity, self.distribution, blocks=self.blocks()
                )
                for i, t in enumerate(self.targets):
                    draw = torch.rand(t.shape, generator=self.generator(0, i))
                    t.mask.copy_(draw < dens[t.name])
            elif self.distribution == "global":
                self._global_random()
            else:
                self._counts = allocate(
                    shapes, self.sparsity, self.distribution, blocks=self.blocks()
                )
                random_start(self, self._counts)
        self.apply_masks()

    def init_masks_ready(self) -> bool:
        return self.criterion is None

    def _global_random(self) -> None:
        scores = [  # FSDP2: the same draw, this rank's rows
            from_full(torch.rand(t.shape, generator=self.generator(0, i)), t.mask)
            for i, t in enumerate(self.targets)
        ]
        keep = self.global_target_count() or 0
        for t, m in zip(self.targets, global_topk_masks(scores, keep), strict=True):
            t.mask.copy_(m)

    def _before_step(self, step: int) -> None:
        if self.is_update_step(step):  # SNIP & co: the first step (a random mask has none)
            self.prune_at_init(step)
            self.init_weights()

    @torch.no_grad()
    def prune_at_init(self, step: int = 1) -> None:
        """Keep the global top-k by the ``init`` criterion (gradients of the current batch)."""
        if self.criterion is None:
            raise ValueError("init='random' sets its mask at attach; nothing to prune")
        check_states(self)
        grads = {t.name: t.param.grad for t in self.targets}
        keep = self.global_target_count() or 0
        if self.structure.structured:
            self._prune_structured(step, grads, keep)
            return
        drop_and_grow(
            sites(self, step, grads, self.criterion, None),
            self.criterion,
            None,
            sum(t.nnz for t in self.targets) - keep,
            "global",
            prune_options=self.prune_options,
            keep_top=True,  # the top-k by score, as SNIP states it
            commit=lambda i, c: apply_change(self, self.targets[i], c, keep_regrown=False),
        )

    def _prune_structured(self, step: int, grads: dict, keep: int) -> None:
        scores = [
            self.criterion.scores(  # type: ignore[union-attr]
                s.weights,
                s.grads,
                momentum=s.momentum,
                generator=s.prune_generator,
                **self.prune_options,
            )
            for s in sites(self, step, grads, self.criterion, None)  # type: ignore[arg-type]
        ]
        masks = structured.keep_masks(
            self.structure, self.targets, scores, density=1.0 - self.sparsity, counts=keep
        )
        for t, m in zip(self.targets, masks, strict=True):
            self.set_mask(t, m)
        if self.structure.kind == "nm":
            self._counts = {t.name: int(t.nnz) for t in self.targets}

    def needs_dense_grad(self, step: int) -> bool:
        return self.is_update_step(step)

    def target_counts(self) -> dict[str, int] | None:
        return self._counts

    def global_target_count(self) -> int | None:
        return None if self.bernoulli else super().global_target_count()


register_method(
    "static",
    description="fixed random mask (uniform/ER/ERK), or pruned at init by SNIP or any criterion",
    paper="Evci et al. 2020 (static ERK); Lee et al. 2019 (SNIP)",
    dense_grad="update",
    sparse_execution=True,
)(Static)
