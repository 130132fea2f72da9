"""Base for methods whose forward pass uses a function of the weights (ST-3, OptG, SCL, STR, DNW).

Each target gets a ``torch.nn.utils.parametrize`` parametrization that calls
``method.effective_weight(index, W)``; the raw weight stays the same ``Parameter`` object (now
at ``<module>.parametrizations.weight.original``), so optimizer references remain valid. Masks,
scores and thresholds are held by the method (``method.state_dict()``), never registered in the
model, so ``model.parameters()`` still yields only the model's own tensors; methods with
trainable extras add them to the optimizer as their own parameter group at ``attach``.

To resume: build the model and optimizer, ``attach`` the method, then load the model, optimizer
and method state dicts (in any order). ``squash()`` bakes the effective weights into plain
``weight`` parameters (original names, no parametrization left); ``detach()`` restores the raw
weights.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize

from sparsetrain.masking.targets import Target
from sparsetrain.methods.base import SparsityMethod


class EffectiveWeight(nn.Module):
    """The parametrization: ``W ↦ method.effective_weight(index, W)``."""

    def __init__(self, method: ReparamMethod, index: int) -> None:
        super().__init__()
        self._method = [method]  # a list, so nn.Module does not register or deep-copy it as state
        self.index = index

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return self._method[0].effective_weight(self.index, weight)


class ReparamMethod(SparsityMethod):
    """A method with a forward-pass effective weight ``W_eff = f(W, mask, extras)``.

    Subclasses implement :meth:`effective_weight` (usually a custom autograd function carrying
    the method's straight-through estimator) and :meth:`init_masks`; they update masks in
    ``_after_step`` and keep pruned raw weights dense (``hard_mask = False``).
    """

    hard_mask = False

    def effective_weight(self, index: int, weight: torch.Tensor) -> torch.Tensor:
        """The weight the forward pass uses for target ``index`` (default: ``W ⊙ M``)."""
        return weight * self.targets[index].mask

    def init_masks(self) -> None:
        """Set the masks at attach time (default: keep everything)."""

    def _on_attach(self) -> None:
        self.init_masks()
        for i, t in enumerate(self.targets):
            parametrize.register_parametrization(t.module, t.param_name, EffectiveWeight(self, i))
            if self.raw_weight(t) is not t.param:
                raise RuntimeError(f"parametrization of {t.name} replaced the raw parameter")

    @staticmethod
    def raw_weight(t: Target) -> torch.Tensor:
        """The raw (trainable) weight of a parametrized target."""
        return getattr(t.module.parametrizations, t.param_name).original

    @torch.no_grad()
    def bake(self) -> None:
        """Write the current effective weights into the raw weights (the parametrization stays)."""
        for i, t in enumerate(self.targets):
            t.param.copy_(self.effective_weight(i, t.param))

    def _remove(self, *, leave_parametrized: bool) -> None:
        for t in self.targets:
            if parametrize.is_parametrized(t.module, t.param_name):
                parametrize.remove_parametrizations(
                    t.module, t.param_name, leave_parametrized=leave_parametrized
                )

    def _squash(self) -> None:
        self._remove(leave_parametrized=True)

    def _on_detach(self) -> None:
        self._remove(leave_parametrized=False)

    def add_param_group(self, params: list[torch.Tensor], **options: Any) -> None:
        """Add the method's own trainable tensors to the optimizer as one group (wd 0 default)."""
        if self.optimizer is None:
            raise ValueError(
                f"{self.name} trains its own tensors: attach(model, optimizer) needs an optimizer"
            )
        options.setdefault("weight_decay", 0.0)
        self.optimizer.add_param_group({"params": params, **options})
