"""Worker of tests/test_distributed.py: every case on 2 gloo processes, one spawn for all.

Each rank starts from its own model initialisation, its own method seed and its own data, so
only the library's broadcasts and DDP's gradient all-reduce can make the ranks agree. Every
case writes ``<out>/<case>-<rank>.pt`` (masks, weights, optimizer state, method state, or the
error text); the test process compares the ranks' files.
"""

from __future__ import annotations

import traceback
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

import _gloo
import sparsetrain
from sparsetrain.distributed import RankDivergenceError

STEPS = 8
# (case name, method, options): every family — static (random, SNIP), DST with random and
# gradient growth, GMP and GraNet with an initial sparsity, in-place STE methods, OptG, SCL.
METHODS: list[tuple[str, str, dict[str, Any]]] = [
    ("static", "static", {"sparsity": 0.6}),
    ("snip", "static", {"sparsity": 0.6, "init": "snip"}),
    ("set", "set", {"sparsity": 0.6, "update_interval": 2}),
    ("rigl", "rigl", {"sparsity": 0.6, "update_interval": 2}),
    ("gmp", "gmp", {"sparsity": 0.6, "initial_sparsity": 0.3, "update_interval": 2, "end_step": 6}),
    (
        "granet",
        "granet",
        {"sparsity": 0.6, "initial_sparsity": 0.3, "update_interval": 2, "end_step": 6},
    ),
    ("st3", "st3", {"sparsity": 0.6}),
    ("dnw", "dnw", {"sparsity": 0.6}),
    ("srste", "srste", {"structure": "2:4"}),
    ("rigl-2:4", "rigl", {"structure": "2:4", "update_interval": 2}),
    ("gmp-block", "gmp", {"structure": "block:4x4", "sparsity": 0.75, "update_interval": 2}),
    ("optg", "optg", {"sparsity": 0.6, "steps_per_epoch": 2}),
    ("scl", "scl", {"lam": 0.5, "mask_lr": 0.5}),
]


def _model(rank: int) -> nn.Module:
    torch.manual_seed(100 + rank)  # a different initialisation on every rank
    return nn.Sequential(
        nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4)
    )


def _batch(rank: int, step: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1000 * rank + step)  # each rank its own data
    return torch.randn(12, 8, generator=g), torch.randint(0, 4, (12,), generator=g)


def _train(method_name: str, options: dict[str, Any], rank: int, where: str) -> dict[str, Any]:
    model = _model(rank)
    method = sparsetrain.create_method(method_name, total_steps=STEPS, seed=rank, **options)
    if where == "before":
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        method.attach(model, opt)
        net = DDP(model)
    else:  # wrap first, then attach to the wrapper (it is unwrapped)
        net = DDP(model)
        opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
        method.attach(net, opt)
    for step in range(STEPS):
        x, y = _batch(rank, step)
        opt.zero_grad()
        nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
    return {
        "masks": {t.name: t.mask.clone() for t in method.targets},
        "weights": {k: v.clone() for k, v in model.state_dict().items()},
        "opt": opt.state_dict()["state"],
        "method": method.state_dict(),
        "history": len(method.history),
        "seed": method.seed,
    }


def _corrupted(rank: int) -> dict[str, Any]:
    """RigL with a mask bit flipped on rank 1 just before the update at step 2."""
    model = _model(rank)
    method = sparsetrain.create_method(
        "rigl", sparsity=0.6, update_interval=2, total_steps=STEPS, seed=0
    )
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    method.attach(model, opt)
    net = DDP(model)
    for step in range(STEPS):
        if step == 1 and rank == 1:
            method.targets[1].mask.view(-1)[0] ^= True
        x, y = _batch(rank, step)
        opt.zero_grad()
        nn.functional.cross_entropy(net(x), y).backward()
        try:
            opt.step()
        except RankDivergenceError as exc:
            return {"error": str(exc), "step": step + 1}
    return {"error": None}


def _refused(rank: int, execution: str) -> dict[str, Any]:
    model = _model(rank)
    method = sparsetrain.create_method(
        "rigl", sparsity=0.6, total_steps=STEPS, execution=execution, execution_batch_size=4
    )
    try:
        method.attach(model, torch.optim.SGD(model.parameters(), lr=0.1))
    except ValueError as exc:
        return {"error": str(exc)}
    return {"error": None}


def _fsdp(rank: int) -> dict[str, Any]:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    model = _model(rank)
    try:
        fully_shard(model, mesh=init_device_mesh("cpu", (2,)))
    except Exception as exc:  # fully_shard itself unavailable on this build: nothing to refuse
        return {"unavailable": f"{type(exc).__name__}: {exc}"}
    method = sparsetrain.create_method("st3", sparsity=0.6, total_steps=STEPS)
    try:
        method.attach(model, torch.optim.SGD(model.parameters(), lr=0.1))
    except ValueError as exc:
        return {"error": str(exc)}
    return {"error": None}


def run(rank: int, world: int, out: str) -> None:
    """Entry point of ``torch.multiprocessing.spawn``."""
    _gloo.init(rank, world, f"{out}/rendezvous", timeout_s=60)
    cases: dict[str, Any] = {}
    for case, name, options in METHODS:
        for where in ("before", "after"):
            cases[f"{case}-{where}"] = lambda n=name, o=options, w=where: _train(n, o, rank, w)
    cases["corrupted"] = lambda: _corrupted(rank)
    cases["sparse-refused"] = lambda: _refused(rank, "sparse")
    cases["auto-refused"] = lambda: _refused(rank, "auto")
    cases["fsdp-refused"] = lambda: _fsdp(rank)
    try:
        for case, fn in cases.items():
            try:
                result = fn()
            except Exception:
                result = {"crash": traceback.format_exc()}
            torch.save(result, Path(out) / f"{case}-{rank}.pt")
            dist.barrier()
    finally:
        dist.destroy_process_group()
