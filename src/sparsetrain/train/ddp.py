"""The harness on several processes: ``torchrun --nproc-per-node N -m sparsetrain train ...``.

Under ``torchrun`` (``WORLD_SIZE`` > 1 in the environment) ``sparsetrain train`` and
``compare`` start a process group (NCCL for ``train.device: cuda``, one GPU per process by
``LOCAL_RANK``; gloo otherwise) and train one run with every process:

- ``train.batch_size`` is the **global** batch: every optimizer step takes the same examples as
  on one process, split in contiguous shards, one per rank; gradients are all-reduced by
  ``DistributedDataParallel`` and weighted by shard size, so the update is that of the whole
  batch. Steps per epoch, schedules and topology-update steps do not depend on the world size.
  (BatchNorm statistics are per shard, and rank 0's running statistics are the model's.)
- Rank 0 draws the same random streams as a one-process run (data order, augmentation,
  dropout); rank r > 0 draws its own, seeded from (``train.seed``, r).
- The training loss and accuracy, and the validation and test metrics (each rank evaluates a
  shard), are summed over the ranks, so every rank logs the same numbers.
- Only rank 0 writes the run directory. A checkpoint also holds every rank's random streams and
  the world size; ``--resume`` continues bit for bit with the same number of processes and
  refuses another one (the shards and random streams depend on it).
- SIGINT/SIGTERM: the ranks agree at each step boundary to stop, and rank 0 saves the
  checkpoint of that step.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from torch import nn

from sparsetrain.distributed import broadcast_, is_distributed, rank_and_world
from sparsetrain.train.build import batches_per_epoch
from sparsetrain.train.checkpoint import seed_everything

T = TypeVar("T")


def launched() -> bool:
    """Whether this process was started by ``torchrun`` with more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


@contextlib.contextmanager
def process_group(device: str) -> Iterator[None]:
    """Start the process group ``torchrun`` asks for (if any) and end it on exit."""
    import torch.distributed as dist

    if not launched() or dist.is_initialized():
        yield
        return
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group("nccl" if cuda else "gloo")
    try:
        yield
    finally:
        # every rank leaves its last collective before the group goes (a rank torn down while
        # another still talks to it aborts in gloo's threads)
        with contextlib.suppress(RuntimeError):
            dist.barrier()
        dist.destroy_process_group()


def is_writer() -> bool:
    """Whether this process writes files and prints (rank 0, or the only process)."""
    return rank_and_world()[0] == 0


def device_for(name: str) -> torch.device:
    """``train.device`` for this process: ``cuda`` becomes ``cuda:LOCAL_RANK`` under torchrun."""
    device = torch.device(name)
    if device.type == "cuda" and device.index is None and is_distributed():
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return device


def on_rank0(fn: Callable[[], T]) -> T:
    """``fn()`` on rank 0, its result (or its exception) on every rank; ``fn()`` on one process.

    Decisions about the run directory and the checkpoint are rank 0's, so every rank takes the
    same branch (and raises the same error) even where the ranks do not share a filesystem.
    """
    if not is_distributed():
        return fn()
    import torch.distributed as dist

    box: list[Any] = [None]
    if is_writer():
        try:
            box[0] = ("ok", fn())
        except Exception as exc:
            box[0] = ("error", exc)
    dist.broadcast_object_list(box, src=0)
    kind, value = box[0]
    if kind == "error":
        raise value
    return value


def check_batches(n_train: int, batch_size: int) -> None:
    """Every rank needs at least one example of every batch (raises ``ValueError``)."""
    world = rank_and_world()[1]
    n = n_train - 1 if n_train % batch_size == 1 and n_train > 1 else n_train  # as the loop
    smallest = min(batch_size, n - (batches_per_epoch(n_train, batch_size) - 1) * batch_size)
    if world > 1 and smallest < world:
        raise ValueError(
            f"train.batch_size: a batch of {smallest} examples cannot be split over "
            f"{world} processes (the last batch of an epoch included); use a batch size (and "
            "a training set size) that gives every process at least one example"
        )


def check_world_size(ckpt: dict[str, Any], run_dir: Path) -> None:
    """Refuse to resume a checkpoint written with another number of processes."""
    saved, now = int(ckpt.get("world_size", 1)), rank_and_world()[1]
    if saved != now:
        how = f"torchrun --nproc-per-node {saved}" if saved > 1 else "one process (no torchrun)"
        raise ValueError(
            f"cannot resume {run_dir}: its checkpoint was written by {saved} process(es), this "
            f"run has {now}; resume with {how} (data shards and random streams depend on it)"
        )


def shard(idx: torch.Tensor) -> torch.Tensor:
    """This rank's contiguous part of a batch's example indices (all of them on one process)."""
    rank, world = rank_and_world()
    return idx if world == 1 else torch.tensor_split(idx, world)[rank]


def rank_seed(seed: int, *key: int) -> int:
    """A seed for rank r > 0 derived from ``seed`` and ``key`` (rank 0 keeps ``seed``)."""
    rank = rank_and_world()[0]
    if rank == 0:
        return seed
    return int(np.random.SeedSequence([seed, *key, rank, 0xDD9]).generate_state(1)[0])


def seed_rank(seed: int) -> None:
    """Rank r > 0: seed the global RNGs from (``seed``, r); rank 0 and one process: nothing."""
    if rank_and_world()[0] > 0:
        seed_everything(rank_seed(seed))


def reseed_rank(gen: torch.Generator, seed: int, epoch: int) -> None:
    """After an epoch's order is drawn: rank r > 0 gets its own augmentation stream."""
    if rank_and_world()[0] > 0:
        gen.manual_seed(rank_seed(seed, epoch))


def wrap(model: nn.Module, device: torch.device) -> nn.Module | None:
    """``DistributedDataParallel(model)`` under a process group, else ``None``."""
    if not is_distributed():
        return None
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids)


def reduce_sum(values: torch.Tensor) -> torch.Tensor:
    """Sum ``values`` over the ranks (returned on the input's device); identity on one process."""
    if not is_distributed():
        return values
    import torch.distributed as dist

    backend_dev = values.device if dist.get_backend() == "nccl" else torch.device("cpu")
    out = values.to(backend_dev).clone()
    dist.all_reduce(out)
    return out.to(values.device)


def any_rank(flag: bool) -> bool:
    """Whether ``flag`` is true on some rank (``flag`` on one process)."""
    if not is_distributed():
        return flag
    return bool(reduce_sum(torch.tensor([int(flag)])).item())


@torch.no_grad()
def sync_buffers(model: nn.Module) -> None:
    """Rank 0's buffers (BatchNorm statistics) on every rank, before an evaluation."""
    if not is_distributed():
        return
    for b in model.buffers():
        broadcast_(b)
