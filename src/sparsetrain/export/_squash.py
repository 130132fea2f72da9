"""``squash``: leave a plain PyTorch model; ``to_sparse_inference``: serve it on CSR where faster.

What "nothing attached" means here: :func:`squash` needs *something of sparsetrain* to remove:
an attached method, a sparse layer, or a sparsetrain parametrization or hook. A plain model
with none of these raises ``ValueError`` (it is either already squashed or was never
sparsified: silently returning it would hide a forgotten ``attach``). :func:`to_sparse_inference`
needs a squashed model (no method attached) with zeros in at least one Linear weight.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from torch import nn
from torch.nn.utils import parametrize

from sparsetrain.methods.base import SparsityMethod
from sparsetrain.methods.lifecycle import attached_method
from sparsetrain.sparse.bench import LayerDecision, plan_layers
from sparsetrain.sparse.convert import to_dense_linear
from sparsetrain.sparse.layers import SparseInferenceLinear, SparseLinear

_HOOK_DICTS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")
INFERENCE_MODES = ("measure", "always")


def _ours(obj: Any) -> bool:
    module = getattr(obj, "__module__", None) or type(obj).__module__
    return isinstance(module, str) and module.startswith("sparsetrain.")


def _leftovers(model: nn.Module) -> list[str]:
    """Names of sparsetrain objects still inside ``model`` (layers, parametrizations, hooks)."""
    found = []
    for name, module in model.named_modules():
        where = name or type(model).__name__
        if isinstance(module, SparseLinear | SparseInferenceLinear):
            found.append(f"{where} ({type(module).__name__})")
        if parametrize.is_parametrized(module):
            for p_name, plist in module.parametrizations.items():
                if any(_ours(p) for p in plist):
                    found.append(f"{where}.{p_name} (parametrization)")
        for attr in _HOOK_DICTS:
            if any(_ours(h) for h in getattr(module, attr, {}).values()):
                found.append(f"{where} ({attr[1:-1]})")
    return found


def _strip(model: nn.Module) -> nn.Module:
    """Replace sparse layers by ``nn.Linear`` and drop sparsetrain parametrizations and hooks."""
    if isinstance(model, SparseLinear | SparseInferenceLinear):
        return to_dense_linear(model)
    for module in list(model.modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, SparseLinear | SparseInferenceLinear):
                setattr(module, child_name, to_dense_linear(child))
        if parametrize.is_parametrized(module):
            for p_name in list(module.parametrizations.keys()):
                if any(_ours(p) for p in module.parametrizations[p_name]):
                    parametrize.remove_parametrizations(module, p_name, leave_parametrized=True)
        for attr in _HOOK_DICTS:
            hooks = getattr(module, attr, None)
            if hooks:
                for key in [k for k, h in hooks.items() if _ours(h)]:
                    del hooks[key]
    return model


def squash(target: nn.Module | SparsityMethod) -> nn.Module:
    """Fold masks into plain dense weights; nothing of sparsetrain is left in the model.

    For hard-mask methods this is ``method.squash()`` (pruned weights are already exact zeros);
    parametrized methods bake their effective weight into ``weight``. Sparse layers become
    ``nn.Linear`` with zeros at pruned positions. Parameter names are the original ones.

    Args:
        target: An attached method, or a model with a method attached or sparse layers in it.

    Returns:
        The model (modified in place; a top-level sparse layer is returned as a new Linear).

    Raises:
        ValueError: The method is not attached, or the model holds nothing of sparsetrain.
        TypeError: ``target`` is neither a model nor a method.

    >>> model = nn.Sequential(nn.Linear(4, 4))
    >>> squash(model)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: nothing to squash in Sequential: no sparsetrain method attached ...
    """
    if isinstance(target, SparsityMethod):
        if target.model is None:
            raise ValueError(
                f"the {target.name!r} method is not attached to a model; nothing to squash"
            )
        model = target.squash()
    elif isinstance(target, nn.Module):
        model = target
        method = attached_method(model)
        if method is not None:
            method.squash()
        elif not _leftovers(model):
            raise ValueError(
                f"nothing to squash in {type(model).__name__}: no sparsetrain method attached "
                "and no sparse layer, parametrization or hook; pass the method or attach() one "
                "first (a plain model needs no squash)"
            )
    else:
        raise TypeError(
            f"squash() takes an nn.Module or a SparsityMethod, got {type(target).__name__}"
        )
    return _strip(model)


def to_sparse_inference(
    model: nn.Module,
    *,
    batch_size: int = 1,
    mode: str = "measure",
    margin: float = 0.05,
    repeats: int = 20,
    warmup: int = 3,
) -> list[LayerDecision]:
    """Swap ``nn.Linear`` layers for :class:`SparseInferenceLinear` where it is faster.

    Each Linear with zeros in its weight is timed dense vs CSR at ``batch_size`` on this
    machine (layers of equal shape and density once); only those measured faster by
    ``margin`` are converted, in place. Layers without zeros stay dense unmeasured, and so do
    Linear subclasses (``MultiheadAttention.out_proj``, whose weight the attention reads
    directly), weights tied to another module (a head tied to an embedding) and layers
    registered under several names.

    Args:
        model: A squashed model (no method attached).
        batch_size: The serving batch size to measure at.
        mode: ``"measure"`` (default) or ``"always"`` (convert every Linear with zeros).
        margin: Convert only if ``sparse_ms <= (1 - margin) * dense_ms``.
        repeats: Timed rounds per distinct layer.
        warmup: Untimed rounds first.

    Returns:
        One :class:`LayerDecision` per Linear layer (print with ``format_decisions``).

    Raises:
        ValueError: A method is attached, ``mode`` is unknown, there is no Linear layer, or no
            Linear weight has a zero.
    """
    if mode not in INFERENCE_MODES:
        raise ValueError(f"unknown mode {mode!r}; valid: {', '.join(INFERENCE_MODES)}")
    method = attached_method(model)
    if method is not None:
        raise ValueError(
            f"model has a {method.name!r} method attached; call squash(model) before "
            "to_sparse_inference"
        )
    if isinstance(model, nn.Linear):
        raise ValueError("model is a bare nn.Linear; wrap it (nn.Sequential(layer)) to convert it")
    linears = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError(f"{type(model).__name__} has no nn.Linear layer to convert")
    params = Counter(id(p) for _, p in model.named_parameters(remove_duplicate=False))
    modules = Counter(id(m) for _, m in model.named_modules(remove_duplicate=False))
    zeros = [
        n
        for n, m in linears
        if type(m) is nn.Linear  # a subclass (attention's out_proj) may be used by its weight
        and params[id(m.weight)] == 1  # a head tied to an embedding: the embedding needs it
        and modules[id(m)] == 1  # one layer under two names: a swap would replace one
        and bool((m.weight == 0).any())
    ]
    if not zeros:
        raise ValueError(
            f"no Linear weight of {type(model).__name__} has zeros ({len(linears)} dense layers); "
            "train with a sparsity method and squash() it before to_sparse_inference"
        )
    sub = nn.ModuleDict({n.replace(".", "/"): m for n, m in linears if n in zeros})
    decisions = plan_layers(
        sub,
        batch_size,
        mode="inference",
        force="sparse" if mode == "always" else None,
        margin=margin,
        repeats=repeats,
        warmup=warmup,
    )
    by_name = {d.name.replace("/", "."): d for d in decisions}
    out = []
    for name, module in linears:
        d = by_name.get(name)
        if d is None:
            shape = (module.out_features, module.in_features)
            d = LayerDecision(name, shape, 1.0, "dense", float("nan"), float("nan"))
        else:
            d = LayerDecision(name, d.shape, d.density, d.choice, d.dense_ms, d.sparse_ms)
        if d.choice == "sparse":
            _replace(model, name, SparseInferenceLinear(module.weight, module.bias))
        out.append(d)
    return out


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, attr = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, attr, new)
