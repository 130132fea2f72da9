"""Compressed checkpoints: sparse tensors as bitmask + values or CSR, in one safetensors file.

File format (``FORMAT_VERSION = 2``; version 1 is version 2 without ``"nm"``)
-----------------------------------------------------------------------------
A standard safetensors file. Its string metadata holds one key, ``"sparsetrain"``, whose value
is a JSON header::

    {"format": "sparsetrain-compressed", "format_version": 1,
     "tensors": [{"name": "fc1.weight", "encoding": "bitmask", "shape": [1024, 784],
                  "dtype": "float32", "nnz": 80282}, ...]}

``tensors`` lists every tensor of the model's state dict, in state-dict order, under its
original name (a :class:`~sparsetrain.sparse.SparseLinear`'s ``values``/``crow_indices``/
``col_indices`` are written as one logical ``weight``). Per ``encoding``, the stored arrays are:

- ``"dense"``: ``<name>``, the tensor as-is.
- ``"bitmask"``: ``<name>::bitmask`` (uint8, ``ceil(numel / 8)``): the live mask flattened in
  row-major (C) order, zero-padded to a multiple of 8 and packed most-significant-bit first
  (``numpy.packbits``, ``bitorder="big"``); ``<name>::values`` (``nnz``, the tensor's dtype):
  the live entries in the same row-major order.
- ``"nm"``: the mask has exactly N live entries in every group of M consecutive entries along
  dim 1 (the N:M layout of :mod:`sparsetrain.masking.structure`: Linear inputs, Conv input
  channels at one kernel position); the entry also holds ``"n"`` and ``"m"``.
  ``<name>::pattern`` (uint8): for every group in :func:`~sparsetrain.masking.structure.nm_groups`
  order, the rank of its live set among the C(M, N) N-subsets of its M positions in
  lexicographic order of their index lists (``itertools.combinations(range(M), N)``), written as
  ``ceil(log2 C(M, N))`` bits, most significant first, all groups' bits packed as the bitmask;
  ``<name>::values``: the live entries in row-major order, as for ``"bitmask"``. At 2:4 that is 3
  bits per group of 4 (0.09 bytes per weight) against the bitmask's 4.
- ``"csr"``: over the 2-D view ``(shape[0], numel / shape[0])`` (1-D tensors: ``(1, numel)``):
  ``<name>::crow`` (int32, or int64 when nnz ≥ 2³¹; ``rows + 1`` row pointers),
  ``<name>::col`` (column indices sorted within each row; int16 when columns ≤ 32767, else
  int32, else int64) and ``<name>::values``.

The writer picks, per tensor, the smallest of the encodings allowed: a tensor with an explicit
mask (the attached method's masks, a sparse layer's pattern, or ``masks=``) is stored as bitmask
or CSR so the mask round-trips exactly (live entries may be zero); other floating tensors with
≥ 2 dims may also be stored dense, and their mask is their nonzeros. Bitmask wins down to ~6%
density, CSR below (at 90% sparsity a weight costs 0.525 bytes instead of 4).

Writes are atomic: a temporary file in the target directory, fsync, then ``os.replace``. A
failed write leaves the previous file (if any) untouched and no temporary behind.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from sparsetrain._io import atomic_path
from sparsetrain.export._nm import decode_nm, detect_nm, encode_nm, nm_bytes
from sparsetrain.methods.lifecycle import attached_method
from sparsetrain.sparse._csr import flat_indices, structure_from_csr
from sparsetrain.sparse.layers import SparseInferenceLinear, SparseLinear

FORMAT = "sparsetrain-compressed"
FORMAT_VERSION = 2
ENCODINGS = ("dense", "bitmask", "csr", "nm")
_NM_SIZES = (4, 8, 2, 16)  # group sizes M the writer tries for the "nm" encoding
_SEP = "::"


@dataclass
class _Sparse:
    """A tensor known by its live positions: sorted flat indices and their values."""

    shape: tuple[int, ...]
    flat: torch.Tensor  # int64, sorted
    values: torch.Tensor

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


def _sparse_modules(model: nn.Module) -> dict[str, SparseLinear | SparseInferenceLinear]:
    kinds = SparseLinear | SparseInferenceLinear
    return {(f"{n}." if n else ""): m for n, m in model.named_modules() if isinstance(m, kinds)}


def _logical_state(model: nn.Module) -> dict[str, torch.Tensor | _Sparse]:
    """The model's state dict with each sparse layer's CSR buffers folded into ``weight``."""
    sparse = _sparse_modules(model)
    raw = model.state_dict(keep_vars=False)
    out: dict[str, torch.Tensor | _Sparse] = {}
    for key, value in raw.items():
        prefix, _, leaf = key.rpartition(".")
        prefix = f"{prefix}." if prefix else ""
        mod = sparse.get(prefix)
        if mod is None:
            out[key] = value
        elif leaf in ("weight", "values", "crow_indices", "col_indices"):  # training, serving
            if prefix + "weight" not in out:
                shape = (mod.out_features, mod.in_features)
                vals = mod.values.detach()
                out[prefix + "weight"] = _Sparse(shape, flat_indices(mod.structure), vals)
        else:
            out[key] = value
    return out


def _index_dtype(max_value: int, small: bool) -> torch.dtype:
    if small and max_value <= 2**15 - 1:
        return torch.int16
    return torch.int32 if max_value <= 2**31 - 1 else torch.int64


def _encode(name: str, t: torch.Tensor | _Sparse, mask: torch.Tensor | None) -> tuple[str, dict]:
    """Choose an encoding for one tensor and return it with the arrays to store."""
    if isinstance(t, torch.Tensor):
        if mask is not None:
            if bool((t.detach().reshape(-1)[~mask.reshape(-1)] != 0).any()):
                raise ValueError(
                    f"tensor {name!r} has nonzeros outside its mask; apply the masks (or "
                    "squash) before save_compressed"
                )
            flat = mask.reshape(-1).nonzero().squeeze(1)
        elif t.is_floating_point() and t.dim() >= 2:
            flat = t.reshape(-1).nonzero().squeeze(1)
        else:
            return "dense", {name: t}
        t = _Sparse(tuple(t.shape), flat, t.detach().reshape(-1)[flat])
        allow_dense = mask is None
    else:
        if mask is not None and not torch.equal(mask.reshape(-1).nonzero().squeeze(1), t.flat):
            raise ValueError(f"mask of {name!r} differs from its sparse layer's pattern")
        allow_dense = False
    item = t.values.element_size()
    nnz, numel = t.flat.numel(), t.numel
    rows = t.shape[0] if len(t.shape) >= 2 else 1
    cols = numel // rows if rows else 0
    crow_dt, col_dt = _index_dtype(nnz, False), _index_dtype(max(cols - 1, 0), True)
    sizes = {
        "bitmask": math.ceil(numel / 8) + nnz * item,
        "csr": (rows + 1) * crow_dt.itemsize + nnz * (col_dt.itemsize + item),
    }
    if allow_dense:
        sizes["dense"] = numel * item
    nm = detect_nm(t.shape, t.flat, _NM_SIZES)
    if nm is not None:
        sizes["nm"] = nm_bytes(numel, *nm) + nnz * item
    enc = min(sizes, key=lambda k: (sizes[k], ENCODINGS.index(k)))
    vals = t.values.contiguous()
    if enc == "nm":
        pattern = encode_nm(t.shape, t.flat, *nm)  # type: ignore[misc]
        return f"nm:{nm[0]}:{nm[1]}", {  # type: ignore[index]
            f"{name}{_SEP}pattern": pattern,
            f"{name}{_SEP}values": vals,
        }
    if enc == "dense":
        dense = vals.new_zeros(numel)
        dense[t.flat] = vals
        return enc, {name: dense.view(t.shape)}
    if enc == "bitmask":
        bits = np.zeros(numel, dtype=np.bool_)
        bits[t.flat.cpu().numpy()] = True
        packed = torch.from_numpy(np.packbits(bits, bitorder="big"))
        return enc, {f"{name}{_SEP}bitmask": packed, f"{name}{_SEP}values": vals}
    row = torch.div(t.flat, cols, rounding_mode="floor") if cols else t.flat
    crow = torch.zeros(rows + 1, dtype=torch.int64)
    if nnz:
        crow[1:] = torch.bincount(row.cpu(), minlength=rows).cumsum(0)
    col = (t.flat - row * cols).to(col_dt)
    return enc, {
        f"{name}{_SEP}crow": crow.to(crow_dt),
        f"{name}{_SEP}col": col,
        f"{name}{_SEP}values": vals,
    }


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def save_compressed(
    model: nn.Module,
    path: str | os.PathLike[str],
    *,
    masks: dict[str, torch.Tensor] | None = None,
    require_sparse: bool = True,
) -> dict[str, str]:
    """Write ``model``'s state as a compressed safetensors checkpoint (format in module doc).

    Masks come from, in order: ``masks``, the attached hard-mask method's masks, a sparse
    layer's pattern; other floating tensors are compressed by their nonzeros when smaller.

    Args:
        model: The model (squashed, with a hard-mask method attached, or with sparse layers).
        path: Destination file; replaced atomically.
        masks: ``bool`` masks by state-dict name (live entries may be zero).
        require_sparse: Raise if no tensor ends up sparse-encoded (nothing to compress).

    Returns:
        The encoding chosen per tensor name.

    Raises:
        ValueError: A method that keeps pruned weights dense is attached (squash first), a mask
            name or shape does not match, weights are nonzero outside their mask, or nothing
            is sparse while ``require_sparse``.
    """
    state = _logical_state(model)
    all_masks = dict(_method_masks(model))
    all_masks.update(masks or {})
    for name, m in all_masks.items():
        if name not in state:
            raise ValueError(f"mask {name!r} names no tensor of the model; valid: {list(state)}")
        shape = state[name].shape
        if (
            not isinstance(m, torch.Tensor)
            or m.dtype != torch.bool
            or tuple(m.shape) != tuple(shape)
        ):
            raise ValueError(f"mask {name!r} must be a bool tensor of shape {tuple(shape)}")
    tensors: dict[str, torch.Tensor] = {}
    entries, chosen = [], {}
    seen: set[int] = set()
    for name, t in state.items():
        mask = all_masks.get(name)
        enc, arrays = _encode(name, t, None if mask is None else mask.cpu())
        nm_of = {}
        if enc.startswith("nm:"):
            _, n, m = enc.split(":")
            enc, nm_of = "nm", {"n": int(n), "m": int(m)}
        for key, arr in arrays.items():
            arr = arr.detach().cpu().contiguous()
            if arr.data_ptr() in seen and arr.numel():  # tied tensors: safetensors wants copies
                arr = arr.clone()
            seen.add(arr.data_ptr())
            tensors[key] = arr
        values = arrays.get(f"{name}{_SEP}values", arrays.get(name))
        nnz = values.numel() if enc != "dense" else int((values != 0).sum())
        entry = {
            "name": name,
            "encoding": enc,
            "shape": list(t.shape),
            "dtype": _dtype_name(values.dtype),
            "nnz": nnz,
        }
        entries.append(entry | nm_of)
        chosen[name] = enc
    if require_sparse and all(e == "dense" for e in chosen.values()):
        raise ValueError(
            f"nothing to compress in {type(model).__name__}: no tensor has zeros and no "
            "method or mask is given; pass require_sparse=False to store it dense"
        )
    version = FORMAT_VERSION if "nm" in chosen.values() else 1  # version-1 readers read the rest
    header = {"format": FORMAT, "format_version": version, "tensors": entries}
    _atomic_save(tensors, {"sparsetrain": json.dumps(header)}, Path(path))
    return chosen


def _method_masks(model: nn.Module) -> dict[str, torch.Tensor]:
    method = attached_method(model)
    if method is None:
        return {}
    if not method.hard_mask:
        raise ValueError(
            f"the attached {method.name!r} method keeps pruned weights dense; call "
            "squash(model) before save_compressed"
        )
    return {t.name: t.mask for t in method.targets}


def _atomic_save(tensors: dict[str, torch.Tensor], metadata: dict[str, str], path: Path) -> None:
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)


# ---------------------------------------------------------------------------------- loading


def _corrupt(path: Path, why: str) -> ValueError:
    return ValueError(f"corrupt or truncated compressed checkpoint {str(path)!r}: {why}")


def _read(path: Path) -> tuple[list[dict[str, Any]], dict[str, torch.Tensor]]:
    if not path.exists():
        raise FileNotFoundError(f"no such checkpoint: {str(path)!r}")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            arrays = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (not a dict)
    except Exception as err:
        raise _corrupt(path, f"{type(err).__name__}: {err}") from err
    try:
        header = json.loads(meta["sparsetrain"])
    except (KeyError, json.JSONDecodeError) as err:
        raise _corrupt(path, "no sparsetrain header (not written by save_compressed)") from err
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise _corrupt(path, f"header format is not {FORMAT!r}")
    version = header.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ValueError(
            f"{str(path)!r} has format version {version!r}; this sparsetrain reads versions "
            f"<= {FORMAT_VERSION}"
        )
    entries = header.get("tensors")
    if not isinstance(entries, list):
        raise _corrupt(path, "header has no tensor list")
    return entries, arrays


def _decode(
    path: Path, e: dict[str, Any], arrays: dict[str, torch.Tensor]
) -> _Sparse | torch.Tensor:
    """One tensor: a dense tensor (dense encoding) or its live positions and values."""
    try:
        name, enc, shape = e["name"], e["encoding"], tuple(int(d) for d in e["shape"])
    except (KeyError, TypeError, ValueError) as err:
        raise _corrupt(path, f"bad tensor entry {e!r}") from err
    numel = math.prod(shape)
    get = arrays.get
    if enc == "dense":
        t = get(name)
        if t is None or tuple(t.shape) != shape:
            raise _corrupt(path, f"dense tensor {name!r} missing or mis-shaped")
        return t
    values = get(f"{name}{_SEP}values")
    if values is None or values.dim() != 1:
        raise _corrupt(path, f"values of {name!r} missing")
    if enc == "bitmask":
        packed = get(f"{name}{_SEP}bitmask")
        if packed is None or packed.dtype != torch.uint8 or packed.numel() != math.ceil(numel / 8):
            raise _corrupt(path, f"bitmask of {name!r} missing or of the wrong length")
        bits = np.unpackbits(packed.numpy(), count=numel, bitorder="big").astype(np.bool_)
        flat = torch.from_numpy(np.flatnonzero(bits))
    elif enc == "nm":
        pattern = get(f"{name}{_SEP}pattern")
        try:
            flat = decode_nm(shape, pattern, int(e["n"]), int(e["m"]))
        except (KeyError, TypeError, ValueError) as err:
            raise _corrupt(path, f"N:M pattern of {name!r}: {err}") from err
    elif enc == "csr":
        crow, col = get(f"{name}{_SEP}crow"), get(f"{name}{_SEP}col")
        rows = shape[0] if len(shape) >= 2 else 1
        cols = numel // rows if rows else 0
        if crow is None or col is None:
            raise _corrupt(path, f"CSR arrays of {name!r} missing")
        try:
            s = structure_from_csr(crow, col, (rows, cols))
        except ValueError as err:
            raise _corrupt(path, f"{name!r}: {err}") from err
        flat = flat_indices(s)
    else:
        raise _corrupt(path, f"unknown encoding {enc!r} for {name!r}; valid: {ENCODINGS}")
    if flat.numel() != values.numel():
        n_live, n_val = flat.numel(), values.numel()
        raise _corrupt(path, f"{name!r} has {n_live} live positions but {n_val} values")
    return _Sparse(shape, flat.to(torch.int64), values)


def load_compressed(
    model: nn.Module, path: str | os.PathLike[str], *, strict: bool = True
) -> dict[str, torch.Tensor]:
    """Load a :func:`save_compressed` checkpoint into ``model`` (in place).

    Names and shapes must match the model exactly (sparse layers take any nnz: their pattern is
    rebuilt). With a hard-mask method attached, its masks are set from the file too.

    Args:
        model: A model of the same architecture (dense or with sparse layers).
        path: The checkpoint.
        strict: Also require equal dtypes.

    Returns:
        The ``bool`` mask of every sparse-encoded tensor, by name.

    Raises:
        ValueError: The file is corrupt or truncated, or the first tensor whose name, shape
            (or dtype) differs between the model and the file, named.
        FileNotFoundError: ``path`` does not exist.
    """
    p = Path(path)
    entries, arrays = _read(p)
    state = _logical_state(model)
    file_entries = {}
    for e in entries:
        if not isinstance(e, dict) or "name" not in e:
            raise _corrupt(p, f"bad tensor entry {e!r}")
        file_entries[e["name"]] = e
    for name, t in state.items():
        e = file_entries.get(name)
        if e is None:
            raise ValueError(f"model tensor {name!r} is missing from {str(p)!r}")
        if list(e.get("shape", [])) != list(t.shape):
            raise ValueError(
                f"tensor {name!r} has shape {tuple(e.get('shape', []))} in {str(p)!r} but "
                f"{tuple(t.shape)} in the model"
            )
        dtype = _dtype_name(t.values.dtype if isinstance(t, _Sparse) else t.dtype)
        if strict and e.get("dtype") != dtype:
            raise ValueError(
                f"tensor {name!r} is {e.get('dtype')} in {str(p)!r} but {dtype} in the model"
            )
    extra = [n for n in file_entries if n not in state]
    if extra:
        raise ValueError(f"checkpoint tensor {extra[0]!r} is not in the model ({len(extra)} extra)")
    decoded = {name: _decode(p, file_entries[name], arrays) for name in state}
    return _apply(model, state, decoded)


def _apply(
    model: nn.Module,
    state: dict[str, torch.Tensor | _Sparse],
    decoded: dict[str, torch.Tensor | _Sparse],
) -> dict[str, torch.Tensor]:
    sparse_mods = _sparse_modules(model)
    plain: dict[str, torch.Tensor] = {}
    masks: dict[str, torch.Tensor] = {}
    for name, d in decoded.items():
        if isinstance(d, _Sparse):
            mask = torch.zeros(d.numel, dtype=torch.bool)
            mask[d.flat] = True
            masks[name] = mask.view(d.shape)
            prefix = name[: -len("weight")] if name.endswith("weight") else None
            mod = sparse_mods.get(prefix) if prefix is not None else None
            if mod is not None and isinstance(state[name], _Sparse):
                _load_sparse_layer(mod, masks[name], d)
                continue
            dense = d.values.new_zeros(d.numel)
            dense[d.flat] = d.values
            plain[name] = dense.view(d.shape)
        else:
            plain[name] = d
    own = model.state_dict()
    for name, t in plain.items():
        plain[name] = t.to(dtype=own[name].dtype, device=own[name].device)
    model.load_state_dict(plain, strict=False)
    method = attached_method(model)
    if method is not None:
        for t in method.targets:
            if t.name in masks:
                t.mask.copy_(masks[t.name].to(t.mask.device))
    return masks


def _load_sparse_layer(
    mod: SparseLinear | SparseInferenceLinear, mask: torch.Tensor, d: _Sparse
) -> None:
    dense = d.values.new_zeros(d.numel)
    dense[d.flat] = d.values
    dense = dense.view(d.shape)
    if isinstance(mod, SparseLinear):
        mod.set_structure(mask, values=dense.to(mod.values.device))
    else:
        fresh = SparseInferenceLinear(dense, None, mask)
        mod._set_buffers(fresh.structure)
        mod.values = fresh.values.to(mod.values.dtype)
