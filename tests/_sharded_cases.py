"""Worker of tests/test_sharded.py: sharded top-k selections on 2 or 3 gloo processes.

Every rank builds the same full tensors from a seed, keeps its ``torch.chunk`` rows (the rows
FSDP2 gives it; rows not divisible by the world size) and selects on them alone; it saves its
local masks, which the test reassembles and compares with the one-process selection.
"""

from __future__ import annotations

import traceback
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

import _gloo
from sparsetrain.masking.sharded import sharded_topk

SHAPES = [(7, 5), (10, 3), (1, 8), (5, 4), (301, 97)]  # 1 row: ranks without rows; the last
# is large enough (29,197 entries) for the sampled bracket before the bisection


def tensors(seed: int, ties: bool) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    if ties:  # few distinct values: the cut falls inside a run of ties
        return [torch.randint(-3, 4, s, generator=g).float() for s in SHAPES[:-1]] + [
            torch.randint(-200, 200, SHAPES[-1], generator=g).float()
        ]
    return [torch.randn(s, generator=g) for s in SHAPES]


def candidates(seed: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed + 1)
    return [torch.rand(s, generator=g) < 0.6 for s in SHAPES]


def chunk(t: torch.Tensor, rank: int, world: int) -> torch.Tensor:
    parts = torch.chunk(t, world, dim=0)
    return parts[rank] if rank < len(parts) else t[:0]


CASES: dict[str, dict[str, Any]] = {
    "layer": {"ties": False, "ks": [9, 4, 3, 0, 2920], "cand": False, "largest": True},
    "layer-ties": {"ties": True, "ks": [20, 15, 5, 11, 14000], "cand": False, "largest": True},
    "layer-ties-smallest": {
        "ties": True,
        "ks": [3, 29, 8, 20, 700],
        "cand": False,
        "largest": False,
    },
    "layer-candidates": {"ties": True, "ks": [10, 7, 2, 6, 9000], "cand": True, "largest": False},
    "global-ties": {"ties": True, "ks": 2950, "cand": False, "largest": True},
    "global-candidates": {"ties": True, "ks": 16000, "cand": True, "largest": True},
}


def select(case: str, rank: int, world: int) -> list[torch.Tensor]:
    c = CASES[case]
    full = tensors(3, c["ties"])
    cand = candidates(3) if c["cand"] else None
    local = [chunk(t, rank, world) for t in full]
    local_c = None if cand is None else [chunk(m, rank, world) for m in cand]
    return sharded_topk(local, c["ks"], candidates=local_c, largest=c["largest"])


def run(rank: int, world: int, out: str) -> None:
    """Entry point of ``torch.multiprocessing.spawn``."""
    _gloo.init(rank, world, f"{out}/rendezvous")
    try:
        for case in CASES:
            try:
                result: Any = select(case, rank, world)
            except Exception:
                result = {"crash": traceback.format_exc()}
            torch.save(result, Path(out) / f"{case}-{rank}.pt")
            dist.barrier()
    finally:
        dist.destroy_process_group()
