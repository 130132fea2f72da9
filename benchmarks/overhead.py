"""Per-step overhead of sparsity methods vs dense training (masked-dense execution).

    .venv/bin/python benchmarks/overhead.py                       # the default method set
    .venv/bin/python benchmarks/overhead.py --methods st3 optg scl dnw str
    .venv/bin/python benchmarks/overhead.py --rounds 300 --models lenet300_100

For each model (LeNet-300-100 on 1x28x28, LeNet-5-Caffe on 1x28x28; batch 128, SGD momentum
0.9), one copy per variant is trained on the same fixed batch. Variants run interleaved, one step
each per round in a rotating order, so machine noise hits all of them alike. Topology updates
are pushed beyond the benchmark (the cost measured is the per-step cost between updates).
Prints medians of the step time and the median over rounds of the per-round ratio to dense.
"""

from __future__ import annotations

import argparse
import statistics
import time

import _machine
import torch
from torch import nn

import sparsetrain
from sparsetrain.methods.registry import get_method_info, method_options
from sparsetrain.models import create_model, uses_channels_last

FAR = 10**7
OPTIONS: dict[str, dict[str, object]] = {
    "rigl": {"update_interval": FAR},
    "set": {"update_interval": FAR},
    "mest": {"update_interval": FAR},
    "dst": {"update_interval": FAR},
    "gmp": {"update_interval": FAR, "end_step": FAR},
    "granet": {"update_interval": FAR, "end_step": FAR},
    "optg": {"steps_per_epoch": FAR // 100},
    # ST-3 measured in its ramp (threshold + soft threshold + rescale every step), not its
    # dense warm-up phase
    "st3": {"begin_step": 0, "end_step": FAR // 2, "freeze_step": FAR - 1},
    "st3_sigma": {"begin_step": 0, "end_step": FAR // 2, "freeze_step": FAR - 1},
}


def build(model_name: str, method_name: str, sparsity: float):
    torch.manual_seed(0)
    model = create_model(model_name, num_classes=10, input_shape=(1, 28, 28))
    if uses_channels_last(model_name):
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    info = get_method_info(method_name)
    kwargs: dict[str, object] = {"total_steps": FAR, **OPTIONS.get(method_name, {})}
    if method_name != "dense" and info.sparsity_mode == "target":
        kwargs["sparsity"] = sparsity
    valid = method_options(info.factory)
    method = sparsetrain.create_method(
        method_name, **{k: v for k, v in kwargs.items() if k in valid}
    )
    method.attach(model, opt)
    return model, opt


def measure(
    models: list[str],
    methods: list[str],
    *,
    sparsity: float = 0.9,
    batch_size: int = 128,
    rounds: int = 200,
    warmup: int = 20,
) -> list[dict[str, object]]:
    """Interleaved per-step timings; one row per (model, method) with its ratio to dense.

    ``cpu_pressure``: % of the model's measuring time in which some task waited for a CPU.
    """
    loss_fn = nn.CrossEntropyLoss()
    rows: list[dict[str, object]] = []
    for model_name in models:
        g = torch.Generator().manual_seed(0)
        x = torch.randn(batch_size, 1, 28, 28, generator=g)
        if uses_channels_last(model_name):
            x = x.contiguous(memory_format=torch.channels_last)
        y = torch.randint(0, 10, (batch_size,), generator=g)
        names = ["dense", *methods]
        runs = {n: build(model_name, n, sparsity) for n in names}
        times: dict[str, list[float]] = {n: [] for n in names}
        window = _machine.Window()
        for r in range(warmup + rounds):
            order = names[r % len(names) :] + names[: r % len(names)]
            for n in order:
                model, opt = runs[n]
                t0 = time.perf_counter()
                loss = loss_fn(model(x), y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                if r >= warmup:
                    times[n].append(time.perf_counter() - t0)
        dense = statistics.median(times["dense"])
        pressure = window.share()
        for n in methods:
            ratio = statistics.median(a / b for a, b in zip(times[n], times["dense"], strict=True))
            rows.append(
                {
                    "model": model_name,
                    "method": n,
                    "step_ms": statistics.median(times[n]) * 1e3,
                    "dense_ms": dense * 1e3,
                    "ratio": ratio,
                    "cpu_pressure": pressure,
                }
            )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="+", default=["static", "gmp", "rigl"])
    parser.add_argument("--models", nargs="+", default=["lenet300_100", "lenet5"])
    parser.add_argument("--sparsity", type=float, default=0.9)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=20)
    _machine.add_arguments(parser)
    args = parser.parse_args()
    load = _machine.MachineLoad.start(args)
    print(f"batch {args.batch_size}, rounds {args.rounds}")
    print("| model | method | median step (ms) | dense (ms) | ratio vs dense | CPU pressure % |")
    print("|---|---|---|---|---|---|")
    rows = measure(
        args.models,
        args.methods,
        sparsity=args.sparsity,
        batch_size=args.batch_size,
        rounds=args.rounds,
        warmup=args.warmup,
    )
    for r in rows:
        print(
            f"| {r['model']} | {r['method']} | {r['step_ms']:.3f} | {r['dense_ms']:.3f} "
            f"| {r['ratio']:.3f} | {_machine.fmt(r['cpu_pressure'])} |"
        )
    load.finish()


if __name__ == "__main__":
    main()
