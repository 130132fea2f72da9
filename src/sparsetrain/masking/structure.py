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

import math
from collections.abc import Sequence
from dataclasses import dataclass

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


def ungroup(groups: torch.Tensor, shape: Sequence[int], dim: int = 1) -> torch.Tensor:
    """Inverse of :func:`nm_groups`: a ``(numel / m, m)`` tensor back to ``shape``."""
    return _ungroup(groups, shape, _dim(shape, dim, "tensor"))


def _ungroup(groups: torch.Tensor, shape: Sequence[int], dim: int) -> torch.Tensor:
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


# ---------------------------------------------------------------------------- the structure type

STRUCTURE_FORMS = (
    "'unstructured', an 'N:M' pattern such as '2:4', or 'block:RxC' such as 'block:4x4'"
)


@dataclass(frozen=True)
class Structure:
    """What a mask's live entries must form: any set, N of every M, or whole blocks.

    Attributes:
        kind: ``"unstructured"``, ``"nm"`` or ``"block"``.
        n: Entries kept per group (N:M).
        m: Group size (N:M).
        rows: Block height: consecutive output rows (block).
        cols: Block width: consecutive columns of the weight's matrix view (block).

    A block lives on the *matrix view* of a weight (:func:`matrix_view`): for a Linear its
    ``(out, in)``; for a Conv ``(out, kh·kw·in)`` with the columns in NHWC order, as an im2col
    GEMM reads them. Build one with :func:`parse_structure`.
    """

    kind: str = "unstructured"
    n: int = 1
    m: int = 1
    rows: int = 1
    cols: int = 1

    def __str__(self) -> str:
        if self.kind == "nm":
            return f"{self.n}:{self.m}"
        if self.kind == "block":
            return f"block:{self.rows}x{self.cols}"
        return "unstructured"

    @property
    def structured(self) -> bool:
        """Whether the structure constrains the mask at all."""
        return self.kind != "unstructured"

    @property
    def unit(self) -> int:
        """Entries per selectable unit: a block's size; 1 otherwise."""
        return self.rows * self.cols if self.kind == "block" else 1

    def check(self, shape: Sequence[int], *, dim: int = 1, name: str = "tensor") -> None:
        """Raise unless a tensor of ``shape`` can carry this structure (one line, naming it)."""
        if self.kind == "nm":
            check_divisible(shape, self.m, dim=dim, name=name)
        elif self.kind == "block":
            r, c = _matrix_shape(shape, dim, name)
            if r % self.rows or c % self.cols:
                raise ValueError(
                    f"{name!r} (shape {tuple(shape)}, matrix view {r}x{c}) cannot be cut into "
                    f"{self.rows}x{self.cols} blocks: {r} rows and {c} columns must be divisible "
                    f"by {self.rows} and {self.cols}; keep it dense with exclude=[{name!r}]"
                )

    def units(self, shape: Sequence[int]) -> int:
        """Selectable units of a tensor of ``shape`` (entries, groups or blocks)."""
        numel = math.prod(shape)
        if self.kind == "nm":
            return numel // self.m
        return numel // self.unit

    def keep_count(self, shape: Sequence[int], density: float) -> int:
        """Live entries of a tensor of ``shape`` at ``density``, as the structure rounds it.

        N:M: N·numel/M whatever the density (the pattern fixes it); block: whole blocks.
        """
        if self.kind == "nm":
            return math.prod(shape) // self.m * self.n
        units = self.units(shape)
        return round(density * units) * self.unit


def parse_structure(value: object) -> Structure:
    """A :class:`Structure` from ``"unstructured"``, ``"N:M"``, ``"block:RxC"`` or ``(R, C)``.

    Raises:
        ValueError: Anything else (one line naming the value and the valid forms).

    >>> str(parse_structure("2:4")), str(parse_structure((4, 4))), parse_structure(None).kind
    ('2:4', 'block:4x4', 'unstructured')
    """
    if value is None or isinstance(value, Structure):
        return value or Structure()
    if isinstance(value, (tuple, list)):
        ok = len(value) == 2 and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
        if not ok or min(value) < 1:
            raise ValueError(f"bad block shape {value!r}; valid: a pair of ints >= 1, e.g. (4, 4)")
        return Structure("block", rows=value[0], cols=value[1])
    if not isinstance(value, str):
        raise ValueError(f"bad structure {value!r}; valid: {STRUCTURE_FORMS}")
    text = value.strip().lower()
    if text == "unstructured":
        return Structure()
    if text.startswith("block:"):
        parts = text[6:].split("x")
        if len(parts) != 2 or not all(p.strip().isdecimal() and int(p) > 0 for p in parts):
            raise ValueError(f"bad block structure {value!r}; valid: {STRUCTURE_FORMS}")
        return Structure("block", rows=int(parts[0]), cols=int(parts[1]))
    if ":" in text:
        try:
            n, m = parse_nm(text)
        except ValueError:
            raise ValueError(f"bad structure {value!r}; valid: {STRUCTURE_FORMS}") from None
        return Structure("nm", n=n, m=m)
    raise ValueError(f"bad structure {value!r}; valid: {STRUCTURE_FORMS}")


# ---------------------------------------------------------------------------- blocks


def _matrix_shape(shape: Sequence[int], dim: int, name: str) -> tuple[int, int]:
    d = _dim(shape, dim, name)
    moved = [s for i, s in enumerate(shape) if i != d] + [shape[d]]
    return moved[0], math.prod(moved[1:])


def matrix_view(x: torch.Tensor, *, dim: int = 1) -> torch.Tensor:
    """``x`` as the 2-D matrix blocks and exported N:M tensors live on: ``(rows, columns)``.

    The grouped dimension ``dim`` moves last, the first remaining dimension gives the rows
    (Linear ``(out, in)`` as is; Conv ``(out, kh·kw·in)``; ConvTranspose, ``dim=0``,
    ``(out, k·in)``). A copy unless ``x`` is 2-D with ``dim=1``.
    """
    d = _dim(x.shape, dim, "tensor")
    moved = x.movedim(d, -1)
    return moved.reshape(moved.shape[0], -1)


def from_matrix(mat: torch.Tensor, shape: Sequence[int], *, dim: int = 1) -> torch.Tensor:
    """Inverse of :func:`matrix_view`: back to ``shape`` (contiguous)."""
    d = _dim(shape, dim, "tensor")
    moved = [s for i, s in enumerate(shape) if i != d] + [shape[d]]
    return mat.reshape(moved).movedim(-1, d).contiguous()


def block_scores(scores: torch.Tensor, rows: int, cols: int, *, dim: int = 1) -> torch.Tensor:
    """The summed score of every ``rows x cols`` block of the matrix view: a coarse matrix."""
    mat = matrix_view(scores.detach(), dim=dim)
    r, c = mat.shape
    return mat.reshape(r // rows, rows, c // cols, cols).sum((1, 3), dtype=torch.float64)


def block_any(mask: torch.Tensor, rows: int, cols: int, *, dim: int = 1) -> torch.Tensor:
    """Per block of the matrix view: whether any entry of ``mask`` is set (coarse ``bool``)."""
    mat = matrix_view(mask, dim=dim)
    r, c = mat.shape
    return mat.reshape(r // rows, rows, c // cols, cols).any(3).any(1)


def expand_blocks(
    coarse: torch.Tensor, rows: int, cols: int, shape: Sequence[int], *, dim: int = 1
) -> torch.Tensor:
    """A coarse per-block ``bool`` matrix spread over its blocks, in the weight's ``shape``."""
    full = coarse.repeat_interleave(rows, 0).repeat_interleave(cols, 1)
    return from_matrix(full, shape, dim=dim)


# ---------------------------------------------------------------------------- varying counts


def group_top(
    scores: torch.Tensor,
    counts: torch.Tensor | int,
    m: int,
    *,
    candidates: torch.Tensor | None = None,
    dim: int = 1,
) -> torch.Tensor:
    """In every group of ``m``: the ``counts[g]`` highest scores among the candidates.

    Args:
        scores: Scores of the weight's shape; ``NaN`` counts as lowest.
        counts: Entries to mark per group: an int, or one per group (in :func:`nm_groups`
            order); never more than the group's candidates.
        m: Group size.
        candidates: Optional ``bool`` of the weight's shape; only these are marked.
        dim: The grouped dimension.

    Returns:
        A ``bool`` mask of ``scores``' shape. Ties: the lower index in the group wins; every
        candidate outranks every non-candidate.

    >>> group_top(torch.tensor([[1.0, 4, 3, 2]]), 1, 4, candidates=torch.tensor([[1, 0, 1, 1]]) > 0)
    tensor([[False, False,  True, False]])
    """
    d = _dim(scores.shape, dim, "tensor")
    groups = nm_groups(scores.detach(), m, dim=dim)
    groups = torch.nan_to_num(groups.float(), nan=-torch.inf)
    if candidates is None and isinstance(counts, int):  # the plain N:M mask (faster ranks)
        return _ungroup(_top_n(groups, counts), scores.shape, d)
    # lexicographic order (candidate first, then score, then the lower index): two stable sorts
    order = torch.sort(groups, dim=1, descending=True, stable=True).indices
    if candidates is not None:
        cand = nm_groups(candidates, m, dim=dim)
        by_cand = torch.sort(
            cand.gather(1, order).to(torch.uint8), dim=1, descending=True, stable=True
        )
        order = order.gather(1, by_cand.indices)
    position = torch.empty_like(order).scatter_(
        1, order, torch.arange(m, device=order.device).expand_as(order).contiguous()
    )
    limit = counts if isinstance(counts, int) else counts.view(-1, 1)
    out = position < limit
    if candidates is not None:
        out &= cand
    return _ungroup(out, scores.shape, d)


def group_counts(mask: torch.Tensor, m: int, *, dim: int = 1) -> torch.Tensor:
    """Set entries of ``mask`` per group of ``m`` (in :func:`nm_groups` order)."""
    return nm_groups(mask, m, dim=dim).sum(1)
