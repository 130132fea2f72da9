"""The optimizer's parameter groups a method's recipe asks for, built before the optimizer.

A method never edits the user's optimizer. Where its recipe wants other hyper-parameters for
some parameters (ST-3: weight decay on Conv/Linear weights only, as its official
``configure_optimizers``), the user builds the optimizer from :func:`param_groups`, the idiom of
nanoGPT's ``configure_optimizers``::

    method = sparsetrain.create_method("st3", sparsity=0.9, total_steps=steps)
    opt = torch.optim.SGD(sparsetrain.param_groups(model, method, weight_decay=5e-4), lr=0.1)
    method.attach(model, opt)

An optimizer built any other way is used as given: every parameter gets the hyper-parameters of
its own group, and a method whose recipe differs says so once at ``attach``
(:class:`RecipeWarning`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize

from sparsetrain.masking.targets import SUPPORTED_MODULES, Target, select_targets
from sparsetrain.methods.base import SparsityMethod
from sparsetrain.methods.registry import get_method_info, method_class

DECAY_SCOPES = ("all", "weights")
"""``"all"``: weight decay on every parameter (the optimizer's own rule); ``"weights"``: only
on Conv/Linear weights and the method's targets (biases, normalisation and other parameters get
none)."""


class RecipeWarning(UserWarning):
    """Emitted at ``attach`` when the optimizer's groups differ from the method's recipe."""


def param_groups(
    model: nn.Module,
    method: str | SparsityMethod = "dense",
    *,
    weight_decay: float = 0.0,
    include: Sequence[str] | None = None,
    **group_options: Any,
) -> list[dict[str, Any]]:
    """Parameter groups to build the optimizer with, following ``method``'s recipe.

    Args:
        model: The model to train (every parameter with ``requires_grad``).
        method: A registry name (its default options) or a method object (its options, e.g.
            ST-3's ``weight_decay_scope`` and ``include``/``exclude``).
        weight_decay: The weight decay of the decayed group.
        include: With a registry name: the ``include`` option the method will be built with
            (its targets are decayed); a method object has its own.
        **group_options: Other hyper-parameters given to every group (e.g. ``lr``).

    Returns:
        One group (every parameter, ``weight_decay``), or for a ``"weights"`` decay scope a
        decayed group (Conv/Linear weights and the method's targets) and a group with
        ``weight_decay=0`` (the rest); empty groups are left out.

    >>> m = nn.Sequential(nn.Linear(3, 2), nn.LayerNorm(2))
    >>> [(len(g["params"]), g["weight_decay"]) for g in param_groups(m, "st3", weight_decay=0.1)]
    [(1, 0.1), (3, 0.0)]
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"param_groups() needs an nn.Module, got {type(model).__name__}")
    params = [p for p in model.parameters() if p.requires_grad]
    if decay_scope(method) == "all":
        return [{"params": params, "weight_decay": weight_decay, **group_options}]
    if include is not None and isinstance(method, SparsityMethod):
        raise TypeError("include= given with a method object, which has its own; pass one")
    if isinstance(method, str):
        targets = select_targets(model, include=include)
    else:
        targets = method.select_targets(model)
    decayed = _decayed_ids(model, targets)
    groups = [
        {"params": [p for p in params if id(p) in decayed], "weight_decay": weight_decay},
        {"params": [p for p in params if id(p) not in decayed], "weight_decay": 0.0},
    ]
    return [g | group_options for g in groups if g["params"]]


def decay_scope(method: str | SparsityMethod) -> str:
    """The weight-decay scope of a method object, or of a registered method's defaults."""
    if isinstance(method, SparsityMethod):
        return method.decay_scope
    if not isinstance(method, str):
        raise TypeError(
            f"method must be a registry name or a SparsityMethod, got {type(method).__name__}"
        )
    cls = method_class(get_method_info(method).factory)
    return SparsityMethod.decay_scope if cls is None else cls.decay_scope


def check_recipe(
    method: SparsityMethod, model: nn.Module, optimizer: torch.optim.Optimizer
) -> list[str]:
    """Names of ``model``'s parameters the optimizer decays that ``method``'s recipe does not.

    Empty for a method whose decay scope is ``"all"``.
    """
    if method.decay_scope == "all":
        return []
    decayed = _decayed_ids(model, method.targets)
    decay = {id(p): g.get("weight_decay", 0.0) for g in optimizer.param_groups for p in g["params"]}
    return [n for n, p in model.named_parameters() if id(p) not in decayed and decay.get(id(p))]


def _decayed_ids(model: nn.Module, targets: list[Target]) -> set[int]:
    """Ids of the Conv/Linear weights of ``model`` and of the ``targets``' parameters."""
    ids = {id(t.param) for t in targets}
    for module in model.modules():
        if isinstance(module, SUPPORTED_MODULES):
            w = (
                module.parametrizations.weight.original
                if parametrize.is_parametrized(module, "weight")
                else module.weight
            )
            ids.add(id(w))
    return ids
