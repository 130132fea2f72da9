"""FSDP2: per-rank method memory and the time of one RigL topology update, world 1, 2, 4.

    .venv/bin/python benchmarks/fsdp_update.py              # GPT-2-small-shaped blocks (~85M)
    .venv/bin/python benchmarks/fsdp_update.py --blocks 2   # a quick run

The model is a stack of GPT-2-small-shaped MLP/attention projections (per block: 768 -> 2304,
768 -> 768, 768 -> 3072, 3072 -> 768; 12 blocks = 85M weights, random init), every Linear
sharded with ``fully_shard`` and then the root, on gloo CPU processes. RigL (90%, gradient
growth) is attached; one topology update (``update_topology``: sharded drop of the lowest |w|,
sharded growth of the largest |g|) is timed on every rank (median of ``--repeats``, the slowest
rank reported). Reported per rank: bytes of the masks and of the method's state tensors (the
masks; a RigL update also holds the batch's gradient, a shard of it). ``world 1 (plain)`` is
the same update without FSDP on one process: the baseline of the "≤ 1.5×" goal. Processes
share the machine's cores: on a 2-core machine world 4 runs 4 processes on 2 cores.
"""

from __future__ import annotations

import argparse
import datetime
import os
import statistics
import tempfile
import time

import _machine
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

import sparsetrain
from sparsetrain.masking.sharded import from_full, local_of

SHAPES = [(2304, 768), (768, 768), (3072, 768), (768, 3072)]


def build(blocks: int) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(*[nn.Linear(i, o, bias=False) for _ in range(blocks) for o, i in SHAPES])


def measure(model: nn.Module, repeats: int) -> dict[str, float]:
    method = sparsetrain.create_method(
        "rigl", sparsity=0.9, total_steps=1000, update_interval=100
    ).attach(model)
    grads = {}
    g = torch.Generator().manual_seed(1)
    for t in method.targets:
        full = torch.randn(t.shape, generator=g)
        grads[t.name] = from_full(full, t.param)
    times = []
    for r in range(repeats):
        t0 = time.perf_counter()
        method.update_topology(100 * (r + 1), grads)
        times.append(time.perf_counter() - t0)
    local = [local_of(t.mask) for t in method.targets]
    mask_bytes = sum(m.numel() * m.element_size() for m in local)
    grad_bytes = sum(local_of(x).numel() * 4 for x in grads.values())
    return {
        "update_s": statistics.median(times),
        "mask_bytes": mask_bytes,
        "grad_bytes": grad_bytes,
    }


def worker(rank: int, world: int, out: str, blocks: int, repeats: int) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"file://{out}/rdv{world}",
        rank=rank,
        world_size=world,
        timeout=datetime.timedelta(seconds=1800),
    )
    from torch.distributed.fsdp import fully_shard

    model = build(blocks)
    for layer in model:
        fully_shard(layer)
    fully_shard(model)
    r = measure(model, repeats)
    torch.save(r, f"{out}/w{world}-r{rank}.pt")
    dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blocks", type=int, default=12)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--worlds", type=int, nargs="+", default=[1, 2, 4])
    _machine.add_arguments(parser)
    args = parser.parse_args()
    load = _machine.MachineLoad.start(args)
    torch.set_num_threads(1)
    n = sum(o * i for o, i in SHAPES) * args.blocks
    plain = measure(build(args.blocks), args.repeats)
    rows = [("1 (plain, no FSDP)", plain["update_s"], plain["mask_bytes"], plain["grad_bytes"])]
    with tempfile.TemporaryDirectory() as out:
        for world in args.worlds:
            mp.spawn(worker, args=(world, out, args.blocks, args.repeats), nprocs=world)
            rs = [torch.load(f"{out}/w{world}-r{r}.pt") for r in range(world)]
            rows.append(
                (
                    str(world),
                    max(r["update_s"] for r in rs),
                    max(r["mask_bytes"] for r in rs),
                    max(r["grad_bytes"] for r in rs),
                )
            )
    print(f"RigL 90% on {n / 1e6:.1f}M weights ({args.blocks} GPT-2-small blocks), gloo CPU")
    print(
        "| world | update (s, slowest rank) | vs plain | mask bytes / rank | vs plain | "
        "held gradient bytes / rank |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    for name, s, mb, gb in rows:
        print(
            f"| {name} | {s:.2f} | {s / plain['update_s']:.2f} | {mb / 1e6:.1f} MB | "
            f"{mb / plain['mask_bytes']:.3f} | {gb / 1e6:.1f} MB |"
        )
    load.finish()


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
