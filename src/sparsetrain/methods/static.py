"""Static sparse training: a mask chosen once and kept for the whole run."""

from __future__ import annotations

from typing import Any

import torch

from sparsetrain.criteria import snip
from sparsetrain.distributions import DISTRIBUTIONS, allocate, allocate_densities
from sparsetrain.masking.targets import Target
from sparsetrain.masking.topk import global_topk_masks, random_mask
from sparsetrain.methods.base import SparsityMethod
from sparsetrain.methods.registry import register_method

INITS = ("random", "snip")


class Static(SparsityMethod):
    """A fixed sparse mask: random with uniform/ER/ERK layer densities, or SNIP at init.

    ``init="random"`` draws exactly the allocated number of weights per tensor (``bernoulli=True``
    draws each weight with its layer's density, as the official Fantastic Weights code does, so
    counts are exact only in expectation and no exactness check is made). ``init="snip"`` keeps
    the global top-k of |w·g| computed on the first training batch (the model is dense for that
    one forward/backward; SNIP's own single-batch scoring), then trains the fixed mask.

    References:
        Static ERK: Evci et al., "Rigging the Lottery", ICML 2020 (and the Fantastic Weights
        "static" baseline). SNIP: Lee et al., "SNIP: Single-shot Network Pruning based on
        Connection Sensitivity", ICLR 2019.

    Args:
        distribution: Layer densities for random init: uniform, er, erk or global.
        init: ``random`` or ``snip``.
        bernoulli: Bernoulli draw per weight instead of exact counts (random init only).
        **kwargs: Common options of :class:`SparsityMethod`.
    """

    name = "static"
    supports_sparse_execution = True

    def __init__(
        self,
        *,
        distribution: str = "erk",
        init: str = "random",
        bernoulli: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if distribution not in DISTRIBUTIONS:
            raise ValueError(
                f"unknown distribution {distribution!r}; valid: {', '.join(DISTRIBUTIONS)}"
            )
        if init not in INITS:
            raise ValueError(f"unknown init {init!r}; valid: {', '.join(INITS)}")
        self.distribution, self.init, self.bernoulli = distribution, init, bernoulli
        self._counts: dict[str, int] | None = None

    def _on_attach(self) -> None:
        shapes = {t.name: t.shape for t in self.targets}
        if self.init == "random":
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
                for i, t in enumerate(self.targets):
                    t.mask.copy_(random_mask(t.shape, self._counts[t.name], self.generator(0, i)))
        self.apply_masks()

    def init_masks_ready(self) -> bool:
        return self.init != "snip"

    def _global_random(self) -> None:
        scores = [
            torch.rand(t.shape, generator=self.generator(0, i)) for i, t in enumerate(self.targets)
        ]
        keep = self.global_target_count() or 0
        for t, m in zip(self.targets, global_topk_masks(scores, keep), strict=True):
            t.mask.copy_(m)

    def _before_step(self, step: int) -> None:
        if self.init == "snip" and step == 1:
            self.prune_snip(self.targets)
            self.init_weights()

    def prune_snip(self, targets: list[Target]) -> None:
        """Keep the global top-k of |w·g| (gradients of the current batch)."""
        scores = [
            snip(
                t.param.detach(),
                t.param.grad if t.param.grad is not None else torch.zeros_like(t.param),
            )
            for t in targets
        ]
        keep = self.global_target_count() or 0
        for t, m in zip(targets, global_topk_masks(scores, keep), strict=True):
            self.set_mask(t, m)

    def sparsity_at(self, step: int) -> float:
        return 0.0 if self.init == "snip" and step == 0 else self.sparsity

    def update_steps(self, total_steps: int) -> list[int]:
        return [1] if self.init == "snip" else []

    def is_update_step(self, step: int) -> bool:
        return self.init == "snip" and step == 1

    def needs_dense_grad(self, step: int) -> bool:
        return self.is_update_step(step)

    def target_counts(self) -> dict[str, int] | None:
        return self._counts

    def global_target_count(self) -> int | None:
        return None if self.bernoulli else super().global_target_count()


register_method(
    "static",
    description="fixed random mask (uniform/ER/ERK) or SNIP at init",
    paper="Evci et al. 2020 (static ERK); Lee et al. 2019 (SNIP)",
    dense_grad="update",
    sparse_execution=True,
)(Static)
