"""The training loop, readable top to bottom: the executable form of the hook order.

One optimizer step (see ``sparsetrain.methods.base`` for the contract)::

    optimizer.zero_grad()
    for x, y in micro_batches:                 # gradient accumulation: grad_accum batches
        loss = loss_fn(model(x), y)            # 1. forward (masks / effective weights set)
        (loss * share).backward()              # 2. backward: dense gradients
    method.after_backward()                    # 3. read dense grads (RigL); zero pruned grads
    clip_grad_norm_(...)                       #    clipping sees the masked gradient
    optimizer.step()                           # 4. the update
    method.after_optimizer_step()              # 5. step counter, topology update, re-zero

The method is attached with ``hook=False`` so these calls appear here by name (clipping must sit
between 3 and 4). Every epoch ends with evaluation on val and test, a checkpoint, and a row of
``metrics.csv``. A stop between steps (or in the forward/backward pass, whose BatchNorm
statistics are then rolled back) saves the state of the last completed step. Everything that
changes is in :class:`TrainState`, saved in each checkpoint; the
data order of epoch ``e`` comes from a generator seeded with ``(seed, e)`` that also drives the
augmentation, so a resumed run, even mid-epoch, replays exactly.

Run it through the CLI: ``sparsetrain train configs/mnist1d_mlp_rigl.yaml train.epochs=3``.
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import default_collate

from sparsetrain.config import ExperimentConfig
from sparsetrain.methods import SparsityMethod
from sparsetrain.train import ddp
from sparsetrain.train.build import batches_per_epoch, lr_factor
from sparsetrain.train.checkpoint import capture_rng


@dataclass
class TrainState:
    """What changes during training, as of the last completed optimizer step."""

    step: int = 0  # optimizer steps done
    epoch: int = 0  # current epoch, 0-based
    batch: int = 0  # next micro-batch of this epoch
    perm: torch.Tensor | None = None  # this epoch's example order
    data_rng: torch.Tensor | None = None  # state of the order/augmentation generator
    sums: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0])  # loss·n, correct, n
    history: list[dict[str, Any]] = field(default_factory=list)  # one row per finished epoch
    best: dict[str, Any] | None = None  # the best-validation epoch's row
    elapsed: float = 0.0  # training wall time, seconds, over all sessions
    rng: Any = field(default_factory=capture_rng)  # global RNGs after the last step


@dataclass
class Run:
    """The objects one experiment trains; built by :mod:`sparsetrain.train.experiment`."""

    cfg: ExperimentConfig
    model: nn.Module
    optimizer: torch.optim.Optimizer
    method: SparsityMethod
    splits: Any  # sparsetrain.data.DatasetSplits
    device: torch.device
    channels_last: bool
    steps_per_epoch: int
    base_lrs: list[float]  # base LR of each group of the optimizer (the schedule scales them)
    state: TrainState = field(default_factory=TrainState)
    ddp: nn.Module | None = None  # DistributedDataParallel(model) under torchrun (ddp.py)

    @property
    def total_steps(self) -> int:
        return self.cfg.train.epochs * self.steps_per_epoch


class Recorder(Protocol):
    """Where the loop reports (files, progress bar); see ``experiment.RunRecorder``."""

    def on_step(self, run: Run, loss: torch.Tensor, correct: torch.Tensor, n: int) -> None: ...
    def on_epoch(self, run: Run, row: dict[str, Any], improved: bool) -> None: ...
    def on_interrupt(self, run: Run, consistent: bool) -> None: ...


def train(run: Run, rec: Recorder) -> int | None:
    """Train from ``run.state`` to the last epoch; return None, or the signal that stopped it.

    SIGINT/SIGTERM (and a ``KeyboardInterrupt`` raised anywhere outside an optimizer step) stop
    at the last completed step, which ``rec.on_interrupt`` saves as a resumable checkpoint.
    """
    cfg, st = run.cfg.train, run.state
    nb = batches_per_epoch(len(run.splits.train), cfg.batch_size)
    in_update, undo = False, None
    with _deterministic(cfg.deterministic), _StopOnSignal() as stop:
        t0 = time.perf_counter() - st.elapsed
        try:
            while st.epoch < cfg.epochs:
                if st.batch == 0:  # a fresh epoch: its order and augmentation stream
                    gen = torch.Generator().manual_seed(_epoch_seed(cfg.seed, st.epoch))
                    st.perm = torch.randperm(len(run.splits.train), generator=gen)
                    ddp.reseed_rank(gen, cfg.seed, st.epoch)  # rank r > 0: own augmentation
                else:
                    gen = torch.Generator()
                    gen.set_state(st.data_rng)
                run.model.train()
                while st.batch < nb:
                    group = range(st.batch, min(st.batch + cfg.grad_accum, nb))
                    micro = [_train_batch(run, b, gen) for b in group]
                    total = sum(  # examples in this step, over all ranks
                        min(cfg.batch_size, len(st.perm) - b * cfg.batch_size) for b in group
                    )
                    undo = _buffers(run.model)  # BatchNorm statistics move in the forward pass
                    loss, correct, n = forward_backward(run, micro, total)
                    in_update = True
                    update(run)
                    in_update, undo = False, None
                    st.step, st.batch = st.step + 1, group.stop
                    loss_n, hits, seen = st.sums
                    st.sums = [loss_n + loss.item() * n, hits + correct.item(), seen + n]
                    st.data_rng, st.rng = gen.get_state(), capture_rng()
                    st.elapsed = time.perf_counter() - t0
                    rec.on_step(run, loss, correct, n)
                    if ddp.any_rank(stop.signum is not None):  # every rank stops at one step
                        raise KeyboardInterrupt
                row = end_epoch(run)
                improved = _update_best(run, row)
                st.epoch, st.batch, st.sums, st.perm = st.epoch + 1, 0, [0.0, 0.0, 0.0], None
                st.elapsed = time.perf_counter() - t0
                rec.on_epoch(run, row, improved)
                if ddp.any_rank(stop.signum is not None):
                    raise KeyboardInterrupt
        except KeyboardInterrupt:
            if undo is not None and not in_update:  # stopped mid forward/backward
                _restore_buffers(run.model, undo)
            rec.on_interrupt(run, consistent=not in_update)
            return stop.signum or signal.SIGINT
    return None


def forward_backward(
    run: Run, micro: list[tuple[torch.Tensor, torch.Tensor]], total: int | None = None
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Steps 1-2 over ``micro`` batches: returns (mean loss, correct count, examples).

    Under torchrun ``micro`` is this rank's shard of batches of ``total`` examples in all:
    each shard's loss is weighted by its share of the whole batch (DDP averages over the
    ranks) and the returned numbers are summed over the ranks.
    """
    o, world = run.cfg.optim, ddp.rank_and_world()[1]
    net = run.ddp if run.ddp is not None else run.model
    n = sum(len(y) for _, y in micro) if total is None else total
    loss_sum = torch.zeros((), dtype=torch.float64, device=run.device)
    correct = torch.zeros((), dtype=torch.float64, device=run.device)
    run.optimizer.zero_grad(set_to_none=True)
    for i, (x, y) in enumerate(micro):
        last = i == len(micro) - 1  # DDP all-reduces the gradient once, after the last
        with run.ddp.no_sync() if run.ddp is not None and not last else contextlib.nullcontext():
            logits = net(x)  # (B, num_classes), or (B, L, vocab) for a language model
            loss = F.cross_entropy(_flat(logits), y.reshape(-1), label_smoothing=o.label_smoothing)
            (loss * (len(y) / n * world)).backward()
        loss_sum += loss.detach().double() * len(y)
        correct += hits(logits.detach(), y).sum()
    if run.ddp is not None:
        loss_sum, correct = ddp.reduce_sum(loss_sum), ddp.reduce_sum(correct)
    return loss_sum / n, correct, n


def update(run: Run) -> None:
    """Steps 3-5: method hooks around the optimizer step, at this step's learning rate."""
    opt, method, o = run.optimizer, run.method, run.cfg.optim
    factor = lr_factor(run.state.step, o, run.steps_per_epoch, run.cfg.train.epochs)
    # methods never add groups (their own parameters follow these groups' LRs through a
    # sparsetrain.optim.Companion), so the groups are exactly those the harness built
    for group, base in zip(opt.param_groups, run.base_lrs, strict=True):
        group["lr"] = base * factor
    method.after_backward()
    if o.grad_clip is not None:
        nn.utils.clip_grad_norm_(run.model.parameters(), o.grad_clip)
    opt.step()
    method.after_optimizer_step()


def hits(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-example accuracy (``float64``): 0 or 1, or a sequence's fraction of tokens right.

    Classifiers give ``logits`` ``(B, classes)`` and ``y`` ``(B,)``; language models give
    ``(B, L, vocab)`` and next-token targets ``(B, L)``.
    """
    right = (logits.argmax(dim=-1) == y).double()
    return right.mean(dim=-1) if right.dim() > 1 else right


def _flat(logits: torch.Tensor) -> torch.Tensor:
    """``(B, L, vocab)`` → ``(B·L, vocab)``; classifier logits unchanged."""
    return logits.reshape(-1, logits.shape[-1]) if logits.dim() > 2 else logits


@torch.no_grad()
def evaluate(run: Run, dataset: Any) -> tuple[float, float]:
    """Mean cross-entropy (no label smoothing) and accuracy of the model on ``dataset``.

    For a language model (``(B, L, vocab)`` logits) both are per token: the loss in nats per
    token, the accuracy the fraction of next tokens predicted right.
    """
    run.model.eval()
    ddp.sync_buffers(run.model)  # under torchrun: rank 0's BatchNorm statistics, a shard each
    n = len(dataset)
    mine = ddp.shard(torch.arange(n))
    loss = torch.zeros((), dtype=torch.float64, device=run.device)
    correct = torch.zeros((), dtype=torch.float64, device=run.device)
    for start in range(0, len(mine), run.cfg.train.eval_batch_size):
        idx = mine[start : start + run.cfg.train.eval_batch_size]
        x, y = _fetch(run, dataset, idx, None)
        logits = run.model(x)
        tokens = y[0].numel() if y.dim() > 1 else 1  # per example
        loss += F.cross_entropy(_flat(logits), y.reshape(-1), reduction="sum").double() / tokens
        correct += hits(logits, y).sum()
    if run.ddp is not None:
        loss, correct = ddp.reduce_sum(loss), ddp.reduce_sum(correct)
    run.model.train()
    return loss.item() / max(1, n), correct.item() / max(1, n)


def end_epoch(run: Run) -> dict[str, Any]:
    """Evaluate on val and test and return this epoch's ``metrics.csv`` row."""
    st, splits = run.state, run.splits
    val = evaluate(run, splits.val) if splits.val is not None else (None, None)
    test = evaluate(run, splits.test)
    loss_n, correct, n = st.sums
    return {
        "epoch": st.epoch + 1,
        "step": st.step,
        "lr": run.optimizer.param_groups[0]["lr"],
        "train_loss": loss_n / max(1, n),
        "train_acc": correct / max(1, n),
        "val_loss": val[0],
        "val_acc": val[1],
        "test_loss": test[0],
        "test_acc": test[1],
        "sparsity": mask_sparsity(run.method),
        "time": st.elapsed,
    }


def mask_sparsity(method: SparsityMethod) -> float:
    """Actual global sparsity of the method's masks over the masked tensors."""
    numel = sum(t.numel for t in method.targets)
    return 1.0 - sum(t.nnz for t in method.targets) / numel if numel else 0.0


def at_final_sparsity(run: Run, row: dict[str, Any]) -> bool:
    """Whether the epoch's model is (within 0.001) as sparse as the run is planned to end.

    Only such epochs can be the best-validation epoch, so a gradual method's dense or
    half-pruned epochs are never its headline. Emergent methods (SCL, STR) have no planned end
    value: only their last epoch qualifies.
    """
    m = run.method
    if m.sparsity_mode == "target":
        return row["sparsity"] >= m.sparsity_at(run.total_steps) - 1e-3
    return run.state.epoch == run.cfg.train.epochs - 1


def _update_best(run: Run, row: dict[str, Any]) -> bool:
    best = run.state.best
    if row["val_acc"] is None or not at_final_sparsity(run, row):
        return False
    if best is not None and row["val_acc"] <= best["val_acc"]:
        return False
    run.state.best = dict(row)
    return True


def _train_batch(run: Run, b: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    bs = run.cfg.train.batch_size
    assert run.state.perm is not None  # set at the start of every epoch (internal invariant)
    return _fetch(run, run.splits.train, ddp.shard(run.state.perm[b * bs : (b + 1) * bs]), gen)


def _fetch(
    run: Run, dataset: Any, idx: torch.Tensor, gen: torch.Generator | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """One batch on the device: the in-memory fast path, else per-item fetch and collate."""
    if hasattr(dataset, "get_batch"):
        x, y = dataset.get_batch(idx, gen)
    else:
        x, y = default_collate([dataset[i] for i in idx.tolist()])
    x, y = x.to(run.device, non_blocking=True), y.to(run.device, non_blocking=True)
    if run.channels_last and x.dim() == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    return x, y


def _buffers(model: nn.Module) -> list[torch.Tensor] | None:
    buffers = [b.detach().clone() for b in model.buffers()]
    return buffers or None


def _restore_buffers(model: nn.Module, saved: list[torch.Tensor]) -> None:
    with torch.no_grad():
        for b, v in zip(model.buffers(), saved, strict=True):
            b.copy_(v)


def _epoch_seed(seed: int, epoch: int) -> int:
    return int(np.random.SeedSequence([seed, epoch, 0x5EED]).generate_state(1)[0])


@contextmanager
def _deterministic(on: bool) -> Iterator[None]:
    """``torch.use_deterministic_algorithms`` (warn-only) for the block, then restore."""
    before, warn = (
        torch.are_deterministic_algorithms_enabled(),
        (torch.is_deterministic_algorithms_warn_only_enabled()),
    )
    if on:
        torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before, warn_only=warn)


class _StopOnSignal:
    """Turn the first SIGINT/SIGTERM into a stop request; a second one interrupts at once."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._old: dict[int, Any] = {}

    def _handle(self, signum: int, _frame: Any) -> None:
        if self.signum is not None:
            raise KeyboardInterrupt
        self.signum = signum

    def __enter__(self) -> _StopOnSignal:
        if threading.current_thread() is threading.main_thread():
            for s in (signal.SIGINT, signal.SIGTERM):
                self._old[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *_: object) -> None:
        for s, handler in self._old.items():
            signal.signal(s, handler)
