"""Checks on CUDA: every method's contract on the GPU, host syncs, short RigL/ST-3/OptG runs.

    .venv/bin/python benchmarks/gpu_check.py                 # everything (about 2-4 min)
    .venv/bin/python benchmarks/gpu_check.py --skip-train    # conformance and syncs only

Without a CUDA device it says so and exits 0 (nothing to check). With one:

1. Conformance, per registered method on a small MLP on ``cuda``: masks live on the
   parameter's device, a target method ends on its target, hard-mask methods keep pruned
   weights and optimizer state at zero, and ``state_dict`` / ``load_state_dict`` continues
   bit-identically.
2. Host syncs: ``torch.cuda.set_sync_debug_mode("warn")`` over steps that are not topology
   updates; a method should add none (the loss is never read back in this loop).
3. Training: ``sparsetrain`` runs of RigL, ST-3 and OptG on MNIST-1D (2 epochs, ``cuda``),
   printing accuracy, sparsity and wall time.

``--cpu`` runs checks 1 and 3 on the CPU (to test the script on a machine without a GPU).
Multi-GPU DDP (NCCL) is not covered here: the normal suite checks DDP with gloo on the CPU.

Exit status 1 if a check fails.
"""

from __future__ import annotations

import argparse
import copy
import tempfile
import time
import warnings
from pathlib import Path

import torch
from torch import nn

import sparsetrain
from sparsetrain.methods.registry import method_options

STEPS = 12
OPTIONS: dict[str, dict[str, object]] = {  # short schedules: several updates within STEPS
    "rigl": {"update_interval": 3},
    "set": {"update_interval": 3},
    "mest": {"update_interval": 3},
    "dst": {"update_interval": 3},
    "gmp": {"update_interval": 2, "end_step": 8},
    "granet": {"update_interval": 2, "end_step": 8},
    "optg": {"steps_per_epoch": 3},
}


def model(device: torch.device) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10)
    ).to(device)


def batch(step: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(step)
    return torch.randn(64, 32, generator=g).to(device), torch.randint(0, 10, (64,), generator=g).to(
        device
    )


def build(name: str, device: torch.device):  # type: ignore[no-untyped-def]
    net = model(device)
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    kw: dict[str, object] = {"total_steps": STEPS, **OPTIONS.get(name, {})}
    if sparsetrain.get_method_info(name).sparsity_mode == "target" and name != "dense":
        kw.setdefault("sparsity", 0.8)
    kw = {
        k: v
        for k, v in kw.items()
        if k in method_options(sparsetrain.get_method_info(name).factory)
    }
    method = sparsetrain.create_method(name, **kw)
    method.attach(net, opt)
    return net, opt, method


def step(net: nn.Module, opt: torch.optim.Optimizer, i: int, device: torch.device) -> None:
    x, y = batch(i, device)
    opt.zero_grad()
    nn.functional.cross_entropy(net(x), y).backward()
    opt.step()


def conformance(name: str, device: torch.device) -> list[str]:
    problems = []
    net, opt, method = build(name, device)
    for i in range(STEPS // 2):
        step(net, opt, i, device)
    saved = {k: v.clone() for k, v in net.state_dict().items()}
    opt_saved, method_saved = copy.deepcopy(opt.state_dict()), copy.deepcopy(method.state_dict())
    for i in range(STEPS // 2, STEPS):
        step(net, opt, i, device)
    if any(t.mask.device != t.param.device for t in method.targets):
        problems.append("a mask is not on its parameter's device")
    if method.sparsity_mode == "target" and method.report().misses():
        problems.append(f"off target: {method.report().misses()}")
    if method.hard_mask:
        for t in method.targets:
            if bool((t.param.detach()[~t.mask] != 0).any()):
                problems.append(f"pruned weights of {t.name} are not zero")
    # continue from the mid-run state in a fresh copy: must end identical
    net2, opt2, method2 = build(name, device)
    net2.load_state_dict(saved)
    opt2.load_state_dict(opt_saved)
    method2.load_state_dict(method_saved)
    for i in range(STEPS // 2, STEPS):
        step(net2, opt2, i, device)
    for (k, a), (_, b) in zip(net.state_dict().items(), net2.state_dict().items(), strict=True):
        if not torch.equal(a, b):
            problems.append(f"resumed copy differs at {k}")
            break
    return problems


def host_syncs(name: str, device: torch.device) -> int:
    net, opt, method = build(name, device)
    quiet = [i for i in range(1, STEPS + 1) if not method.is_update_step(i) and i not in (1, STEPS)]
    count = 0
    for i in range(STEPS):
        if i + 1 in quiet:
            torch.cuda.set_sync_debug_mode("warn")
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                step(net, opt, i, device)
            torch.cuda.set_sync_debug_mode("default")
            count += sum("synchroniz" in str(w.message) for w in caught)
        else:
            step(net, opt, i, device)
    return count


def train_runs(device: torch.device) -> list[str]:
    from sparsetrain.config import load_config
    from sparsetrain.train import RunOptions, run_experiment

    problems = []
    root = Path(__file__).resolve().parents[1]
    base = root / "configs" / "mnist1d_mlp_rigl.yaml"
    runs = {
        "rigl": [],
        "st3": ["method.name=st3", "method.sparsity=0.9"],
        "optg": ["method.name=optg", "method.sparsity=0.9"],
    }
    with tempfile.TemporaryDirectory() as tmp:
        for label, extra in runs.items():
            overrides = [
                *extra,
                f"train.device={device.type}",
                "train.epochs=2",
                "train.plots=false",
            ]
            cfg = load_config(base, overrides)
            t0 = time.perf_counter()
            try:
                result = run_experiment(
                    cfg, Path(tmp) / label, RunOptions(quiet=True, progress=False)
                )
            except Exception as exc:  # report and go on with the next run
                problems.append(f"{label}: {type(exc).__name__}: {exc}")
                print(f"  {label:5s} FAILED: {exc}")
                continue
            s = result.summary or {}
            print(
                f"  {label:5s} {result.status}: test acc {s['final']['test_acc']:.4f}, sparsity "
                f"{s['sparsity']['actual']:.4f}, {time.perf_counter() - t0:.1f}s"
            )
            if result.status != "finished":
                problems.append(f"{label}: {result.message}")
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-train", action="store_true", help="no MNIST-1D training runs")
    parser.add_argument("--cpu", action="store_true", help="checks 1 and 3 on the CPU")
    args = parser.parse_args()
    if not torch.cuda.is_available() and not args.cpu:
        print("gpu_check: no CUDA device (torch.cuda.is_available() is False); nothing to check")
        return 0
    device = torch.device("cpu" if args.cpu else "cuda")
    where = "the CPU" if args.cpu else torch.cuda.get_device_name(device)
    print(f"gpu_check on {where}, torch {torch.__version__}")
    failures: list[str] = []
    print(f"1. conformance on {device.type}")
    for name in sparsetrain.list_methods():
        try:
            problems = conformance(name, device)
        except Exception as exc:
            problems = [f"{type(exc).__name__}: {exc}"]
        print(f"  {name:10s} {'ok' if not problems else '; '.join(problems)}")
        failures += [f"{name}: {p}" for p in problems]
    print("2. host syncs on steps without a topology update (cuda sync debug mode)")
    for name in [] if args.cpu else sparsetrain.list_methods():
        try:
            n = host_syncs(name, device)
            print(f"  {name:10s} {n} synchronizing call(s)")
        except Exception as exc:
            print(f"  {name:10s} could not measure: {type(exc).__name__}: {exc}")
    if not args.skip_train:
        print(f"3. MNIST-1D training on {device.type} (2 epochs)")
        failures += train_runs(device)
    print("all checks passed" if not failures else f"{len(failures)} failure(s)")
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
