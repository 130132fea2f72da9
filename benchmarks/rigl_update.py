"""Time one RigL topology update over the weight shapes of ResNet-50 (25.5M weights).

    .venv/bin/python benchmarks/rigl_update.py [--sparsity 0.9] [--repeats 5]

Builds Conv2d/Linear modules with ResNet-50's weight shapes (no forward pass needed), attaches
``rigl`` with ERK at the given sparsity, fills every gradient with random values, and times
``update_topology`` (drop lowest |w| + grow largest |g| per tensor, optimizer state surgery
included). Prints the median over repeats.
"""

from __future__ import annotations

import argparse
import statistics
import time

import _machine
import torch
from torch import nn

import sparsetrain


def resnet50_weight_modules() -> nn.ModuleList:
    """Conv/Linear modules with exactly ResNet-50's weight shapes (torchvision layout)."""
    mods: list[nn.Module] = [nn.Conv2d(3, 64, 7, bias=False)]
    c_in = 64
    for width, blocks in zip((64, 128, 256, 512), (3, 4, 6, 3), strict=True):
        for b in range(blocks):
            mods += [
                nn.Conv2d(c_in, width, 1, bias=False),
                nn.Conv2d(width, width, 3, bias=False),
                nn.Conv2d(width, width * 4, 1, bias=False),
            ]
            if b == 0:
                mods.append(nn.Conv2d(c_in, width * 4, 1, bias=False))
            c_in = width * 4
    mods.append(nn.Linear(2048, 1000))
    return nn.ModuleList(mods)


def time_update(sparsity: float = 0.9, repeats: int = 5) -> dict[str, float]:
    """Seconds per RigL update over ResNet-50 shapes (median, min, max) and mask bytes/weight."""
    torch.manual_seed(0)
    model = resnet50_weight_modules()
    n_weights = sum(m.weight.numel() for m in model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    method = sparsetrain.create_method(
        "rigl", sparsity=sparsity, total_steps=10_000, update_interval=100
    )
    method.attach(model, opt)
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    opt.step()  # creates momentum buffers, so state surgery is part of the timing
    times = []
    for r in range(repeats):
        grads = {t.name: torch.randn_like(t.param) for t in method.targets}
        t0 = time.perf_counter()
        method.update_topology(100 * (r + 1), grads)
        times.append(time.perf_counter() - t0)
    mask_bytes = sum(t.mask.numel() * t.mask.element_size() for t in method.targets)
    return {
        "weights": float(n_weights),
        "tensors": float(len(method.targets)),
        "median_s": statistics.median(times),
        "min_s": min(times),
        "max_s": max(times),
        "mask_bytes_per_weight": mask_bytes / n_weights,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sparsity", type=float, default=0.9)
    parser.add_argument("--repeats", type=int, default=5)
    _machine.add_arguments(parser)
    args = parser.parse_args()
    load = _machine.MachineLoad.start(args)
    r = time_update(args.sparsity, args.repeats)
    n_w, n_t = r["weights"] / 1e6, int(r["tensors"])
    print(f"weights: {n_w:.2f}M in {n_t} tensors, sparsity {args.sparsity}")
    print(
        f"rigl update: median {r['median_s']:.3f} s  (min {r['min_s']:.3f}, max {r['max_s']:.3f})"
    )
    print(f"mask memory: {r['mask_bytes_per_weight']:.2f} bytes per weight")
    load.finish()


if __name__ == "__main__":
    main()
