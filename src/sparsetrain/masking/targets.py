"""Choosing which tensors of a model are sparse.

What is a target
----------------
By default every weight matrix of a layer that multiplies its input by it is a target, the first
and last layers included (as in the official OptG, ST-3 and Fantastic Weights code):

- ``weight`` of ``Linear`` (and subclasses such as attention's ``out_proj``), ``Conv1d/2d/3d``
  and ``ConvTranspose1d/2d/3d``;
- ``in_proj_weight`` of ``MultiheadAttention`` (or ``q_proj_weight``/``k_proj_weight``/
  ``v_proj_weight`` when key and value sizes differ);
- ``weight_ih_l*``, ``weight_hh_l*`` (and LSTM ``weight_hr_l*``) of ``RNN``, ``LSTM``, ``GRU``.

``Embedding``/``EmbeddingBag`` weights are targets only when an ``include`` pattern names them.
Any other parameter of >= 2 dimensions (a learned positional table, a ``Bilinear`` weight, a
custom module's matrix) is a target when an ``include`` pattern names it. Never a target:
parameters of < 2 dimensions (biases, normalisation parameters), frozen parameters
(``requires_grad=False``: nothing trains them, so no method could regrow or move them; they are
left dense with a warning when they would otherwise be targets), and anything matched by
``exclude``.

Patterns
--------
``include``/``exclude`` entries are shell-style globs over fully qualified parameter names
(``"encoder.*.in_proj_weight"``), or ``"type:<Class>"`` to select the parameters held directly by
modules of that class or a subclass of it (``"type:MultiheadAttention"``, ``"type:Linear"``,
``"type:Conv*"``; the class name is itself a glob). With ``include``, exactly the >= 2-D
parameters it matches are targets.

Tied and shared tensors
-----------------------
A ``Parameter`` reachable under several names (an embedding tied to the output head, or one
layer registered twice) is one target, named by its first name in registration order; its other
names are ``Target.aliases``. It is a target only if no name of it is excluded and, when one of
its names belongs to an ``Embedding``, that name is included: a head tied to an embedding stays
dense (with a warning) unless the embedding is included, so embeddings are never masked unless
asked for.

``Target.blocks`` is the number of equal matrices stacked along dim 0 in one tensor: 3 for
``in_proj_weight`` (query, key, value) and GRU weights, 4 for LSTM weights, 1 otherwise; the ER
and ERK allocations use it (see :mod:`sparsetrain.distributions`).
"""

from __future__ import annotations

import fnmatch
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from sparsetrain.masking.sharded import count, is_row_sharded

SUPPORTED_MODULES: tuple[type[nn.Module], ...] = (
    nn.Linear,
    nn.Conv1d,
    nn.Conv2d,
    nn.Conv3d,
    nn.ConvTranspose1d,
    nn.ConvTranspose2d,
    nn.ConvTranspose3d,
)
"""Module types whose ``weight`` is a target by default."""

DEFAULT_PARAMS: tuple[tuple[type[nn.Module], tuple[str, ...]], ...] = (
    (nn.MultiheadAttention, ("in_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight")),
    (nn.RNNBase, ("weight_ih_l*", "weight_hh_l*", "weight_hr_l*")),
)
"""Other module types and the parameter-name globs that are targets by default."""

OPT_IN_MODULES: tuple[type[nn.Module], ...] = (nn.Embedding, nn.EmbeddingBag)
"""Module types whose ``weight`` is a target only when an ``include`` pattern names it."""

_GATES = {"LSTM": 4, "GRU": 3}
_TYPE = "type:"


@dataclass(eq=False)
class Target:
    """One sparse tensor: where it sits in the model and its mask.

    Attributes:
        name: Fully qualified parameter name, e.g. ``"layer1.0.conv1.weight"``.
        module: The module owning the parameter (under ``name``).
        param_name: Attribute name on ``module`` (``"weight"``, ``"in_proj_weight"``, ...).
        param: The trainable ``Parameter`` (the raw weight, also under a parametrization).
        mask: ``bool`` tensor of ``param``'s shape; ``True`` marks an active weight.
        aliases: The parameter's other names (tied or shared tensors), in registration order.
        blocks: Equal matrices stacked along dim 0 (3 for attention's in-projection, 4 for LSTM
            and 3 for GRU weights, else 1).
    """

    name: str
    module: nn.Module
    param_name: str
    param: nn.Parameter
    mask: torch.Tensor = field(repr=False)
    aliases: tuple[str, ...] = ()
    blocks: int = 1

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.param.shape)

    @property
    def numel(self) -> int:
        return self.param.numel()

    @property
    def nnz(self) -> int:
        """Number of active (unmasked) entries (of all shards under FSDP2: a collective)."""
        return count(self.mask)


@dataclass
class _Use:
    """One name under which a parameter is reachable."""

    name: str
    module: nn.Module
    param_name: str


def _type_names(module: nn.Module) -> list[str]:
    return [c.__name__ for c in type(module).__mro__ if c not in (nn.Module, object)]


def _hits(use: _Use, patterns: Sequence[str] | None) -> list[str]:
    """The patterns of ``patterns`` matching ``use`` (by name, or ``type:`` by module class)."""
    out = []
    for p in patterns or ():
        if p.startswith(_TYPE):
            if any(fnmatch.fnmatchcase(n, p[len(_TYPE) :]) for n in _type_names(use.module)):
                out.append(p)
        elif fnmatch.fnmatchcase(use.name, p):
            out.append(p)
    return out


def _is_default(use: _Use) -> bool:
    if isinstance(use.module, SUPPORTED_MODULES):
        return use.param_name == "weight"
    for kind, names in DEFAULT_PARAMS:
        if isinstance(use.module, kind):
            return any(fnmatch.fnmatchcase(use.param_name, n) for n in names)
    return False


def _blocks(use: _Use) -> int:
    if isinstance(use.module, nn.MultiheadAttention) and use.param_name == "in_proj_weight":
        return 3
    if isinstance(use.module, nn.RNNBase) and use.param_name.startswith(("weight_ih", "weight_hh")):
        return _GATES.get(getattr(use.module, "mode", ""), 1)
    return 1


def _check_patterns(name: str, patterns: Sequence[str] | None) -> None:
    if isinstance(patterns, str):
        raise TypeError(f"{name} must be a list of glob patterns, not a single string")
    for p in patterns or ():
        if not isinstance(p, str):
            raise TypeError(f"{name} patterns must be strings, got {p!r}")


def select_targets(
    model: nn.Module,
    *,
    include: Sequence[str] | None = None,
    exclude: Sequence[str] | None = None,
    dense_first: bool = False,
    dense_last: bool = False,
) -> list[Target]:
    """Select the tensors of ``model`` to sparsify, in module registration order.

    See the module docstring for the default rule, the patterns, and tied tensors.

    Args:
        model: Any ``nn.Module``.
        include: Name globs or ``"type:<Class>"`` patterns; when given, exactly the trainable
            >= 2-D parameters they match are targets (embeddings included).
        exclude: Patterns of parameters never to sparsify.
        dense_first: Keep the first target tensor dense (not masked).
        dense_last: Keep the last target tensor dense (not masked).

    Returns:
        The targets, each with an all-``True`` mask.

    Raises:
        TypeError: ``include``/``exclude`` is a single string, or a target gets sparse
            gradients (``Embedding(sparse=True)``).
        ValueError: Nothing matched, an include pattern matched nothing, or a matched parameter
            is not materialised yet (a lazy module before its first forward).

    Warns:
        UserWarning: A tensor that would be a target is left dense because it is frozen or tied
            to an embedding that is not included (the message names it and the way out).
    """
    if isinstance(include, str) or isinstance(exclude, str):
        raise TypeError("include/exclude must be lists of glob patterns, not a single string")
    _check_patterns("include", include)
    _check_patterns("exclude", exclude)
    uses: dict[int, list[_Use]] = {}
    params: dict[int, nn.Parameter] = {}
    for mod_name, module in model.named_modules(remove_duplicate=False):
        for p_name, param in module.named_parameters(recurse=False):
            full = f"{mod_name}.{p_name}" if mod_name else p_name
            uses.setdefault(id(param), []).append(_Use(full, module, p_name))
            params[id(param)] = param
    found: list[Target] = []
    matched_include: set[str] = set()
    left_dense: list[str] = []
    for pid, names in uses.items():
        param = params[pid]
        hits = [_hits(u, include) for u in names] if include else []
        matched_include.update(p for h in hits for p in h)
        if isinstance(param, nn.parameter.UninitializedParameter):
            if any(hits) or (not include and any(_is_default(u) for u in names)):
                raise ValueError(
                    f"{names[0].name!r} is not materialised yet (a lazy module): run one "
                    "forward pass before attaching"
                )
            continue
        if param.dim() < 2:
            continue  # biases and normalisation parameters are never masked
        wanted = any(hits) if include else any(_is_default(u) for u in names)
        if not wanted or any(_hits(u, exclude) for u in names):
            continue
        first = names[0]
        opted_out = [
            u
            for u, h in zip(names, hits or [[]] * len(names), strict=True)
            if isinstance(u.module, OPT_IN_MODULES) and not h
        ]
        if opted_out:
            u = opted_out[0]
            others = [n.name for n in names if n is not u]
            left_dense.append(
                f"{others[0]!r} (tied to {u.name!r} of {type(u.module).__name__}, masked only "
                f"when an include pattern names it: add {u.name!r} to include)"
            )
            continue
        sparse_grad = [u for u in names if isinstance(u.module, OPT_IN_MODULES) and u.module.sparse]
        if sparse_grad:
            raise TypeError(
                f"{first.name!r} gets sparse gradients ({type(sparse_grad[0].module).__name__}"
                f"(sparse=True)), which sparsetrain cannot mask; build it with sparse=False or "
                f"keep it dense with exclude=[{first.name!r}]"
            )
        if not param.requires_grad:
            left_dense.append(
                f"{first.name!r} (requires_grad=False; keep it out with exclude=[{first.name!r}])"
            )
            continue
        if is_row_sharded(param):  # FSDP2: the mask is sharded as its parameter
            mask = torch.ones_like(param, dtype=torch.bool)
        else:
            mask = torch.ones(param.shape, dtype=torch.bool, device=param.device)  # contiguous
        aliases = tuple(u.name for u in names[1:])
        found.append(
            Target(first.name, first.module, first.param_name, param, mask, aliases, _blocks(first))
        )
    if include:
        unused = [p for p in include if p not in matched_include]
        if unused:
            raise ValueError(f"include pattern(s) {unused} matched no parameter of the model")
    if dense_first and found:
        found = found[1:]
    if dense_last and found:
        found = found[:-1]
    if not found:
        raise ValueError(
            f"no prunable weights found in {type(model).__name__} (after include={include}, "
            f"exclude={exclude}, dense_first={dense_first}, dense_last={dense_last}); by default "
            "sparsetrain masks the weight matrices of Linear, Conv, ConvTranspose, "
            "MultiheadAttention and RNN/LSTM/GRU layers, and any >= 2-D trainable parameter "
            "an include pattern names"
        )
    if left_dense:
        shown = "; ".join(left_dense[:5]) + (
            f"; and {len(left_dense) - 5} more" if len(left_dense) > 5 else ""
        )
        warnings.warn(f"sparsetrain leaves dense: {shown}", UserWarning, stacklevel=3)
    return found
