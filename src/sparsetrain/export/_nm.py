"""The ``"nm"`` encoding of compressed checkpoints: one combination rank per N:M group.

A group of M positions with N live ones is one of C(M, N) subsets; its rank among them (in the
lexicographic order of ``itertools.combinations(range(M), N)``) takes ``ceil(log2 C(M, N))``
bits: 3 at 2:4 and 1:4 (2 bits), against the bitmask's M. The ranks of all groups are written as
one packed bit string (most significant bit first), like the bitmask. Groups follow
:func:`sparsetrain.masking.structure.nm_groups` with ``dim=1``.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Sequence

import numpy as np
import torch

from sparsetrain.masking.structure import nm_groups, ungroup


def _bits(n: int, m: int) -> int:
    return max(math.ceil(math.log2(math.comb(m, n))), 0) if math.comb(m, n) > 1 else 0


@functools.cache
def _tables(n: int, m: int) -> tuple[np.ndarray, np.ndarray]:
    """(rank of each M-bit pattern with N bits set, else -1; the pattern of each rank)."""
    patterns = np.array(
        [sum(1 << j for j in c) for c in itertools.combinations(range(m), n)], dtype=np.int64
    )
    lut = np.full(1 << m, -1, dtype=np.int64)
    lut[patterns] = np.arange(len(patterns))
    return lut, patterns


def nm_bytes(numel: int, n: int, m: int) -> int:
    """Bytes of the packed pattern of a tensor of ``numel`` entries at N:M."""
    return math.ceil(numel // m * _bits(n, m) / 8)


def _mask(shape: Sequence[int], flat: torch.Tensor) -> torch.Tensor:
    mask = torch.zeros(math.prod(shape), dtype=torch.bool)
    mask[flat.cpu()] = True
    return mask.view(*shape)


def detect_nm(
    shape: Sequence[int], flat: torch.Tensor, sizes: Sequence[int]
) -> tuple[int, int] | None:
    """The cheapest ``(N, M)`` (M from ``sizes``) whose groups all hold N live entries, if any."""
    if len(shape) < 2 or not flat.numel():
        return None
    mask = _mask(shape, flat)
    best = None
    for m in sizes:
        if m > 16 or shape[1] % m:
            continue
        counts = nm_groups(mask, m).sum(1)
        n = int(counts[0])
        if n < m and bool((counts == n).all()):
            cost = nm_bytes(mask.numel(), n, m)
            if best is None or cost < best[0]:
                best = (cost, n, m)
    return None if best is None else (best[1], best[2])


def encode_nm(shape: Sequence[int], flat: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """The packed ranks (uint8) of a mask given by its sorted live ``flat`` indices."""
    groups = nm_groups(_mask(shape, flat), m).numpy()
    codes = (groups.astype(np.int64) << np.arange(m)).sum(1)
    ranks = _tables(n, m)[0][codes]
    b = _bits(n, m)
    bits = ((ranks[:, None] >> np.arange(b - 1, -1, -1)) & 1).astype(np.bool_).reshape(-1)
    return torch.from_numpy(np.packbits(bits, bitorder="big"))


def decode_nm(shape: Sequence[int], packed: torch.Tensor | None, n: int, m: int) -> torch.Tensor:
    """Sorted flat live indices from :func:`encode_nm`'s output.

    Raises:
        ValueError: A missing or mis-sized pattern, or a rank out of range.
    """
    numel = math.prod(shape)
    if len(shape) < 2 or m < 1 or not 0 < n < m or shape[1] % m:
        raise ValueError(f"N:M {n}:{m} does not fit shape {tuple(shape)}")
    groups, b = numel // m, _bits(n, m)
    if packed is None or packed.dtype != torch.uint8 or packed.numel() != math.ceil(groups * b / 8):
        raise ValueError("pattern missing or of the wrong length")
    bits = np.unpackbits(packed.numpy(), count=groups * b, bitorder="big").reshape(groups, b)
    ranks = (bits.astype(np.int64) << np.arange(b - 1, -1, -1)).sum(1)
    patterns = _tables(n, m)[1]
    if ranks.size and int(ranks.max()) >= len(patterns):
        raise ValueError("a group's rank is out of range")
    live = (patterns[ranks][:, None] >> np.arange(m)) & 1
    mask = ungroup(torch.from_numpy(live.astype(np.bool_)), shape)
    return mask.reshape(-1).nonzero().squeeze(1)
