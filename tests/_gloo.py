"""The process group every multi-process test worker starts (gloo on CPU, one thread)."""

from __future__ import annotations

import datetime

import torch
import torch.distributed as dist


def init(rank: int, world: int, rendezvous: str, *, timeout_s: int = 300) -> None:
    """Join a gloo group through the file ``rendezvous``; a stuck collective fails, not hangs."""
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"file://{rendezvous}",
        rank=rank,
        world_size=world,
        timeout=datetime.timedelta(seconds=timeout_s),
    )
