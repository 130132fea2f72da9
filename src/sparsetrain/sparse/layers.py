"""Sparse Linear layers: :class:`SparseLinear` trains, :class:`SparseInferenceLinear` serves.

``SparseLinear`` keeps its weight as CSR: a 1-D trainable ``values`` Parameter (``nnz``) plus
the pattern as int32 buffers ``crow_indices``/``col_indices`` and the transposed pattern. The
optimizer therefore sees ``nnz`` numbers and sizes its state to them. The bias stays a plain
``bias`` Parameter.

The layer keeps the face of the ``nn.Linear`` it replaces:

- ``layer.weight`` reads the dense ``(out, in)`` weight (zeros at pruned positions), a new
  tensor at each read; assigning to it raises ``AttributeError`` (there is no dense weight to
  replace: change ``values``, or the structure through :meth:`SparseLinear.set_structure`).
- ``state_dict()`` holds ``weight`` (that dense tensor) and ``bias``, the keys and shapes of the
  plain ``nn.Linear``, so a checkpoint loads into the model without sparsetrain
  (``strict=True``) and the reverse. ``load_state_dict`` takes a dense ``weight``'s entries at
  the layer's structure positions; nonzeros outside the structure are kept aside, unused by
  ``forward``, until the next :meth:`~SparseLinear.set_structure` (the attached method's
  ``load_state_dict`` calls it with its masks, which decide the structure), where positions live
  in the new mask take their loaded value. An optimizer step (any in-place change of
  ``values``), or a later structure change or load, discards them. State dicts written before
  this dense face (``values``/``crow_indices``/``col_indices``) still load, adopting their
  pattern. ``SparseInferenceLinear`` (serving) saves its CSR buffers as they are.

Topology changes go through :meth:`SparseLinear.set_structure`, which keeps the *same*
``values`` Parameter object (its ``.data`` is replaced), so optimizer references stay valid, and
moves every value-shaped optimizer state tensor along with the weights that stay.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from sparsetrain.sparse._csr import (
    CSRStructure,
    csr_tensor,
    feature_major,
    flat_indices,
    sparse_linear,
    spmm_t,
    structure_from_csr,
    structure_from_mask,
    structure_mask,
)


def _reload_structure(
    module: SparseLinear | SparseInferenceLinear,
    state_dict: dict[str, Any],
    prefix: str,
    error_msgs: list[str],
) -> bool:
    """Adopt the pattern stored in ``state_dict`` (it may have another nnz); True on success."""
    crow, col = state_dict.get(prefix + "crow_indices"), state_dict.get(prefix + "col_indices")
    if not isinstance(crow, torch.Tensor) or not isinstance(col, torch.Tensor):
        return False
    dev = module.crow_indices.device
    try:
        s = structure_from_csr(crow.to(dev), col.to(dev), (module.out_features, module.in_features))
    except ValueError as err:
        error_msgs.append(f"{prefix}: {err}")
        return False
    module._set_buffers(s)
    return True


def remap_values(
    old: torch.Tensor, old_flat: torch.Tensor, new_flat: torch.Tensor, reset: torch.Tensor | None
) -> torch.Tensor:
    """Carry value-ordered entries from one sorted structure to another.

    Positions present in both keep their entry; new positions (and those flagged in ``reset``,
    a ``bool`` tensor over the new positions) start at zero.
    """
    out = torch.zeros(new_flat.numel(), dtype=old.dtype, device=old.device)
    if old_flat.numel() and new_flat.numel():
        pos = torch.searchsorted(old_flat, new_flat).clamp_(max=old_flat.numel() - 1)
        found = old_flat[pos] == new_flat
        if reset is not None:
            found &= ~reset
        out[found] = old[pos[found]]
    return out


def _replace_in(optimizer: torch.optim.Optimizer, old: torch.Tensor, new: torch.Tensor) -> None:
    """Put ``new`` where ``old`` sits in the optimizer's groups, and move its state to it."""
    for group in optimizer.param_groups:
        for i, p in enumerate(group["params"]):
            if p is old:
                group["params"][i] = new
                if old in optimizer.state:
                    optimizer.state[new] = optimizer.state.pop(old)
                return
    raise ValueError("the optimizer does not hold this layer's values")


class _CSRModule(nn.Module):
    """A module whose weight pattern lives in ``crow_indices``/``col_indices`` buffers."""

    _structure: CSRStructure
    in_features: int
    out_features: int
    values: torch.Tensor

    @property
    def weight(self) -> torch.Tensor:
        """The dense ``(out, in)`` weight, zeros at pruned positions (a new tensor per read).

        Read-only: writing into the returned tensor does not reach the layer. Autograd records
        it as a function of ``values``, so a loss term computed from it trains the live values.
        """
        dense = self.values.new_zeros(self.out_features * self.in_features)
        flat = flat_indices(self.structure)
        return dense.index_put((flat,), self.values).view(self.out_features, self.in_features)

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "weight":
            raise AttributeError(
                f"{type(self).__name__}.weight is read-only: the layer stores its weight as CSR "
                "(values at the structure's positions), so there is no dense weight to assign; "
                "write the values (layer.values) or change the structure (set_structure), or "
                "keep this layer dense (a tied or shared weight stays masked-dense)"
            )
        super().__setattr__(name, value)

    def _set_buffers(self, s: CSRStructure) -> None:
        self._structure = s
        self.register_buffer("crow_indices", s.crow)
        self.register_buffer("col_indices", s.col)

    @property
    def structure(self) -> CSRStructure:
        """The current CSR pattern (rebuilt if buffers were moved with ``.to()``)."""
        s = self._structure
        if s.crow is not self.crow_indices or s.col is not self.col_indices:
            s = structure_from_csr(self.crow_indices, self.col_indices, s.shape)
            self._set_buffers(s)
        return s

    def _resize_values(self, nnz: int) -> None:
        raise NotImplementedError

    def _load_from_state_dict(
        self,
        state_dict: dict[str, Any],
        prefix: str,
        local_metadata: dict[str, Any],
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        # a stored pattern of another nnz: adopt it, and size the values to match
        if _reload_structure(self, state_dict, prefix, error_msgs):
            self._resize_values(self.nnz)
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )


class SparseLinear(_CSRModule):
    """``nn.Linear`` with a CSR weight trained through sparse kernels.

    Forward and both backward products touch only the ``nnz`` live weights (see
    ``sparsetrain.sparse._csr`` for the kernels and the feature-major output layout). Set
    ``capture_dense_grad = True`` before a forward/backward whose dense gradient a method needs
    (RigL growth); ``dense_grad`` then holds ``∂L/∂W`` as an ``(out, in)`` tensor until cleared.

    Args:
        in_features: Input features.
        out_features: Output features.
        mask: ``bool`` ``(out, in)``; ``True`` marks a live weight.
        bias: Learn an additive bias.
        dtype: Parameter dtype (default: torch's default dtype).

    >>> layer = SparseLinear(4, 3, torch.eye(3, 4, dtype=torch.bool))
    >>> layer(torch.ones(2, 4)).shape
    torch.Size([2, 3])
    >>> layer.nnz
    3
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        mask: torch.Tensor,
        *,
        bias: bool = True,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if tuple(mask.shape) != (out_features, in_features):
            raise ValueError(
                f"mask shape {tuple(mask.shape)} does not match (out_features, in_features) = "
                f"{(out_features, in_features)}"
            )
        self.in_features, self.out_features = in_features, out_features
        s = structure_from_mask(mask)
        self._set_buffers(s)
        bound = 1.0 / math.sqrt(in_features) if in_features else 0.0
        dev = mask.device
        self.values = nn.Parameter(
            torch.empty(s.nnz, dtype=dtype, device=dev).uniform_(-bound, bound)
        )
        self.bias = (
            nn.Parameter(torch.empty(out_features, dtype=dtype, device=dev).uniform_(-bound, bound))
            if bias
            else None
        )
        self.capture_dense_grad = False
        self.dense_grad: torch.Tensor | None = None
        # the dense weight last loaded with nonzeros outside the structure, and the values'
        # version counter right after that load (see the module docstring)
        self._loaded: tuple[torch.Tensor, int] | None = None

    # ------------------------------------------------------------------ structure

    @property
    def nnz(self) -> int:
        return self.col_indices.numel()

    @property
    def density(self) -> float:
        numel = self.in_features * self.out_features
        return self.nnz / numel if numel else 0.0

    def mask(self) -> torch.Tensor:
        """The ``bool`` ``(out, in)`` mask of live weights."""
        return structure_mask(self.structure)

    def flat_indices(self) -> torch.Tensor:
        """Sorted row-major flat positions of the live weights (``nnz``, int64)."""
        return flat_indices(self.structure)

    def to_dense(self) -> torch.Tensor:
        """The dense ``(out, in)`` weight, zeros at pruned positions (detached)."""
        w = torch.zeros(
            self.out_features * self.in_features,
            dtype=self.values.dtype,
            device=self.values.device,
        )
        w[self.flat_indices()] = self.values.detach()
        return w.view(self.out_features, self.in_features)

    @torch.no_grad()
    def set_structure(
        self,
        mask: torch.Tensor,
        optimizer: torch.optim.Optimizer | None = None,
        *,
        reset: torch.Tensor | None = None,
        values: torch.Tensor | None = None,
        keep_state: bool = False,
    ) -> None:
        """Replace the pattern; kept weights and their optimizer state follow, new ones are zero.

        With the same number of live weights the ``values`` Parameter stays the same object (its
        ``.data`` is replaced), so optimizer param groups need no change. With another number,
        ``values`` becomes a new Parameter (autograd keeps the old one's shape for as long as a
        graph that used it is alive, e.g. the last step's loss) and takes the old one's place in
        ``optimizer`` (same group, same index, state moved): pass the optimizer that trains it.
        Its ``.grad`` is cleared either way.

        Args:
            mask: New ``bool`` ``(out, in)`` mask.
            optimizer: Optimizer whose value-shaped state tensors are remapped the same way.
            reset: ``bool`` ``(out, in)``; live positions listed here restart from zero value
                and state even if they were live before (e.g. regrown weights).
            values: Optional dense ``(out, in)`` weight to read the new values from instead of
                the current values (positions outside ``mask`` are ignored). Default: the
                dense weight just loaded by ``load_state_dict`` if it had nonzeros outside the
                structure and the values have not changed since, else the current values.
            keep_state: The optimizer's value-shaped state already follows ``mask`` (it was
                loaded from a checkpoint taken with this structure): keep it as it is.
        """
        old_flat = self.flat_indices()
        new = structure_from_mask(mask.to(device=self.crow_indices.device))
        new_flat = flat_indices(new)
        reset_v = None if reset is None else reset.reshape(-1)[new_flat]
        if values is None:
            values = self.loaded_weight()
        if values is not None:
            new_vals = values.reshape(-1)[new_flat].to(self.values.dtype).clone()
            if reset_v is not None:
                new_vals[reset_v] = 0
        else:
            new_vals = remap_values(self.values.detach(), old_flat, new_flat, reset_v)
        if optimizer is not None:
            state = optimizer.state.get(self.values, {})
            want = (new.nnz,) if keep_state else tuple(self.values.shape)
            for key, value in list(state.items()):
                if not isinstance(value, torch.Tensor) or value.dim() == 0:
                    continue
                if tuple(value.shape) != want:
                    raise TypeError(
                        f"optimizer state {key!r} has shape {tuple(value.shape)}, not {want} "
                        f"({'the new' if keep_state else 'the current'} structure's nnz); "
                        "set_structure cannot remap it"
                    )
                if not keep_state:
                    state[key] = remap_values(value, old_flat, new_flat, reset_v)
        self._set_buffers(new)
        self._loaded = None
        if new_vals.shape == self.values.shape:
            self.values.data = new_vals
            self.values.grad = None
        else:
            old = self.values
            self.values = nn.Parameter(new_vals, requires_grad=old.requires_grad)
            if optimizer is not None:
                _replace_in(optimizer, old, self.values)
        self.dense_grad = None

    # ------------------------------------------------------------------ forward

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return sparse_linear(x, self.values, self.structure, self.bias, self)

    # ------------------------------------------------------------------ state dict

    def loaded_weight(self) -> torch.Tensor | None:
        """The dense weight last loaded with nonzeros outside the structure, if still current.

        ``None`` once the values changed after that load (an optimizer step), or after a
        structure change; see the module docstring.
        """
        if self._loaded is None:
            return None
        weight, version = self._loaded
        if version != self.values._version:
            self._loaded = None
            return None
        return weight.to(device=self.values.device, dtype=self.values.dtype)

    def _save_to_state_dict(
        self, destination: dict[str, Any], prefix: str, keep_vars: bool
    ) -> None:
        # the plain nn.Linear's keys and shapes; the dense weight is made here, not a Parameter
        destination[prefix + "weight"] = self.to_dense()
        if self.bias is not None:
            destination[prefix + "bias"] = self.bias if keep_vars else self.bias.detach()

    def _load_from_state_dict(
        self,
        state_dict: dict[str, Any],
        prefix: str,
        local_metadata: dict[str, Any],
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        key = prefix + "weight"
        rest = (local_metadata, strict, missing_keys, unexpected_keys, error_msgs)
        self._loaded = None
        if key not in state_dict:  # a state dict from before the dense face: CSR keys
            super()._load_from_state_dict(state_dict, prefix, *rest)
            return
        weight = state_dict[key]
        shape = torch.Size((self.out_features, self.in_features))
        if not isinstance(weight, torch.Tensor) or weight.shape != shape:
            got = tuple(weight.shape) if isinstance(weight, torch.Tensor) else type(weight).__name__
            error_msgs.append(
                f"size mismatch for {key}: copying a param with shape {got} from checkpoint, "
                f"the shape in current model is {shape}."
            )
            return
        w = weight.detach().to(device=self.values.device, dtype=self.values.dtype)
        flat = self.flat_indices()
        local = {k: v for k, v in state_dict.items() if k.startswith(prefix) and k != key}
        local[prefix + "values"] = w.reshape(-1)[flat]
        local[prefix + "crow_indices"] = self.crow_indices  # the structure stays
        local[prefix + "col_indices"] = self.col_indices
        errors = len(error_msgs)
        # not the base class's CSR reload: the structure stays
        nn.Module._load_from_state_dict(self, local, prefix, *rest)
        outside = w.reshape(-1) != 0
        outside[flat] = False
        if len(error_msgs) == errors and bool(outside.any()):
            self._loaded = (w.clone(), self.values._version)

    def _resize_values(self, nnz: int) -> None:
        self.values.data = self.values.data.new_empty(nnz)  # same Parameter object

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"nnz={self.nnz}, density={self.density:.4f}, bias={self.bias is not None}"
        )


class SparseInferenceLinear(_CSRModule):
    """Inference-only CSR Linear: no autograd, SpMV at batch 1, SpMM otherwise.

    All tensors are buffers (``values``, ``crow_indices``, ``col_indices``, ``bias``), so the
    module has no parameters and its output never requires grad.

    Args:
        weight: Dense ``(out, in)`` weight; its nonzeros (or ``mask``) become the CSR values.
        bias: Optional bias (``out``).
        mask: ``bool`` ``(out, in)`` live positions; default ``weight != 0``.
    """

    def __init__(
        self,
        weight: torch.Tensor,
        bias: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        if weight.dim() != 2:
            raise ValueError(f"weight must be 2-D (out, in), got shape {tuple(weight.shape)}")
        w = weight.detach()
        live = (w != 0) if mask is None else mask.to(torch.bool)
        s = structure_from_mask(live)
        self.out_features, self.in_features = w.shape
        self._set_buffers(s)
        self.register_buffer("values", w.reshape(-1)[flat_indices(s)].clone())
        self._csr_cache: torch.Tensor | None = None
        self.register_buffer("bias", None if bias is None else bias.detach().clone())

    @property
    def nnz(self) -> int:
        return self.col_indices.numel()

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_csr_cache"] = None  # a CSR tensor has no storage to copy or pickle
        return state

    def to_dense(self) -> torch.Tensor:
        """The dense ``(out, in)`` weight."""
        w = self.values.new_zeros(self.out_features * self.in_features)
        w[flat_indices(self.structure)] = self.values
        return w.view(self.out_features, self.in_features)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.in_features:
            raise ValueError(
                f"input has {x.shape[-1]} features, the layer expects {self.in_features}"
            )
        s = self.structure
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features)
        if x2.shape[0] == 1:  # SpMV: batch-1 serving, where per-call overhead matters
            w = self._csr_cache
            # the cached CSR keeps its tensors alive, so equal pointers mean the same tensors
            stale = w is None or (
                w.values().data_ptr() != self.values.data_ptr()
                or w.col_indices().data_ptr() != s.col.data_ptr()
            )
            if stale:
                w = self._csr_cache = csr_tensor(s, self.values)
            v = x2[0].contiguous()
            y = torch.mv(w, v) if self.bias is None else torch.addmv(self.bias, w, v)
            return y.reshape(*lead, self.out_features)
        y = spmm_t(s, self.values, feature_major(x2), self.bias).t()
        return y if x.dim() == 2 else y.reshape(*lead, self.out_features)

    def _resize_values(self, nnz: int) -> None:
        self.values = self.values.new_empty(nnz)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, nnz={self.nnz}, "
            f"bias={self.bias is not None}"
        )
