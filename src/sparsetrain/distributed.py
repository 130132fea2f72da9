"""Sparse training on several processes (``torch.distributed``), correct by construction.

Under ``DistributedDataParallel`` (DDP) every rank holds a full copy of the model and DDP
all-reduces the gradients inside ``loss.backward()``, so the method's step hooks (which run
from ``optimizer.step()``) see the same averaged gradient on every rank. A method stays
identical on every rank when every topology decision is a function of data that is identical
on every rank. :meth:`SparsityMethod.attach <sparsetrain.methods.base.SparsityMethod.attach>`
makes sure of it whenever a process group is initialised:

1. The model's parameters and buffers are broadcast from rank 0 *before* the initial masks are
   chosen, so magnitude-based initial masks (GMP/GraNet ``initial_sparsity``, ST-3, OptG's
   tie-break) see rank 0's weights on every rank. This is what DDP itself would broadcast when
   wrapping the model later, so attaching before or after ``DistributedDataParallel(model)``
   gives the same run. A ``DistributedDataParallel`` wrapper passed to ``attach`` is unwrapped.
2. The method's ``seed`` is taken from rank 0: random decisions come from a generator seeded
   with (seed, step, tensor index), so they agree on every rank.
3. The method's state (masks, step, scores, ...) is broadcast from rank 0 and loaded on the
   other ranks.
4. A checksum of every mask is gathered from all ranks at attach, at every topology-update
   step and at the last step (one small all-gather, the only host synchronisation this adds),
   and a :class:`RankDivergenceError` names the first tensor that differs. ``rank_check=False``
   (a common method option) turns it off.

FSDP2 (``fully_shard``, parameters as ``DTensor`` sharded by rows) is served for the methods
whose class sets ``fsdp2_note = None`` (dense, static, GMP, the DST family, GraNet): attach to
the model *after* ``fully_shard`` (nested per block or not). Every mask is then a ``DTensor``
with its parameter's placement, so masking weights, gradients and optimizer state is local to
each shard, and every selection runs
on the shards with collectives over counts (:mod:`sparsetrain.masking.sharded`), equal to the
one-process selection bit for bit. Nothing is broadcast at attach (each rank owns its rows, and
FSDP2 leaves their initialisation to the user); the seed still comes from rank 0. The rank
check becomes a shard check: at every update step and the last step, before anything changes,
the live count of every tensor, summed over the shards, must equal the count the method's last
decision left (:func:`verify_shards`), so a corrupted shard is caught at the next update.

Refused (a ``ValueError`` at attach, one line): ``execution="sparse"``/``"auto"`` under an
initialised process group (DDP reduces the dense parameters it was built with, not the CSR
values of swapped-in sparse layers; the dense gradient of an update step would be local to each
rank), FSDP1 (``FullyShardedDataParallel``: flat parameters), and FSDP2 for a method that does
not serve it (its ``fsdp2_note`` says why). A model sharded after attach is detected at its
first step.

On one process (no process group, or world size 1) none of this runs and nothing is added to a
step.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Sequence
from typing import Any, Protocol

import torch
from torch import nn

__all__ = [
    "RankCheck",
    "RankDivergenceError",
    "SyncedMethod",
    "broadcast_",
    "broadcast_model",
    "check_supported",
    "checkpoint_state",
    "is_distributed",
    "load_checkpoint_state",
    "mask_checksums",
    "rank_and_world",
    "sum_over_shards",
    "unwrap",
    "verify_masks",
]


class _Target(Protocol):
    name: str
    mask: torch.Tensor
    param: torch.Tensor


class SyncedMethod(Protocol):
    """What this module reads of a method: :class:`~sparsetrain.methods.base.SparsityMethod`.

    A structural type, so this module stays below the methods that call it.
    """

    name: str
    execution: str
    seed: int
    step: int
    total_steps: int | None
    model: nn.Module | None
    targets: Sequence[_Target]

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...

    def update_steps(self, total: int) -> Iterable[int]: ...

    def is_update_step(self, step: int) -> bool: ...


class RankDivergenceError(RuntimeError):
    """The masks of a method differ between processes (raised on every rank at once)."""


def is_distributed() -> bool:
    """Whether a ``torch.distributed`` process group with more than one process is running."""
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank_and_world() -> tuple[int, int]:
    """``(rank, world_size)`` of this process; ``(0, 1)`` without a process group."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a ``DistributedDataParallel``/``DataParallel`` wrapper (else ``model``)."""
    from torch.nn.parallel import DataParallel, DistributedDataParallel

    while isinstance(model, DistributedDataParallel | DataParallel):
        model = model.module
    return model


def _is_sharded(model: nn.Module) -> bool:
    """Whether FSDP (either version) wraps or shards any part of ``model``."""
    fsdp = sys.modules.get("torch.distributed.fsdp")  # never imported: nothing can be sharded
    if fsdp is not None:
        names = ("FSDPModule", "FullyShardedDataParallel")  # FSDP2 (fully_shard) and FSDP1
        kinds = tuple(k for k in (getattr(fsdp, n, None) for n in names) if isinstance(k, type))
        if kinds and any(isinstance(m, kinds) for m in model.modules()):
            return True
    dtensor = getattr(sys.modules.get("torch.distributed.tensor"), "DTensor", None)
    return isinstance(dtensor, type) and any(isinstance(p, dtensor) for p in model.parameters())


def is_fsdp2(model: nn.Module) -> bool:
    """Whether ``model`` is sharded by FSDP2: some parameter is a ``DTensor``."""
    dtensor = getattr(sys.modules.get("torch.distributed.tensor"), "DTensor", None)
    return isinstance(dtensor, type) and any(isinstance(p, dtensor) for p in model.parameters())


def check_supported(method: SyncedMethod, model: nn.Module) -> None:
    """Refuse what a method cannot do across processes (called by ``attach`` before any change).

    Raises:
        ValueError: FSDP1, FSDP2 for a method that does not serve it, or sparse execution
            under a process group.
    """
    if _is_sharded(model):
        note = getattr(method, "fsdp2_note", "")
        if not is_fsdp2(model):
            raise ValueError(
                f"{method.name}: FullyShardedDataParallel (FSDP1, flat parameters) is not "
                "supported; shard with FSDP2 (torch.distributed.fsdp.fully_shard) or use "
                "DistributedDataParallel"
            )
        if note is not None:
            raise ValueError(
                f"{method.name}: FSDP2 (fully_shard) is not supported for this method yet: "
                f"{note or 'its masks are not sharded like the parameters'}; use "
                "DistributedDataParallel (each rank holds the full model)"
            )
        structure = getattr(method, "structure", None)
        if structure is not None and structure.structured:
            raise ValueError(
                f"{method.name}: structure={str(structure)!r} is not supported under FSDP2 yet "
                "(its groups are selected on full rows); use DistributedDataParallel"
            )
        prune = getattr(method, "prune", None)
        if prune is not None and "generator" in getattr(prune, "inputs", ()):
            raise ValueError(
                f"{method.name}: prune criterion {prune.name!r} draws one random score per "
                "active weight, a stream that depends on the sharding; it is not supported "
                "under FSDP2"
            )
        if getattr(method, "bernoulli", False):
            raise ValueError(
                f"{method.name}: bernoulli=True is not supported under FSDP2 (its draws are "
                "exact only in expectation); use the exact counts (bernoulli=False)"
            )
        if getattr(method, "weight_init", "default") != "default":
            raise ValueError(
                f"{method.name}: weight_init={method.weight_init!r} is not supported under "  # type: ignore[attr-defined]
                "FSDP2; initialise the weights before fully_shard"
            )
    if method.execution != "dense" and is_distributed():
        raise ValueError(
            f"{method.name}: execution={method.execution!r} is not supported with "
            f"torch.distributed ({rank_and_world()[1]} processes): DistributedDataParallel "
            "reduces the dense parameters, not the values of sparse layers; use "
            "execution='dense'"
        )


def _comm_device(like: torch.Tensor) -> torch.device:
    """Where a collective's tensors must live: CUDA for NCCL, else the CPU."""
    import torch.distributed as dist

    return like.device if dist.get_backend() == "nccl" else torch.device("cpu")


def broadcast_(t: torch.Tensor) -> None:
    """Broadcast ``t`` from rank 0 in place (any dtype and device the backend takes)."""
    import torch.distributed as dist

    dev = _comm_device(t)
    buf = t.detach()
    if buf.dtype == torch.bool:
        buf = buf.view(torch.uint8)
    if buf.device != dev or not buf.is_contiguous():
        tmp = buf.to(dev).contiguous()
        dist.broadcast(tmp, src=0)
        buf.copy_(tmp)
    else:
        dist.broadcast(buf, src=0)


@torch.no_grad()
def broadcast_model(model: nn.Module) -> None:
    """Copy rank 0's parameters and buffers into ``model`` on every rank (DDP's own rule)."""
    for t in [*model.parameters(), *model.buffers()]:
        broadcast_(t)


def _broadcast_object(obj: Any) -> Any:
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _split_tensors(obj: Any, out: list[torch.Tensor]) -> Any:
    """``obj`` with every tensor replaced by its index in ``out`` (tensors appended to it)."""
    if isinstance(obj, torch.Tensor):
        out.append(obj)
        return ("__tensor__", len(out) - 1, obj.dtype, tuple(obj.shape))
    if isinstance(obj, dict):
        return {k: _split_tensors(v, out) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(_split_tensors(v, out) for v in obj)
    return obj


def _join_tensors(obj: Any, tensors: list[torch.Tensor]) -> Any:
    if isinstance(obj, tuple) and len(obj) == 4 and obj[0] == "__tensor__":
        return tensors[obj[1]]
    if isinstance(obj, dict):
        return {k: _join_tensors(v, tensors) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(_join_tensors(v, tensors) for v in obj)
    return obj


def broadcast_method_state(method: SyncedMethod) -> None:
    """Load rank 0's ``method.state_dict()`` on every other rank (tensors sent as tensors)."""
    rank, _ = rank_and_world()
    mine: list[torch.Tensor] = []
    skeleton = _broadcast_object(_split_tensors(method.state_dict(), mine) if rank == 0 else None)
    shapes: list[tuple[torch.dtype, tuple[int, ...]]] = []

    def collect(obj: Any) -> None:
        if isinstance(obj, tuple) and len(obj) == 4 and obj[0] == "__tensor__":
            shapes.append((obj[2], obj[3]))
        elif isinstance(obj, dict):
            for v in obj.values():
                collect(v)
        elif isinstance(obj, list | tuple):
            for v in obj:
                collect(v)

    collect(skeleton)
    device = method.targets[0].mask.device if method.targets else torch.device("cpu")
    tensors = mine if rank == 0 else [torch.empty(s, dtype=d, device=device) for d, s in shapes]
    for t in tensors:
        broadcast_(t)
    if rank != 0:
        method.load_state_dict(_join_tensors(skeleton, tensors))


def mask_checksums(method: SyncedMethod) -> torch.Tensor:
    """Per target: (active count, sum of active flat indices, sum of a hash of them); int64.

    Exact integer arithmetic (wrapping on overflow, the same on every rank), so two ranks
    agree bit for bit exactly when their masks are very likely equal.
    """
    rows = []
    for t in method.targets:
        idx = t.mask.reshape(-1).nonzero().squeeze(1)  # int64, (nnz,)
        mixed = idx * 2654435761 % 4294967291  # Knuth's multiplicative hash, mod a prime
        rows.append(torch.stack([idx.new_tensor(idx.numel()), idx.sum(), mixed.sum()]))
    if not rows:
        return torch.zeros((0, 3), dtype=torch.int64)
    return torch.stack(rows)


def verify_masks(method: SyncedMethod, step: int) -> None:
    """Gather every rank's mask checksums and raise if any rank differs from rank 0.

    Raises:
        RankDivergenceError: On every rank, naming the first differing tensor and ``step``.
    """
    import torch.distributed as dist

    sums = mask_checksums(method)
    head = torch.tensor([[step, 0, 0]], dtype=torch.int64, device=sums.device)
    mine = torch.cat([head, sums]).to(_comm_device(sums))
    gathered = [torch.empty_like(mine) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, mine)
    ref = gathered[0]
    for rank, other in enumerate(gathered[1:], start=1):
        diff = (other != ref).any(dim=1).nonzero()
        if diff.numel():
            row = int(diff[0])
            if row == 0:
                steps = f"rank 0: {int(ref[0, 0])}, rank {rank}: {int(other[0, 0])}"
                what = f"the step counter ({steps})"
            else:
                name = method.targets[row - 1].name
                what = (
                    f"tensor {name!r} (active weights: rank 0 {int(ref[row, 0])}, "
                    f"rank {rank} {int(other[row, 0])})"
                )
            raise RankDivergenceError(
                f"{method.name}: masks differ across processes at step {step}: first "
                f"difference in {what}. Every topology decision must see identical data on "
                "every rank (all-reduced gradients, the same seed); see README 'Distributed "
                "and trainers'. rank_check=False turns this check off"
            )


class RankCheck:
    """The per-step hook of a method attached under a process group.

    Cheap on ordinary steps (a set lookup); on topology-update steps and the last step it
    runs :func:`verify_masks`. At its first step it also checks that the targets are still the
    model's parameters (a model sharded by FSDP after attach has replaced them).
    """

    def __init__(self, method: SyncedMethod, *, check: bool) -> None:
        self.method, self.check = method, check
        total = method.total_steps
        self.steps: set[int] | None = set(method.update_steps(total)) | {total} if total else None
        self._first = True

    def before(self, step: int) -> None:
        """Work before the hooks of ``step`` change anything (nothing under DDP)."""

    def loaded(self) -> None:
        """The method's state was loaded (a checkpoint): nothing under DDP."""

    def __call__(self, step: int) -> None:
        m = self.method
        if self._first:
            self._first = False
            held = {id(p) for p in m.model.parameters()} if m.model is not None else set()
            stale = [t.name for t in m.targets if id(t.param) not in held]
            if stale:
                raise ValueError(
                    f"{m.name}: the parameter {stale[0]!r} was replaced after attach (FSDP "
                    "fully_shard?); shard the model first, then attach (FSDP2 serves dense, "
                    "static, gmp, the DST family and granet), or use DistributedDataParallel"
                )
        if not self.check:
            return
        due = step in self.steps if self.steps is not None else m.is_update_step(step)
        if due:
            verify_masks(m, step)


def attach_sync(method: SyncedMethod) -> RankCheck | None:
    """After the initial masks: broadcast the method state, check it, return the step hook.

    Returns ``None`` (nothing to do per step) without a multi-process group. Under FSDP2 the
    state stays per shard (nothing to broadcast) and the hook checks live counts.
    """
    if not is_distributed():
        return None
    check = bool(getattr(method, "rank_check", True))
    if method.model is not None and is_fsdp2(method.model):
        return ShardCheck(method, check=check)
    broadcast_method_state(method)
    if check:
        verify_masks(method, method.step)
    return RankCheck(method, check=check)


def live_counts(method: SyncedMethod) -> list[int]:
    """Per target: live entries over all shards (a collective under FSDP2)."""
    return [t.nnz for t in method.targets]  # type: ignore[attr-defined]


class ShardCheck(RankCheck):
    """The FSDP2 step hook: live counts over the shards equal what the last decision left.

    ``__call__`` (after a step's work) records the counts; :meth:`before` (before an update
    step's work, from ``after_backward``) checks them: a shard whose mask changed in between
    changes a count, on every rank at once.
    """

    def __init__(self, method: SyncedMethod, *, check: bool) -> None:
        super().__init__(method, check=check)
        self.counts = live_counts(method) if check else []

    def __call__(self, step: int) -> None:
        if self.check:
            due = step in self.steps if self.steps is not None else self.method.is_update_step(step)
            if due or step == 1:
                self.counts = live_counts(self.method)

    def loaded(self) -> None:
        """A loaded checkpoint is the last decision."""
        if self.check:
            self.counts = live_counts(self.method)

    def before(self, step: int) -> None:
        """Check the counts before the work of ``step`` (an update step or the last)."""
        if not self.check:
            return
        due = step in self.steps if self.steps is not None else self.method.is_update_step(step)
        if not due:
            return
        now = live_counts(self.method)
        for t, was, got in zip(self.method.targets, self.counts, now, strict=True):
            if was != got:
                raise RankDivergenceError(
                    f"{self.method.name}: a shard's mask changed outside the method before step "
                    f"{step}: tensor {t.name!r} has {got} live weights over the shards, the "
                    f"last decision left {was}. rank_check=False turns this check off"
                )


def attach_prepare(method: SyncedMethod, model: nn.Module) -> None:
    """Before the initial masks: rank 0's weights, buffers and seed on every rank."""
    if not is_distributed():
        return
    if not is_fsdp2(model):  # FSDP2: each rank owns its rows
        broadcast_model(model)
    seed = torch.tensor([method.seed], dtype=torch.int64)
    if method.targets:
        seed = seed.to(_comm_device(method.targets[0].param))
    broadcast_(seed)
    method.seed = int(seed)


def checkpoint_state(method: SyncedMethod) -> dict[str, Any]:
    """``method``'s state for ``torch.distributed.checkpoint`` (DCP): masks as they are sharded.

    The masks stay tensors (``DTensor`` under FSDP2, so DCP saves each shard once and reshards
    on load to any world size); everything else (step, history, method extras) is one byte blob
    (``io.BytesIO``), because DCP needs the same nested layout at load as at save and a history
    grows. Pass the same call's result as the load template, then
    :func:`load_checkpoint_state`::

        state = {"model": m, "optim": o, "method": checkpoint_state(method)}
        dcp.save(state, checkpoint_id=path)          # ... later, on any world size:
        state = {"model": m, "optim": o, "method": checkpoint_state(method)}
        dcp.load(state, checkpoint_id=path)
        load_checkpoint_state(method, state["method"])
    """
    import io

    full = method.state_dict()
    rest = {k: v for k, v in full.items() if k != "masks"}
    blob = io.BytesIO()
    torch.save(rest, blob)
    blob.seek(0)
    return {"masks": full["masks"], "rest": blob}


def load_checkpoint_state(method: SyncedMethod, state: dict[str, Any]) -> None:
    """Restore ``method`` from a :func:`checkpoint_state` dict filled by ``dcp.load``."""
    blob = state["rest"]
    blob.seek(0)
    rest = torch.load(blob, weights_only=False)
    method.load_state_dict({**rest, "masks": state["masks"]})


def sum_over_shards(model: nn.Module | None, values: list[int]) -> list[int]:
    """``values`` summed over the ranks under FSDP2 (counts of each rank's rows), else as is."""
    if model is None or not is_distributed() or not is_fsdp2(model):
        return values
    import torch.distributed as dist

    t = torch.tensor(values, dtype=torch.int64)
    dist.all_reduce(t)
    return [int(v) for v in t.tolist()]
