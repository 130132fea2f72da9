"""Sparse execution vs dense on CPU: training step, inference and training memory.

    .venv/bin/python benchmarks/sparse_speed.py            # full run (a few minutes)
    .venv/bin/python benchmarks/sparse_speed.py --quick    # width 1024 only, few rounds

MLPs 784-H-H-10 (H = 1024, 4096), every Linear layer sparse with a random mask at 90% and 98%
sparsity, batch 128, float32, default thread count. Variants of one width run in one process,
interleaved: each round runs one step of every variant in a rotating order, so machine noise
hits all of them alike. Reported ratios are the median over rounds of the per-round ratio to
dense (median times in ms alongside).

- train: ``zero_grad`` + forward + cross-entropy + backward + SGD(momentum 0.9) step;
  dense ``nn.Linear`` vs ``sparsetrain.sparse.SparseLinear`` (vs ``sparselab.SparseLinear``
  when ``sparselab`` is importable).
- infer b1 / b64: no-grad forward at batch 1 and 64; dense vs ``SparseInferenceLinear`` (and
  SparseLab's layer under ``torch.no_grad``).
- memory: bytes of weights + gradients + optimizer state (+ index buffers for CSR) after one
  step, summed from the live tensors (SparseLab's C++-side indices are not visible: params,
  grads and state only).

Result on the project's machine (2 vCPU Intel Xeon, Sapphire Rapids; torch 2.13.0+cpu, 2
threads; sparselab 0.2.2; shared machine, run taken in a quiet window, CPU pressure
avg10 2.1 at start and 0.2 at end; a second quiet run agreed within 0.03 on every ratio)::

| MLP | sparsity | layer | train step | infer b1 | infer b64 | train memory |
|---|---|---|---|---|---|---|
| 784-1024-1024-10 | 90% | sparsetrain | 0.66 (8.9 / 13.5 ms) | 0.74 | 0.49 | 0.202 |
| 784-1024-1024-10 | 90% | sparselab   | 1.12 (15.1 / 13.5 ms) | 1.55 | 1.09 | 0.121 * |
| 784-1024-1024-10 | 98% | sparsetrain | 0.33 (4.5 / 13.5 ms) | 0.56 | 0.31 | 0.042 |
| 784-1024-1024-10 | 98% | sparselab   | 0.54 (7.4 / 13.5 ms) | 0.72 | 0.67 | 0.026 * |
| 784-4096-4096-10 | 90% | sparsetrain | 0.64 (78.1 / 122.6 ms) | 0.44 | 0.31 | 0.201 |
| 784-4096-4096-10 | 90% | sparselab   | 1.13 (135.3 / 122.6 ms) | 1.45 | 1.11 | 0.121 * |
| 784-4096-4096-10 | 98% | sparsetrain | 0.18 (21.9 / 122.6 ms) | 0.19 | 0.10 | 0.041 |
| 784-4096-4096-10 | 98% | sparselab   | 0.32 (38.9 / 122.6 ms) | 0.38 | 0.36 | 0.025 * |

(* SparseLab's index arrays live in C++ and are not counted.) sparsetrain's CSR costs 24 bytes
per live weight (value, grad, momentum, column, transposed column, permutation) against 12 per
dense weight. The weight-value gradient (``sampled_addmm``) is about half of the sparse step at
90%; it is why the step stays above 0.4× dense there.
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import time
from collections.abc import Callable

import _machine
import torch
from torch import nn

from sparsetrain.sparse import SparseInferenceLinear, SparseLinear, random_mask

try:
    import sparselab
except ImportError:  # optional comparison only
    sparselab = None

IN, OUT, BATCH = 784, 10, 128


def build(width: int, kind: str, sparsity: float, seed: int = 0) -> nn.Sequential:
    sizes = [IN, width, width, OUT]
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    for a, b in itertools.pairwise(sizes):
        if kind == "dense":
            layers.append(nn.Linear(a, b))
        elif kind == "sparsetrain":
            layers.append(SparseLinear(a, b, random_mask((b, a), 1.0 - sparsity, gen)))
        elif kind == "sparselab":
            layers.append(sparselab.SparseLinear(a, b, sparsity=sparsity))
        elif kind == "sparsetrain-infer":
            w = torch.randn(b, a, generator=gen) * random_mask((b, a), 1.0 - sparsity, gen)
            layers.append(SparseInferenceLinear(w, torch.randn(b, generator=gen)))
        layers.append(nn.ReLU())
    return nn.Sequential(*layers[:-1])


def train_step(model: nn.Module) -> tuple[Callable[[], None], torch.optim.Optimizer]:
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    gen = torch.Generator().manual_seed(1)
    x, y = torch.randn(BATCH, IN, generator=gen), torch.randint(0, OUT, (BATCH,), generator=gen)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()

    return step, opt


def infer_step(model: nn.Module, batch: int) -> Callable[[], None]:
    x = torch.randn(batch, IN, generator=torch.Generator().manual_seed(2))

    def step() -> None:
        with torch.no_grad():
            model(x)

    return step


def interleaved(fns: dict[str, Callable[[], None]], rounds: int, warmup: int) -> dict[str, tuple]:
    """Per variant: (median ms, median over rounds of the ratio to ``dense``)."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    keys = list(fns)
    times: dict[str, list[float]] = {k: [] for k in keys}
    for r in range(rounds):
        order = keys[r % len(keys) :] + keys[: r % len(keys)]
        for k in order:
            t0 = time.perf_counter()
            fns[k]()
            times[k].append(time.perf_counter() - t0)
    out = {}
    for k in keys:
        ratios = [a / b for a, b in zip(times[k], times["dense"], strict=True)]
        out[k] = (statistics.median(times[k]) * 1e3, statistics.median(ratios))
    return out


def flop_ratio(model: nn.Module, dense: nn.Module) -> float:
    """Multiply-adds of a training step vs dense: live weights / all weights (the limit).

    Forward, input gradient and weight gradient each cost one multiply-add per live weight and
    example, so the ratio of a whole step is the live fraction of the Linear weights.
    """
    live = sum(m.nnz for m in model.modules() if isinstance(m, SparseLinear))
    total = sum(m.weight.numel() for m in dense.modules() if isinstance(m, nn.Linear))
    return live / total


def state_bytes(model: nn.Module, opt: torch.optim.Optimizer) -> int:
    total = 0
    for p in model.parameters():
        total += p.numel() * p.element_size()
        if p.grad is not None:
            total += p.grad.numel() * p.grad.element_size()
        for v in opt.state.get(p, {}).values():
            if isinstance(v, torch.Tensor):
                total += v.numel() * v.element_size()
    for m in model.modules():
        for b in m.buffers(recurse=False):
            total += b.numel() * b.element_size()
        s = getattr(m, "_structure", None)
        if s is not None:  # transposed pattern kept next to the buffers
            total += sum(t.numel() * t.element_size() for t in (s.t_crow, s.t_col, s.perm))
    return total


def run_width(width: int, sparsities: list[float], rounds: int, warmup: int) -> list[str]:
    kinds = ["sparsetrain"] + (["sparselab"] if sparselab is not None else [])
    train, infer1, infer64, opts, models = {}, {}, {}, {}, {}
    dense = build(width, "dense", 0.0)
    train["dense"], opts["dense"] = train_step(dense)
    models["dense"] = dense
    dense_inf = build(width, "dense", 0.0)
    infer1["dense"], infer64["dense"] = infer_step(dense_inf, 1), infer_step(dense_inf, 64)
    for s, kind in itertools.product(sparsities, kinds):
        key = f"{kind}@{s:.0%}"
        models[key] = build(width, kind, s)
        train[key], opts[key] = train_step(models[key])
        inf = (
            build(width, "sparsetrain-infer", s) if kind == "sparsetrain" else build(width, kind, s)
        )
        infer1[key], infer64[key] = infer_step(inf, 1), infer_step(inf, 64)
    window = _machine.Window()
    t_train = interleaved(train, rounds, warmup)
    t_b1 = interleaved(infer1, rounds * 4, warmup)
    t_b64 = interleaved(infer64, rounds * 2, warmup)
    pressure = _machine.fmt(window.share())
    mem = {k: state_bytes(models[k], opts[k]) for k in models}
    flops = {s: flop_ratio(models[f"sparsetrain@{s:.0%}"], dense) for s in sparsities}
    rows = []
    for key in train:
        if key == "dense":
            continue
        kind, s = key.split("@")
        limit = flops[float(s.rstrip("%")) / 100]
        rows.append(
            f"| 784-{width}-{width}-10 | {s} | {kind} | {limit:.3f} | {t_train[key][1]:.2f} "
            f"({t_train[key][0]:.1f} / {t_train['dense'][0]:.1f} ms) | "
            f"{t_b1[key][1]:.2f} ({t_b1[key][0]:.3f} / {t_b1['dense'][0]:.3f} ms) | "
            f"{t_b64[key][1]:.2f} ({t_b64[key][0]:.2f} / {t_b64['dense'][0]:.2f} ms) | "
            f"{mem[key] / 2**20:.1f} / {mem['dense'] / 2**20:.1f} MiB = "
            f"{mem[key] / mem['dense']:.3f} | {pressure} |"
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="width 1024 only, few rounds")
    parser.add_argument("--rounds", type=int, default=None, help="timed rounds (training)")
    _machine.add_arguments(parser)
    args = parser.parse_args()
    widths = [1024] if args.quick else [1024, 4096]
    load = _machine.MachineLoad.start(args)
    print(f"batch {BATCH}, fp32")
    if sparselab is None:
        print("sparselab not importable: its rows are omitted")
    print()
    print(
        "| MLP | sparsity | layer | FLOP ratio (limit) | train step sparse/dense | "
        "infer b1 sparse/dense | infer b64 sparse/dense | train memory (w + grad + momentum) | "
        "CPU pressure % |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for width in widths:
        if args.rounds is not None:
            rounds = args.rounds
        elif args.quick:
            rounds = 10
        else:
            rounds = 60 if width <= 1024 else 20
        for row in run_width(width, [0.9, 0.98], rounds, warmup=3):
            print(row, flush=True)
    load.finish()


if __name__ == "__main__":
    main()
