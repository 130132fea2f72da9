"""Choosing which tensors of a model are sparse.

By default every ``weight`` of ``Linear`` and ``Conv1d/2d/3d`` modules is a target, the first and
last layers included (as in the official OptG, ST-3 and Fantastic Weights code). Biases and
normalisation parameters are never masked. ``include``/``exclude`` take shell-style globs over
fully qualified parameter names; ``Embedding`` weights are targets only when an ``include`` glob
names them. Tied weights (one ``Parameter`` reachable under two names) are masked once, under the
first name.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

SUPPORTED_MODULES: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
"""Module types whose ``weight`` is a target by default."""

OPT_IN_MODULES: tuple[type[nn.Module], ...] = (nn.Embedding,)
"""Module types whose ``weight`` is a target only when an ``include`` glob names it."""


@dataclass(eq=False)
class Target:
    """One sparse tensor: where it sits in the model and its mask.

    Attributes:
        name: Fully qualified parameter name, e.g. ``"layer1.0.conv1.weight"``.
        module: The module owning the parameter.
        param_name: Attribute name on ``module`` (``"weight"``).
        param: The trainable ``Parameter`` (the raw weight, also under a parametrization).
        mask: ``bool`` tensor of ``param``'s shape; ``True`` marks an active weight.
    """

    name: str
    module: nn.Module
    param_name: str
    param: nn.Parameter
    mask: torch.Tensor = field(repr=False)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.param.shape)

    @property
    def numel(self) -> int:
        return self.param.numel()

    @property
    def nnz(self) -> int:
        """Number of active (unmasked) entries."""
        return int(self.mask.sum())


def _matches(name: str, patterns: Sequence[str] | None) -> bool:
    return bool(patterns) and any(fnmatch.fnmatchcase(name, p) for p in patterns or ())


def select_targets(
    model: nn.Module,
    *,
    include: Sequence[str] | None = None,
    exclude: Sequence[str] | None = None,
    dense_first: bool = False,
    dense_last: bool = False,
) -> list[Target]:
    """Select the tensors of ``model`` to sparsify, in module registration order.

    Args:
        model: Any ``nn.Module``.
        include: Globs over fully qualified parameter names. When given, only matching weights
            of supported modules (and opt-in ``Embedding`` weights) are targets.
        exclude: Globs of parameter names never to sparsify.
        dense_first: Keep the first target layer dense (not masked).
        dense_last: Keep the last target layer dense (not masked).

    Returns:
        The targets, each with an all-``True`` mask.

    Raises:
        TypeError: ``include`` names a parameter of an unsupported module type.
        ValueError: Nothing matched, or a glob matched nothing.
    """
    if isinstance(include, str) or isinstance(exclude, str):
        raise TypeError("include/exclude must be lists of glob patterns, not a single string")
    seen: set[int] = set()
    found: list[Target] = []
    matched_include: set[str] = set()
    for mod_name, module in model.named_modules():
        for p_name, param in module.named_parameters(recurse=False):
            full = f"{mod_name}.{p_name}" if mod_name else p_name
            if id(param) in seen:
                continue  # tied weight: masked once, under its first name
            wanted = _is_default_target(module, p_name, param)
            if include:
                hit = [p for p in include if fnmatch.fnmatchcase(full, p)]
                if not hit:
                    continue
                matched_include.update(hit)
                if param.dim() < 2:
                    continue  # biases and normalisation parameters are never masked
                supported = isinstance(module, SUPPORTED_MODULES + OPT_IN_MODULES)
                if not supported and not _matches(full, exclude):
                    kinds = ", ".join(t.__name__ for t in SUPPORTED_MODULES + OPT_IN_MODULES)
                    raise TypeError(
                        f"include pattern matched {full!r} of unsupported module type "
                        f"{type(module).__name__}; supported kinds: {kinds}. "
                        f"Exclude it with exclude=[{full!r}]"
                    )
                if p_name not in ("weight", "original"):
                    continue
                wanted = True
            if not wanted or _matches(full, exclude):
                continue
            seen.add(id(param))
            mask = torch.ones(param.shape, dtype=torch.bool, device=param.device)  # contiguous
            found.append(Target(full, module, p_name, param, mask))
    if include:
        unused = [p for p in include if p not in matched_include]
        if unused:
            raise ValueError(f"include pattern(s) {unused} matched no parameter of the model")
    if dense_first and found:
        found = found[1:]
    if dense_last and found:
        found = found[:-1]
    if not found:
        kinds = ", ".join(t.__name__ for t in SUPPORTED_MODULES)
        raise ValueError(
            f"no prunable weights found in {type(model).__name__} (after include={include}, "
            f"exclude={exclude}, dense_first={dense_first}, dense_last={dense_last}); "
            f"sparsetrain masks the weights of: {kinds}"
        )
    return found


def _is_default_target(module: nn.Module, p_name: str, param: nn.Parameter) -> bool:
    return isinstance(module, SUPPORTED_MODULES) and p_name == "weight" and param.dim() >= 2
