"""N:M structured sparsity: the grouping rule and the exact N-of-M mask.

An N:M pattern keeps exactly N entries in every group of M consecutive entries along one
dimension of a weight, the layout sparse tensor cores execute (2:4 on NVIDIA Ampere and later).

The grouping rule
-----------------
A group is M consecutive entries along the *grouped dimension* ``dim``, with every other index
fixed. :func:`nm_groups` moves ``dim`` to the end (the other dimensions keep their order) and
cuts the result into rows of M:

- ``Linear`` weight ``(out, in)``, ``dim=1``: M consecutive inputs of one output row.
- ``Conv`` weight ``(out, in, kh, kw)``, ``dim=1``: permuted to ``(out, kh, kw, in)`` and
  flattened per output, so a group is M consecutive *input channels* at one kernel position
  (the NHWC layout of Zhou et al.'s released code and of NVIDIA's ASP). ``Conv1d``/``Conv3d``
  likewise, with one or three kernel dimensions.
- Any other >= 2-D tensor: the same rule; for a 2-D matrix ``dim=1`` is its last dimension
  (``MultiheadAttention.in_proj_weight``, RNN weights, embeddings: per row). ``ConvTranspose``
  stores ``(in, out/groups, k...)`` and reduces over ``in``: pass ``dim=0`` for groups of input
  channels (the method layer does).

The grouped dimension must be divisible by M (a group never straddles a kernel position or a
row); otherwise :func:`check_divisible` raises, naming the tensor and ``exclude=[...]``.

Exporting: ``torch.sparse.to_sparse_semi_structured`` takes a 2-D ``(out, in)`` matrix with
groups along its last dimension, so a Conv weight must be reshaped as
``w.movedim(1, -1).reshape(out, -1)`` to keep the groups of training.

This module is pure tensor code and knows nothing about methods.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

_RANK_MAX_M = 8  # up to this M the mask comes from pairwise ranks (faster than a sort on CPU)


def check_nm(n: object, m: object) -> None:
    """Raise unless ``n`` and ``m`` are ints with ``0 < n <= m``.

    Raises:
        TypeError: ``n`` or ``m`` is not an int (a bool is not).
        ValueError: ``0 < n <= m`` does not hold.
    """
    for label, v in (("N", n), ("M", m)):
        if isinstance(v, bool) or not isinstance(v, int):
            raise TypeError(f"N:M sparsity needs int N and M, got {label}={v!r}")
    if not 0 < n <= m:  # type: ignore[operator]
        raise ValueError(f"N:M sparsity needs ints 0 < N <= M, got N={n}, M={m}")


def parse_nm(pattern: str) -> tuple[int, int]:
    """Parse an ``"N:M"`` pattern such as ``"2:4"``.

    Args:
        pattern: ``"N:M"`` with ints ``0 < N <= M`` (spaces around the numbers allowed).

    Returns:
        ``(N, M)``.

    Raises:
        ValueError: Anything else (one line naming the value and the valid form).

    >>> parse_nm("2:4")
    (2, 4)
    """
    form = "the form 'N:M' with ints 0 < N <= M, e.g. '2:4'"
    if not isinstance(pattern, str):
        raise ValueError(f"N:M pattern must be a string of {form}, got {pattern!r}")
    parts = pattern.split(":")
    if len(parts) != 2 or not all(p.strip().isdecimal() for p in parts):
        raise ValueError(f"bad N:M pattern {pattern!r}; valid: {form}")
    n, m = (int(p) for p in parts)
    if not 0 < n <= m:
        raise ValueError(f"bad N:M pattern {pattern!r}; valid: {form}")
    return n, m


def _dim(shape: Sequence[int], dim: int, name: str) -> int:
    if len(shape) < 2:
        raise ValueError(
            f"N:M groups need a tensor of >= 2 dims; {name!r} has shape {tuple(shape)}"
        )
    if not -len(shape) <= dim < len(shape):
        raise ValueError(f"dim {dim} is out of range for {name!r} of shape {tuple(shape)}")
    return dim % len(shape)


def check_divisible(shape: Sequence[int], m: int, *, dim: int = 1, name: str = "tensor") -> None:
    """Raise unless ``shape[dim]`` (the grouped dimension) is divisible by ``m``.

    Raises:
        ValueError: One line naming the tensor, its shape, and ``exclude=[name]`` as the way
            to keep it dense.
    """
    d = _dim(shape, dim, name)
    if shape[d] % m:
        raise ValueError(
            f"{name!r} (shape {tuple(shape)}) cannot be cut into N:M groups of M={m}: its "
            f"grouped dimension (dim {d}, the inputs / input channels) has size {shape[d]}, not "
            f"divisible by {m}; keep it dense with exclude=[{name!r}]"
        )


def nm_groups(weight: torch.Tensor, m: int, *, dim: int = 1, name: str = "tensor") -> torch.Tensor:
    """The groups of ``weight``: a ``(numel / m, m)`` tensor, one group per row.

    ``dim`` is moved to the end and the result is cut into rows of ``m`` (module docstring). A
    view when ``dim`` is already last and ``weight`` is contiguous, else a copy.

    Args:
        weight: A tensor of >= 2 dims.
        m: Group size M.
        dim: The grouped dimension (1: Linear inputs, Conv input channels).
        name: The tensor's name, for the error message.

    Raises:
        ValueError: ``weight.shape[dim]`` is not divisible by ``m``.

    >>> w = torch.arange(16.0).view(2, 2, 2, 2)  # Conv (out, in, kh, kw)
    >>> nm_groups(w, 2)[:2].tolist()  # out 0, kernel position (0, 0), then (0, 1)
    [[0.0, 4.0], [1.0, 5.0]]
    """
    check_divisible(weight.shape, m, dim=dim, name=name)
    d = _dim(weight.shape, dim, name)
    return weight.movedim(d, -1).reshape(-1, m)


def _ungroup(groups: torch.Tensor, shape: Sequence[int], dim: int) -> torch.Tensor:
    """Inverse of :func:`nm_groups`: back to ``shape`` (contiguous)."""
    moved = [s for i, s in enumerate(shape) if i != dim] + [shape[dim]]
    return groups.reshape(moved).movedim(-1, dim).contiguous()


def _top_n(groups: torch.Tensor, n: int) -> torch.Tensor:
    """Rows of ``groups``: the ``n`` largest of each marked; ties: the lower index wins."""
    g, m = groups.shape
    if n == m:
        return torch.ones(g, m, dtype=torch.bool, device=groups.device)
    if m <= _RANK_MAX_M:
        # rank_i = #{j: s_j > s_i} + #{j < i: s_j == s_i}; keep rank_i < n. For each pair
        # i < j exactly one beats the other: j if s_j > s_i, else i (a tie: the lower index)
        rank = torch.zeros(g, m, dtype=torch.uint8, device=groups.device)
        j_wins = torch.empty(g, dtype=torch.bool, device=groups.device)
        for i in range(m):
            for j in range(i + 1, m):
                torch.gt(groups[:, j], groups[:, i], out=j_wins)
                rank[:, i].add_(j_wins)
                rank[:, j].add_(j_wins.logical_not_())
        return rank < n
    order = torch.sort(groups, dim=1, descending=True, stable=True).indices[:, :n]
    out = torch.zeros(g, m, dtype=torch.bool, device=groups.device)
    return out.scatter_(1, order, True)


def nm_mask(
    scores: torch.Tensor, n: int, m: int, *, dim: int = 1, name: str = "tensor"
) -> torch.Tensor:
    """Keep exactly the ``n`` highest scores in every group of ``m`` (the N:M mask).

    Args:
        scores: Scores of the weight's shape (e.g. ``|W|``); ``NaN`` counts as lowest.
        n: Entries kept per group, ``0 < n <= m``.
        m: Group size.
        dim: The grouped dimension (see the module docstring; 1 for Linear and Conv).
        name: The tensor's name, for the error messages.

    Returns:
        A ``bool`` mask of ``scores``' shape with exactly ``n`` ``True`` entries per group.
        Ties are broken deterministically: the entry at the lower index in its group wins.

    Raises:
        TypeError, ValueError: Bad ``n``/``m``, or a grouped dimension not divisible by ``m``.

    >>> nm_mask(torch.tensor([[0.1, -0.9, 0.5, 0.2]]).abs(), 2, 4).tolist()
    [[False, True, True, False]]
    """
    check_nm(n, m)
    groups = nm_groups(scores.detach(), m, dim=dim, name=name)
    if groups.is_floating_point():
        groups = torch.nan_to_num(groups, nan=-torch.inf)
    d = _dim(scores.shape, dim, name)
    return _ungroup(_top_n(groups, n), scores.shape, d)
