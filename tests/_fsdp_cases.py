"""Worker of tests/test_fsdp.py: methods on FSDP2-sharded models (``fully_shard``), gloo.

Every rank trains on the same batches (the global batch, replicated), so the gradients FSDP2
reduces are the one-process gradients; the test compares each rank's results with a
one-process run of the same case. Shapes have rows not divisible by 2 or 3.
"""

from __future__ import annotations

import traceback
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

import _gloo
import sparsetrain
from sparsetrain.distributed import checkpoint_state, load_checkpoint_state

STEPS = 12
CASES: dict[str, tuple[str, dict[str, Any], str]] = {
    "gmp-layer-sgd": ("gmp", {"update_interval": 2, "end_step": 8, "sparsity": 0.7}, "sgd"),
    "gmp-global-adamw": (
        "gmp",
        {"update_interval": 3, "end_step": 9, "sparsity": 0.8, "scope": "global"},
        "adamw",
    ),
    "gmp-initial": (
        "gmp",
        {"update_interval": 2, "end_step": 6, "sparsity": 0.6, "initial_sparsity": 0.3},
        "sgd",
    ),
    "dense": ("dense", {}, "adamw"),
    "static-erk": ("static", {"sparsity": 0.7}, "sgd"),
    "static-global": ("static", {"sparsity": 0.7, "distribution": "global"}, "adamw"),
    "snip": ("static", {"sparsity": 0.7, "init": "snip"}, "sgd"),
    "rigl": ("rigl", {"sparsity": 0.7, "update_interval": 2}, "sgd"),
    "set": ("set", {"sparsity": 0.6, "update_interval": 2}, "adamw"),
    "mest-global": (
        "mest",
        {"sparsity": 0.6, "update_interval": 3, "scope": "global", "distribution": "global"},
        "sgd",
    ),
    "granet": (
        "granet",
        {"sparsity": 0.7, "initial_sparsity": 0.4, "update_interval": 2, "end_step": 8},
        "sgd",
    ),
}


def model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 7), nn.ReLU(), nn.Linear(7, 11), nn.ReLU(), nn.Linear(11, 5))


def batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(500 + step)
    return torch.randn(16, 8, generator=g), torch.randint(0, 5, (16,), generator=g)


def optimizer(kind: str, params) -> torch.optim.Optimizer:
    if kind == "sgd":
        return torch.optim.SGD(params, lr=0.1, momentum=0.9, weight_decay=1e-3)
    return torch.optim.AdamW(params, lr=1e-2, weight_decay=1e-2)


def train(case: str, *, shard: bool) -> dict[str, Any]:
    """One run of ``case``; with ``shard``: FSDP2 per Linear and at the root, then attach."""
    name, options, opt_kind = CASES[case]
    net = model()
    if shard:
        from torch.distributed.fsdp import fully_shard

        for layer in net:
            if isinstance(layer, nn.Linear):
                fully_shard(layer)
        fully_shard(net)
    opt = optimizer(opt_kind, net.parameters())
    method = sparsetrain.create_method(name, total_steps=STEPS, **options).attach(net, opt)
    losses = []
    for step in range(STEPS):
        x, y = batch(step)
        loss = nn.functional.cross_entropy(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    method.finish()
    full = (lambda t: t.full_tensor()) if shard else (lambda t: t)
    pruned_state = 0.0
    for t in method.targets:
        for v in opt.state[t.param].values():
            if torch.is_tensor(v) and v.dim():
                pruned_state += float(full(v.detach())[~full(t.mask)].abs().sum())
    return {
        "losses": losses,
        "masks": {t.name: full(t.mask).clone() for t in method.targets},
        "weights": {n: full(p.detach()).clone() for n, p in net.named_parameters()},
        "pruned_state": pruned_state,
        "history": method.history,
        "nnz": [t.nnz for t in method.targets],
        "local_mask_numel": [t.mask.to_local().numel() for t in method.targets] if shard else [],
    }


def corrupted() -> dict[str, Any]:
    """Flip one live weight's mask bit on rank 1's shard; the next update must catch it."""
    net = model()
    from torch.distributed.fsdp import fully_shard

    fully_shard(net)
    opt = optimizer("sgd", net.parameters())
    method = sparsetrain.create_method(
        "gmp", total_steps=STEPS, update_interval=4, end_step=8, sparsity=0.5
    ).attach(net, opt)
    error = None
    at = None
    for step in range(STEPS):
        if step == 5 and dist.get_rank() == 1:  # between the updates of steps 4 and 8
            local = method.targets[0].mask.to_local()
            local.view(-1)[local.view(-1).nonzero()[0]] = False
        x, y = batch(step)
        opt.zero_grad()
        nn.functional.cross_entropy(net(x), y).backward()
        try:
            opt.step()
        except Exception as err:
            error, at = str(err), step + 1
            break
    return {"error": error, "step": at}


def refused(name: str, options: dict[str, Any]) -> dict[str, Any]:
    from torch.distributed.fsdp import fully_shard

    net = model()
    fully_shard(net)
    try:
        sparsetrain.create_method(name, total_steps=STEPS, **options).attach(net)
    except ValueError as err:
        return {"error": str(err)}
    return {"error": None}


def run(rank: int, world: int, out: str) -> None:
    """Entry point of ``torch.multiprocessing.spawn``."""
    _gloo.init(rank, world, f"{out}/rendezvous")
    jobs: dict[str, Any] = {c: (lambda c=c: train(c, shard=True)) for c in CASES}
    jobs["corrupted"] = corrupted
    jobs["refused-dnw"] = lambda: refused("dnw", {"sparsity": 0.5})
    jobs["refused-st3"] = lambda: refused("st3", {"sparsity": 0.5})
    jobs["sharded-after-attach"] = sharded_after_attach
    jobs["refused-random-prune"] = lambda: refused("dst", {"sparsity": 0.5, "prune": "random"})
    jobs["refused-structure"] = lambda: refused("gmp", {"structure": "1:4", "end_step": 6})
    try:
        for case, fn in jobs.items():
            try:
                result = fn()
            except Exception:
                result = {"crash": traceback.format_exc()}
            torch.save(result, Path(out) / f"{case}-{rank}.pt")
            dist.barrier()
    finally:
        dist.destroy_process_group()


# ---------------------------------------------------------------- checkpoints (DCP)

RESUME_CASE = "gmp-layer-sgd"
SPLIT = 5  # steps before the checkpoint (GMP's update of step 4 applied, the next at 6)


def _sharded_run(case: str):
    from torch.distributed.fsdp import fully_shard

    name, options, opt_kind = CASES[case]
    net = model()
    for layer in net:
        if isinstance(layer, nn.Linear):
            fully_shard(layer)
    fully_shard(net)
    opt = optimizer(opt_kind, net.parameters())
    method = sparsetrain.create_method(name, total_steps=STEPS, **options).attach(net, opt)
    return net, opt, method


def _steps(net, opt, start: int, stop: int) -> None:
    for step in range(start, stop):
        x, y = batch(step)
        loss = nn.functional.cross_entropy(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()


def _state(net, opt, method) -> dict[str, Any]:
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model_sd, optim_sd = get_state_dict(net, opt)
    return {"model": model_sd, "optim": optim_sd, "method": checkpoint_state(method)}


def save_checkpoint(rank: int, world: int, out: str) -> None:
    """Train ``RESUME_CASE`` for ``SPLIT`` steps on ``world`` ranks and save it with DCP."""
    import torch.distributed.checkpoint as dcp

    _gloo.init(rank, world, f"{out}/rendezvous-save")
    try:
        net, opt, method = _sharded_run(RESUME_CASE)
        _steps(net, opt, 0, SPLIT)
        dcp.save(_state(net, opt, method), checkpoint_id=f"{out}/ckpt")
    finally:
        dist.destroy_process_group()


def load_checkpoint(rank: int, world: int, out: str) -> None:
    """Load the checkpoint on ``world`` ranks (any), train to the end, save the results."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import set_state_dict

    _gloo.init(rank, world, f"{out}/rendezvous-load{world}")
    try:
        net, opt, method = _sharded_run(RESUME_CASE)
        state = _state(net, opt, method)
        dcp.load(state, checkpoint_id=f"{out}/ckpt")
        set_state_dict(net, opt, model_state_dict=state["model"], optim_state_dict=state["optim"])
        load_checkpoint_state(method, state["method"])
        _steps(net, opt, SPLIT, STEPS)
        method.finish()
        result = {
            "masks": {t.name: t.mask.full_tensor().clone() for t in method.targets},
            "weights": {n: p.detach().full_tensor().clone() for n, p in net.named_parameters()},
            "step": method.step,
        }
        torch.save(result, Path(out) / f"load{world}-{rank}.pt")
    finally:
        dist.destroy_process_group()


def sharded_after_attach() -> dict[str, Any]:
    """``fully_shard`` after ``attach`` replaces the parameters: caught at the first step."""
    from torch.distributed.fsdp import fully_shard

    net = model()
    method = sparsetrain.create_method("gmp", total_steps=STEPS, sparsity=0.5, end_step=6)
    method.attach(net)
    fully_shard(net)
    opt = optimizer("sgd", net.parameters())
    # attached without an optimizer: the loop calls the hooks itself (attach's hook=False way)
    x, y = batch(0)
    nn.functional.cross_entropy(net(x), y).backward()
    opt.step()
    try:
        method.after_optimizer_step()
    except ValueError as err:
        return {"error": str(err)}
    return {"error": None}
