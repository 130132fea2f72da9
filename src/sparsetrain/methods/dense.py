"""The dense baseline: every target keeps every weight, at no cost per step."""

from __future__ import annotations

from typing import Any

from sparsetrain.methods.base import SparsityMethod
from sparsetrain.methods.registry import register_method


class Dense(SparsityMethod):
    """No sparsity: a no-op method so dense runs go through the same loop and reports.

    References:
        The dense baseline of every sparse-training paper.
    """

    name = "dense"
    hard_mask = False
    fsdp2_note = None  # nothing to shard but masks of ones

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("sparsity", 0.0)
        super().__init__(**kwargs)
        if self.sparsity != 0.0:
            raise ValueError(f"the dense method has sparsity 0, got sparsity={self.sparsity}")

    def target_counts(self) -> dict[str, int]:
        return {t.name: t.numel for t in self.targets}


register_method("dense", description="no sparsity (baseline)", paper="-")(Dense)
