"""Block-sparse (BSR) inference vs dense and unstructured CSR on the CPU, at 90% sparsity.

    .venv/bin/python benchmarks/block_inference.py            # the published table (minutes)
    .venv/bin/python benchmarks/block_inference.py --quick    # one shape, few rounds

One no-grad Linear forward, y = x Wᵀ + b, float32, for transformer-sized shapes (out x in) with
90% of the weight pruned: in whole R x C blocks (a random 10% of the blocks kept, what
``structure="block:RxC"`` leaves) run as ``BlockSparseInferenceLinear`` (PyTorch BSR), and
unstructured (a random 10% of the entries) run as ``SparseInferenceLinear`` (CSR), both
against the dense ``F.linear`` of the same masked weight. Every variant of one shape and batch
runs in one process, interleaved round-robin (``time_interleaved``), medians over rounds; the
table gives the median ms of dense and each ratio sparse / dense (< 1: faster).
"""

from __future__ import annotations

import argparse

import _machine
import torch
import torch.nn.functional as F

from sparsetrain.masking.structure import expand_blocks
from sparsetrain.sparse import SparseInferenceLinear
from sparsetrain.sparse.bench import time_interleaved
from sparsetrain.sparse.blocks import BlockSparseInferenceLinear

SHAPES = [(1024, 1024), (3072, 768), (768, 3072), (4096, 4096)]
BLOCKS = [(4, 4), (8, 8), (16, 16), (32, 32)]
BATCHES = [1, 16, 128]
DENSITY = 0.1


def measure(shape: tuple[int, int], batch: int, repeats: int) -> dict[str, float]:
    gen = torch.Generator().manual_seed(0)
    out_f, in_f = shape
    w = torch.randn(out_f, in_f, generator=gen)
    b = torch.randn(out_f, generator=gen)
    x = torch.randn(batch, in_f, generator=gen)
    fns = {}
    dense_w = {}
    for r, c in BLOCKS:
        keep = torch.rand(out_f // r, in_f // c, generator=gen) < DENSITY
        wb = w * expand_blocks(keep, r, c, shape)
        layer = BlockSparseInferenceLinear(wb, b, (r, c))
        fns[f"bsr {r}x{c}"] = lambda layer=layer: layer(x)
        dense_w[f"bsr {r}x{c}"] = wb
    wu = w * (torch.rand(shape, generator=gen) < DENSITY)
    csr = SparseInferenceLinear(wu, b)
    fns["csr"] = lambda: csr(x)

    def dense() -> None:
        with torch.no_grad():
            F.linear(x, wu, b)

    for key, wb in dense_w.items():  # BSR gives the dense output of its own masked weight
        torch.testing.assert_close(fns[key](), F.linear(x, wb, b), rtol=1e-4, atol=1e-3)
    t = time_interleaved({"dense": dense, **fns}, repeats, warmup=3)
    return t


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one shape, few rounds")
    parser.add_argument("--repeats", type=int, default=30)
    _machine.add_arguments(parser)
    args = parser.parse_args()
    load = _machine.MachineLoad.start(args)
    shapes = SHAPES[:1] if args.quick else SHAPES
    repeats = 5 if args.quick else args.repeats
    keys = [f"bsr {r}x{c}" for r, c in BLOCKS] + ["csr"]
    print("| shape (out x in) | batch | dense ms | " + " | ".join(keys) + " |")
    print("|---|---:|---:|" + "---:|" * len(keys))
    for shape in shapes:
        for batch in BATCHES:
            t = measure(shape, batch, repeats)
            ratios = " | ".join(f"{t[k] / t['dense']:.2f}" for k in keys)
            print(f"| {shape[0]}x{shape[1]} | {batch} | {t['dense']:.3f} | {ratios} |", flush=True)
    load.finish()


if __name__ == "__main__":
    main()
