"""Layer-wise density allocation: how many weights each tensor keeps for a global sparsity.

Every allocation returns exact integer keep-counts whose sum is
``round((1 - sparsity) * total)`` and each of which is within one weight of the real-valued
allocation (largest-remainder rounding), so "hits the global target exactly" holds by
construction.

- ``uniform``: every tensor has the global density.
- ``er``: Erdős–Rényi, density ∝ (n_in + n_out) / (n_in · n_out) (kernel dims ignored).
- ``erk``: Erdős–Rényi-Kernel, density ∝ Σ dims / Π dims (Evci et al., ICML 2020), with the
  Fantastic Weights code's iterative rule (``ERK_initializer``): while the scaled density of the
  largest-ratio layer exceeds 1, make it dense and solve again for the rest.
- ``global``: no per-tensor quota; uniform densities are returned as a starting point and the
  methods select with one global ranking.

Fan-in and fan-out of each kind of tensor (the dims the ``er``/``erk`` ratios use):

- ``Linear`` ``(out, in)`` and ``Conv`` ``(out, in/groups, k...)``: the stored dims, as the
  official code; ``er`` uses ``n_out = shape[0]``, ``n_in = shape[1]``.
- ``ConvTranspose`` ``(in, out/groups, k...)``: the stored dims too. Both ratios are symmetric
  in the dims, so it gets the ratio of the ``Conv`` with the same channels and kernel.
- Fused weights of ``blocks`` equal matrices stacked along dim 0: ``MultiheadAttention``'s
  ``in_proj_weight`` ``(3E, E)`` (query, key, value: 3 blocks), LSTM ``weight_ih_l*`` /
  ``weight_hh_l*`` ``(4H, in)`` (4 gates), GRU ``(3H, in)`` (3 gates): the ratio of one block,
  ``(shape[0] / blocks, shape[1], ...)``, so a fused projection gets the density it would get
  as separate ``Linear`` layers. Callers pass ``blocks`` (``Target.blocks``); default 1.
- Any other tensor of >= 2 dims: its stored dims.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from sparsetrain.checks import SPARSITY
from sparsetrain.types import ShapeDict

DISTRIBUTIONS = ("uniform", "er", "erk", "global")


def _raw_ratio(shape: tuple[int, ...], kind: str, power: float, blocks: int = 1) -> float:
    if blocks != 1:
        if isinstance(blocks, bool) or not isinstance(blocks, int) or blocks < 1:
            raise ValueError(f"blocks must be a positive int, got {blocks!r}")
        if shape[0] % blocks:
            raise ValueError(f"shape {shape} does not split into {blocks} blocks along dim 0")
        shape = (shape[0] // blocks, *shape[1:])
    if kind == "er":
        n_out, n_in = shape[0], shape[1]
        return (n_in + n_out) / (n_in * n_out)
    return (sum(shape) / math.prod(shape)) ** power


def allocate_densities(
    shapes: ShapeDict,
    sparsity: float,
    kind: str = "erk",
    *,
    erk_power: float = 1.0,
    blocks: Mapping[str, int] | None = None,
) -> dict[str, float]:
    """Real-valued per-tensor densities whose weighted mean is ``1 - sparsity``.

    Args:
        shapes: Tensor name to shape, in model order.
        sparsity: Global sparsity over these tensors, in [0, 1).
        kind: One of ``uniform``, ``er``, ``erk``, ``global``.
        erk_power: Exponent on the ERK ratio (1 in the official code).
        blocks: Tensor name to the number of matrices stacked along dim 0 (fused attention
            and recurrent weights; see the module docstring); missing names: 1.

    Returns:
        Tensor name to density in [0, 1].
    """
    SPARSITY("allocate", "sparsity", sparsity)
    sparsity = float(sparsity)
    if kind not in DISTRIBUTIONS:
        raise ValueError(f"unknown distribution {kind!r}; valid: {', '.join(DISTRIBUTIONS)}")
    density = 1.0 - sparsity
    if kind in ("uniform", "global"):
        return dict.fromkeys(shapes, density)
    sizes = {n: math.prod(s) for n, s in shapes.items()}
    fused = blocks or {}
    raw = {n: _raw_ratio(tuple(s), kind, erk_power, fused.get(n, 1)) for n, s in shapes.items()}
    total = sum(sizes.values())
    dense: set[str] = set()
    while True:
        budget = density * total - sum(sizes[n] for n in dense)
        denom = sum(raw[n] * sizes[n] for n in shapes if n not in dense)
        eps = budget / denom if denom > 0 else 0.0
        over = [n for n in shapes if n not in dense and eps * raw[n] > 1.0]
        if not over:
            break
        top = max(raw[n] for n in over)
        dense.update(n for n in over if raw[n] == top)
    return {n: 1.0 if n in dense else eps * raw[n] for n in shapes}


def densities_to_counts(
    shapes: ShapeDict, densities: Mapping[str, float], total_keep: int | None = None
) -> dict[str, int]:
    """Integer keep-counts from real densities by largest-remainder rounding.

    Args:
        shapes: Tensor name to shape.
        densities: Tensor name to density.
        total_keep: Exact total to hit; defaults to the rounded sum of the real counts.

    Returns:
        Tensor name to number of active weights; each within one of ``density * numel``.
    """
    names = list(shapes)
    sizes = np.array([math.prod(shapes[n]) for n in names], dtype=np.float64)
    real = np.clip(np.array([densities[n] for n in names]) * sizes, 0, sizes)
    counts = np.floor(real).astype(np.int64)
    target = round(real.sum()) if total_keep is None else total_keep
    short = int(target - counts.sum())
    if short > 0:
        room = counts < sizes
        frac = np.where(room, real - counts, -1.0)
        # stable order: largest remainder first, ties by model order
        for i in np.argsort(-frac, kind="stable")[:short]:
            counts[i] += 1
    return {n: int(c) for n, c in zip(names, counts, strict=True)}


def allocate(
    shapes: ShapeDict,
    sparsity: float,
    kind: str = "erk",
    *,
    erk_power: float = 1.0,
    blocks: Mapping[str, int] | None = None,
) -> dict[str, int]:
    """Per-tensor keep-counts for a global ``sparsity`` (see module docstring).

    >>> allocate({"a": (10, 10), "b": (10, 10)}, 0.5, "uniform")
    {'a': 50, 'b': 50}
    """
    dens = allocate_densities(shapes, sparsity, kind, erk_power=erk_power, blocks=blocks)
    total = sum(math.prod(s) for s in shapes.values())
    return densities_to_counts(shapes, dens, round((1.0 - sparsity) * total))
