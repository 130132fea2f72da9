"""Convert between dense masked ``nn.Linear`` and :class:`SparseLinear`, optimizer state included.

Names: the module keeps its path in the model (``"fc1"`` stays ``"fc1"``) and the bias keeps
its ``bias`` Parameter *object*, so its optimizer state is untouched. The weight changes
representation (``weight`` ``(out, in)`` ↔ ``values`` ``(nnz,)``), so the weight's Parameter is
replaced in the optimizer's param group *at the same index*: ``optimizer.state_dict()`` keeps
its numbering. State that is shaped like the parameter (SGD ``momentum_buffer``, Adam
``exp_avg``/``exp_avg_sq``/``max_exp_avg_sq``, ...) is gathered to the live positions or
scattered back (zeros elsewhere); scalars (``step``) are carried as they are; state already in
the target layout (value-shaped state of a 2-D weight, or dense-shaped state of the values:
loaded from a checkpoint taken in the other execution, with this structure) is carried as it
is; any other layout raises ``TypeError`` naming the state key.
"""

from __future__ import annotations

import torch
from torch import nn

from sparsetrain.sparse.layers import SparseInferenceLinear, SparseLinear


def _check_mask(mask: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
        got = mask.dtype if isinstance(mask, torch.Tensor) else type(mask).__name__
        raise TypeError(f"mask must be a bool tensor, got {got}")
    if tuple(mask.shape) != tuple(shape):
        raise ValueError(f"mask shape {tuple(mask.shape)} does not match the weight {shape}")
    return mask


def gather_state(
    optimizer: torch.optim.Optimizer,
    dense: torch.Tensor,
    values: torch.Tensor,
    flat_index: torch.Tensor,
) -> None:
    """Move ``dense``'s optimizer state to ``values``, keeping the entries at ``flat_index``.

    Args:
        optimizer: Any optimizer.
        dense: The dense parameter whose state is moved (its entry is removed).
        values: The value-shaped parameter that receives the state.
        flat_index: Sorted flat positions in ``dense`` of the live values.

    Raises:
        TypeError: A non-scalar state tensor shaped neither like ``dense`` nor like ``values``
            (a 2-D or larger ``dense`` only: then ``values``-shaped state is carried as it is).
    """
    state = optimizer.state.pop(dense, None)
    if not state:
        return
    moved = {}
    for key, value in state.items():
        if isinstance(value, torch.Tensor) and value.dim() > 0:
            if dense.dim() > 1 and value.shape == values.shape:
                moved[key] = value  # already value-ordered (a sparse-execution checkpoint)
                continue
            if value.shape != dense.shape:
                raise TypeError(
                    f"optimizer state {key!r} has shape {tuple(value.shape)}, not the weight's "
                    f"{tuple(dense.shape)}; it cannot follow the weight into sparse storage"
                )
            value = value.reshape(-1)[flat_index].clone()
        moved[key] = value
    optimizer.state[values] = moved


def scatter_state(
    optimizer: torch.optim.Optimizer,
    values: torch.Tensor,
    dense: torch.Tensor,
    flat_index: torch.Tensor,
) -> None:
    """Move ``values``' state to ``dense``: live entries at ``flat_index``, zeros elsewhere.

    Raises:
        TypeError: A non-scalar state tensor shaped neither like ``values`` nor like ``dense``
            (a 2-D or larger ``dense`` only: then ``dense``-shaped state is carried as it is).
    """
    state = optimizer.state.pop(values, None)
    if not state:
        return
    moved = {}
    for key, value in state.items():
        if isinstance(value, torch.Tensor) and value.dim() > 0:
            if dense.dim() > 1 and value.shape == dense.shape:
                moved[key] = value  # already dense (a masked-dense checkpoint)
                continue
            if value.shape != values.shape:
                raise TypeError(
                    f"optimizer state {key!r} has shape {tuple(value.shape)}, not the values' "
                    f"{tuple(values.shape)}; it cannot follow the weight into dense storage"
                )
            full = value.new_zeros(dense.numel())
            full[flat_index] = value
            value = full.view(dense.shape)
        moved[key] = value
    optimizer.state[dense] = moved


def replace_param(optimizer: torch.optim.Optimizer, old: torch.Tensor, new: torch.Tensor) -> None:
    """Put ``new`` where ``old`` sits in the optimizer's param groups (same index).

    Raises:
        ValueError: The optimizer does not hold ``old``.
    """
    for group in optimizer.param_groups:
        for i, p in enumerate(group["params"]):
            if p is old:
                group["params"][i] = new
                return
    raise ValueError("the optimizer does not hold the parameter being replaced")


def to_sparse_linear(
    linear: nn.Linear,
    mask: torch.Tensor | None = None,
    optimizer: torch.optim.Optimizer | None = None,
) -> SparseLinear:
    """A :class:`SparseLinear` with ``linear``'s live weights (and optimizer state).

    Args:
        linear: The dense layer (not modified, except that the optimizer stops holding its
            weight).
        mask: ``bool`` ``(out, in)`` live positions; default ``weight != 0``. Live positions may
            hold zero (regrown weights); values outside the mask are dropped.
        optimizer: Optimizer holding ``linear.weight``: the new ``values`` Parameter replaces
            it and its state is gathered to the live positions.

    Returns:
        The sparse layer, sharing ``linear``'s ``bias`` Parameter.
    """
    if not isinstance(linear, nn.Linear):
        raise TypeError(f"to_sparse_linear needs an nn.Linear, got {type(linear).__name__}")
    w = linear.weight.detach()
    live = (w != 0) if mask is None else _check_mask(mask, tuple(w.shape))
    layer = SparseLinear(
        linear.in_features,
        linear.out_features,
        live.to(w.device),
        bias=False,
        dtype=w.dtype,
    ).to(w.device)
    flat = layer.flat_indices()
    with torch.no_grad():
        layer.values.copy_(w.reshape(-1)[flat])
    layer.values.requires_grad_(linear.weight.requires_grad)
    layer.bias = linear.bias
    layer.train(linear.training)
    if optimizer is not None:
        replace_param(optimizer, linear.weight, layer.values)
        gather_state(optimizer, linear.weight, layer.values, flat)
    return layer


def to_dense_linear(
    layer: SparseLinear | SparseInferenceLinear,
    optimizer: torch.optim.Optimizer | None = None,
) -> nn.Linear:
    """An ``nn.Linear`` whose weight holds ``layer``'s values, zeros elsewhere.

    Args:
        layer: The sparse layer.
        optimizer: Optimizer holding ``layer.values`` (training layers only): the new dense
            ``weight`` replaces it, with its state scattered back (zeros at pruned positions).

    Returns:
        The dense layer, sharing the sparse layer's ``bias`` Parameter (training layers).
    """
    if not isinstance(layer, SparseLinear | SparseInferenceLinear):
        raise TypeError(
            f"to_dense_linear needs a SparseLinear or SparseInferenceLinear, "
            f"got {type(layer).__name__}"
        )
    dense = layer.to_dense()
    out = nn.utils.skip_init(  # no random init: every entry is written below
        nn.Linear,
        layer.in_features,
        layer.out_features,
        bias=layer.bias is not None,
        device=dense.device,
        dtype=dense.dtype,
    )
    with torch.no_grad():
        out.weight.copy_(dense)
    if isinstance(layer, SparseLinear):
        out.weight.requires_grad_(layer.values.requires_grad)
        out.bias = layer.bias
        if optimizer is not None:
            replace_param(optimizer, layer.values, out.weight)
            scatter_state(optimizer, layer.values, out.weight, layer.flat_indices())
    elif layer.bias is not None:
        with torch.no_grad():
            out.bias.copy_(layer.bias)
    out.train(layer.training)
    return out


def _parent(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    parent_name, _, attr = name.rpartition(".")
    try:
        parent = model.get_submodule(parent_name) if parent_name else model
        getattr(parent, attr)
    except AttributeError as err:
        raise ValueError(f"model has no submodule {name!r}") from err
    return parent, attr


def swap_to_sparse(
    model: nn.Module,
    name: str,
    mask: torch.Tensor | None = None,
    optimizer: torch.optim.Optimizer | None = None,
) -> SparseLinear:
    """Replace the ``nn.Linear`` at ``name`` in ``model`` by a :class:`SparseLinear`.

    See :func:`to_sparse_linear` for ``mask`` and ``optimizer``.
    """
    parent, attr = _parent(model, name)
    layer = to_sparse_linear(getattr(parent, attr), mask, optimizer)
    setattr(parent, attr, layer)
    return layer


def swap_to_dense(
    model: nn.Module, name: str, optimizer: torch.optim.Optimizer | None = None
) -> nn.Linear:
    """Replace the sparse layer at ``name`` in ``model`` by an ``nn.Linear`` (inverse of swap)."""
    parent, attr = _parent(model, name)
    layer = to_dense_linear(getattr(parent, attr), optimizer)
    setattr(parent, attr, layer)
    return layer
