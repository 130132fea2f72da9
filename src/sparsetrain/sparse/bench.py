"""Per-layer honesty: measure dense vs sparse on *this* machine and shape before choosing.

Sparse kernels win only when the density is low enough for the shape and batch size; on small
layers, at batch 1 or at moderate density, dense BLAS is faster. Nothing here decides from
theory: :func:`bench_layer` times both paths (variants interleaved, medians), and
:func:`plan_layers` applies it to every Linear layer of a model and reports the choice per layer.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from sparsetrain.sparse._csr import CSRStructure, flat_indices, spmm_t, structure_from_mask
from sparsetrain.sparse.layers import SparseInferenceLinear, SparseLinear

Mode = Literal["train", "inference"]
MODES: tuple[str, ...] = ("train", "inference")


def time_interleaved(
    fns: dict[str, Callable[[], Any]], repeats: int = 30, warmup: int = 3
) -> dict[str, float]:
    """Median wall time in ms of each function, calling them round-robin to share the noise."""
    if repeats < 1 or warmup < 0:
        raise ValueError(f"need repeats >= 1 and warmup >= 0, got {repeats}, {warmup}")
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for key, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[key].append(time.perf_counter() - t0)
    return {k: statistics.median(v) * 1e3 for k, v in times.items()}


def random_mask(
    shape: tuple[int, ...], density: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """A ``bool`` mask with exactly ``round(density * numel)`` live entries."""
    if not 0.0 <= density <= 1.0:
        raise ValueError(f"density must be in [0, 1], got {density}")
    numel = 1
    for d in shape:
        numel *= d
    keep = round(density * numel)
    mask = torch.zeros(numel, dtype=torch.bool)
    mask[torch.randperm(numel, generator=generator)[:keep]] = True
    return mask.view(shape)


def _check_shape(layer_shape: tuple[int, int], batch_size: int) -> tuple[int, int]:
    if len(layer_shape) != 2 or min(layer_shape) < 1:
        raise ValueError(f"layer_shape must be (out_features, in_features) >= 1, got {layer_shape}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    return int(layer_shape[0]), int(layer_shape[1])


def _choice(ratio: float, margin: float) -> str:
    return "sparse" if ratio <= 1.0 - margin else "dense"


def bench_layer(
    layer_shape: tuple[int, int],
    density: float,
    batch_size: int,
    *,
    modes: tuple[str, ...] = MODES,
    input_grad: bool = True,
    input_feature_major: bool = False,
    grad_feature_major: bool = False,
    repeats: int = 30,
    warmup: int = 3,
    margin: float = 0.05,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
) -> dict[str, Any]:
    """Time one Linear shape dense vs sparse at the run's batch size.

    Training is forward + backward (``nn.Linear`` vs :class:`SparseLinear`); inference is a
    no-grad forward (``F.linear`` vs :class:`SparseInferenceLinear`).

    Args:
        layer_shape: ``(out_features, in_features)``.
        density: Fraction of live weights.
        batch_size: Rows of the input.
        modes: Which of ``"train"`` and ``"inference"`` to measure.
        input_grad: Training also computes the input gradient (every layer but the first).
        input_feature_major: The sparse layer's input arrives feature-major, as a preceding
            sparse layer (and the ReLU after it) hands it over: no transpose copy. Otherwise
            it is an ordinary contiguous ``(batch, in)`` tensor, as from a data loader.
        grad_feature_major: The sparse layer's output gradient arrives feature-major, as from
            a following sparse layer; otherwise contiguous ``(batch, out)``, as from a loss.
        repeats: Timed rounds (median reported).
        warmup: Untimed rounds first.
        margin: Choose sparse only if ``sparse_ms <= (1 - margin) * dense_ms``.
        seed: Seed of the random weights, mask and inputs.
        dtype: Floating dtype.

    Returns:
        ``shape``, ``density``, ``batch_size``, and per measured mode ``m``: ``{m}_dense_ms``,
        ``{m}_sparse_ms``, ``{m}_ratio`` (sparse / dense) and ``m`` itself: ``"sparse"`` or
        ``"dense"``.
    """
    out_f, in_f = _check_shape(layer_shape, batch_size)
    bad = [m for m in modes if m not in MODES]
    if bad or not modes:
        raise ValueError(f"unknown mode {bad[0] if bad else modes!r}; valid: {', '.join(MODES)}")
    gen = torch.Generator().manual_seed(seed)
    mask = random_mask((out_f, in_f), density, gen)
    dense = nn.Linear(in_f, out_f, dtype=dtype)
    with torch.no_grad():
        dense.weight.mul_(mask)
    x = torch.randn(batch_size, in_f, generator=gen, dtype=dtype)
    x_sparse = x.t().contiguous().t() if input_feature_major else x
    gy = torch.randn(batch_size, out_f, generator=gen, dtype=dtype)
    gy_sparse = gy.t().contiguous().t() if grad_feature_major else gy
    result: dict[str, Any] = {
        "shape": (out_f, in_f),
        "density": density,
        "batch_size": batch_size,
    }
    if "train" in modes:
        sparse = SparseLinear(in_f, out_f, mask, dtype=dtype)
        xd = x.clone().requires_grad_(input_grad)
        xs = x_sparse.detach().requires_grad_(input_grad)

        def run(layer: nn.Module, inp: torch.Tensor, g: torch.Tensor) -> Callable[[], None]:
            def step() -> None:
                layer.zero_grad(set_to_none=True)
                inp.grad = None
                layer(inp).backward(g)

            return step

        runs = {"dense": run(dense, xd, gy), "sparse": run(sparse, xs, gy_sparse)}
        t = time_interleaved(runs, repeats, warmup)
        _record(result, "train", t, margin)
    if "inference" in modes:
        inf = SparseInferenceLinear(dense.weight, dense.bias, mask)
        w, b = dense.weight.detach(), dense.bias.detach()

        def dense_inf() -> None:
            with torch.no_grad():
                F.linear(x, w, b)

        t = time_interleaved({"dense": dense_inf, "sparse": lambda: inf(x_sparse)}, repeats, warmup)
        _record(result, "inference", t, margin)
    return result


def _record(result: dict[str, Any], mode: str, t: dict[str, float], margin: float) -> None:
    ratio = t["sparse"] / t["dense"] if t["dense"] > 0 else float("inf")
    result[f"{mode}_dense_ms"] = t["dense"]
    result[f"{mode}_sparse_ms"] = t["sparse"]
    result[f"{mode}_ratio"] = ratio
    result[mode] = _choice(ratio, margin)


def conv2d_csr(
    x: torch.Tensor,
    s: CSRStructure,
    values: torch.Tensor,
    kernel_size: int,
    *,
    stride: int = 1,
    padding: int = 0,
) -> torch.Tensor:
    """Inference conv2d as ``unfold`` + CSR product (``s`` is the ``(O, C·k·k)`` pattern)."""
    batch, _, h, w = x.shape
    h_out = (h + 2 * padding - kernel_size) // stride + 1
    w_out = (w + 2 * padding - kernel_size) // stride + 1
    cols = F.unfold(x, kernel_size, padding=padding, stride=stride)  # (B, C·k·k, L)
    xt = cols.transpose(0, 1).reshape(cols.shape[1], -1)  # (C·k·k, B·L), feature-major
    yt = spmm_t(s, values, xt, None)  # (O, B·L)
    return yt.view(s.shape[0], batch, h_out, w_out).transpose(0, 1)


def bench_conv2d(
    in_channels: int,
    out_channels: int,
    kernel_size: int,
    input_size: tuple[int, int],
    density: float,
    batch_size: int,
    *,
    stride: int = 1,
    padding: int = 0,
    repeats: int = 20,
    warmup: int = 2,
    margin: float = 0.05,
    seed: int = 0,
) -> dict[str, Any]:
    """Check whether an unfold + CSR forward would beat dense ``conv2d`` for one shape.

    sparsetrain ships no sparse convolution. The check times ``unfold`` (im2col) + the CSR
    product of :class:`SparseLinear`'s forward against ``F.conv2d`` (oneDNN), forward only, no
    grad. On the project's 2-core CPU it was 6–18× *slower* than dense at training batch sizes
    (ResNet-like 3×3 layers, batch 32–128, 90–98% sparsity): the im2col copy alone outweighs
    the saved multiply-adds. Only batch-1 inference on small feature maps came out ahead. So
    ``choice`` says ``"sparse"`` only where this measurement, on your machine and shape, says
    so: a signal that a sparse kernel would pay, not a switch sparsetrain acts on.

    Returns:
        ``dense_ms``, ``sparse_ms``, ``ratio`` (sparse / dense) and ``choice``.
    """
    if min(in_channels, out_channels, kernel_size, batch_size, *input_size) < 1:
        raise ValueError("channels, kernel_size, input_size and batch_size must all be >= 1")
    gen = torch.Generator().manual_seed(seed)
    shape = (out_channels, in_channels, kernel_size, kernel_size)
    mask = random_mask(shape, density, gen)
    w = torch.randn(shape, generator=gen) * mask
    x = torch.randn(batch_size, in_channels, *input_size, generator=gen)
    s = structure_from_mask(mask.reshape(out_channels, -1))
    values = w.reshape(-1)[flat_indices(s)]

    def sparse() -> torch.Tensor:
        return conv2d_csr(x, s, values, kernel_size, stride=stride, padding=padding)

    def dense() -> torch.Tensor:
        with torch.no_grad():
            return F.conv2d(x, w, stride=stride, padding=padding)

    t = time_interleaved({"dense": dense, "sparse": sparse}, repeats, warmup)
    ratio = t["sparse"] / t["dense"] if t["dense"] > 0 else float("inf")
    return {
        "shape": shape,
        "density": density,
        "batch_size": batch_size,
        "dense_ms": t["dense"],
        "sparse_ms": t["sparse"],
        "ratio": ratio,
        "choice": _choice(ratio, margin),
    }


@dataclass(frozen=True)
class LayerDecision:
    """Which execution one layer gets, and the measurement behind it."""

    name: str
    shape: tuple[int, int]
    density: float
    choice: str
    dense_ms: float
    sparse_ms: float

    @property
    def ratio(self) -> float:
        return self.sparse_ms / self.dense_ms if self.dense_ms > 0 else float("inf")


def format_decisions(decisions: list[LayerDecision]) -> str:
    """A Markdown table of per-layer decisions."""
    lines = [
        "| layer | shape | density | dense ms | sparse ms | sparse/dense | choice |",
        "|---|---|---:|---:|---:|---:|---|",
    ]
    for d in decisions:
        lines.append(
            f"| {d.name} | {d.shape[0]}x{d.shape[1]} | {d.density:.4f} | {d.dense_ms:.3f} | "
            f"{d.sparse_ms:.3f} | {d.ratio:.2f} | {d.choice} |"
        )
    return "\n".join(lines)


def _linear_density(module: nn.Module, mask: torch.Tensor | None) -> float:
    if isinstance(module, SparseLinear | SparseInferenceLinear):
        return module.nnz / (module.in_features * module.out_features)
    live = mask if mask is not None else module.weight.detach() != 0
    return float(live.sum()) / live.numel()


def plan_layers(
    model: nn.Module,
    batch_size: int,
    *,
    mode: Mode = "train",
    masks: dict[str, torch.Tensor] | None = None,
    force: str | None = None,
    **bench_kwargs: Any,
) -> list[LayerDecision]:
    """Measure every Linear layer of ``model`` and choose dense or sparse execution for each.

    Layers of the same shape, density and position class are measured once. Layouts follow
    a stack of sparse layers: the first layer gets a batch-major input (from the data) and
    computes no input gradient; later layers get feature-major inputs; every layer but the
    last gets a feature-major output gradient (the last one's comes from the loss). A layer
    whose neighbours end up dense pays one transpose copy more than measured here.

    Args:
        model: Holds ``nn.Linear`` (or already sparse) layers.
        batch_size: The run's batch size.
        mode: ``"train"`` or ``"inference"``.
        masks: Live masks by weight name (``"fc1.weight"``); default: the weight's nonzeros.
        force: ``"sparse"`` or ``"dense"`` skips measurement (decisions carry NaN timings).
        **bench_kwargs: Passed to :func:`bench_layer` (``repeats``, ``margin``, ...).

    Returns:
        One decision per Linear layer, in module order.
    """
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; valid: {', '.join(MODES)}")
    if force not in (None, "sparse", "dense"):
        raise ValueError(f"force must be None, 'sparse' or 'dense', got {force!r}")
    kinds = nn.Linear | SparseLinear | SparseInferenceLinear
    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, kinds)]
    cache: dict[tuple[int, int, float, bool, bool], tuple[float, float, str]] = {}
    decisions = []
    for i, (name, module) in enumerate(layers):
        mask = (masks or {}).get(f"{name}.weight" if name else "weight")
        density = _linear_density(module, mask)
        shape = (module.out_features, module.in_features)
        # a layer without zeros has nothing to skip: dense by definition, not measured
        force_i = "dense" if force is None and density >= 1.0 else force
        if force_i is not None:
            nan = float("nan")
            decisions.append(LayerDecision(name, shape, density, force_i, nan, nan))
            continue
        first, last = i == 0, i == len(layers) - 1
        key = (*shape, round(density, 4), first, last)
        if key not in cache:
            r = bench_layer(
                shape,
                density,
                batch_size,
                modes=(mode,),
                input_grad=not first,
                input_feature_major=not first,
                grad_feature_major=not last,
                **bench_kwargs,
            )
            cache[key] = (r[f"{mode}_dense_ms"], r[f"{mode}_sparse_ms"], r[mode])
        dense_ms, sparse_ms, choice = cache[key]
        decisions.append(LayerDecision(name, shape, density, choice, dense_ms, sparse_ms))
    return decisions
