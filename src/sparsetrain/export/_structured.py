"""Structured exports: 2:4 Linear weights for sparse tensor cores, block-sparse Linear layers."""

from __future__ import annotations

from collections import Counter

import torch
from torch import nn

from sparsetrain.masking.structure import nm_groups
from sparsetrain.methods.lifecycle import attached_method
from sparsetrain.sparse.bench import LayerDecision
from sparsetrain.sparse.blocks import BlockSparseInferenceLinear, bench_block_layer

SEMI_STRUCTURED_DTYPES = (torch.float16, torch.bfloat16)
INFERENCE_MODES = ("measure", "always")


def _plain_linears(model: nn.Module, what: str) -> list[tuple[str, nn.Linear]]:
    """Convertible ``nn.Linear`` layers: exact class, weight and module under one name."""
    method = attached_method(model)
    if method is not None:
        raise ValueError(
            f"model has a {method.name!r} method attached; call squash(model) before {what}"
        )
    if isinstance(model, nn.Linear):
        raise ValueError(f"model is a bare nn.Linear; wrap it (nn.Sequential(layer)) for {what}")
    params = Counter(id(p) for _, p in model.named_parameters(remove_duplicate=False))
    modules = Counter(id(m) for _, m in model.named_modules(remove_duplicate=False))
    return [
        (n, m)
        for n, m in model.named_modules()
        if type(m) is nn.Linear and params[id(m.weight)] == 1 and modules[id(m)] == 1
    ]


def is_two_four(weight: torch.Tensor) -> bool:
    """Whether every group of 4 consecutive inputs of every row holds at most 2 nonzeros."""
    if weight.dim() != 2 or weight.shape[1] % 4:
        return False
    return bool((nm_groups(weight.detach() != 0, 4).sum(1) <= 2).all())


def to_semi_structured(model: nn.Module) -> dict[str, str]:
    """Give every 2:4 ``nn.Linear`` a ``torch.sparse`` semi-structured weight, in place.

    Each plain ``nn.Linear`` whose weight has at most 2 nonzeros in every group of 4
    consecutive inputs (``structure="2:4"``, squashed) gets its weight replaced by
    ``torch.sparse.to_sparse_semi_structured(weight)`` (a frozen parameter), which runs on the
    sparse tensor cores of NVIDIA Ampere and newer GPUs. The layer must be on CUDA in float16 or
    bfloat16; PyTorch also has shape minimums (the error it raises is passed on).

    Args:
        model: A squashed model (no method attached).

    Returns:
        Per Linear layer name: ``"2:4"`` (converted) or why it was left dense.

    Raises:
        RuntimeError: The 2:4 layers are not on CUDA (the kernels are CUDA-only).
        TypeError: A 2:4 layer's dtype is not float16 or bfloat16.
        ValueError: A method is attached, or no Linear weight is 2:4.
    """
    linears = _plain_linears(model, "to_semi_structured")
    verdict = {n: "2:4" if is_two_four(m.weight) else "not 2:4" for n, m in linears}
    todo = [(n, m) for n, m in linears if verdict[n] == "2:4"]
    if not todo:
        raise ValueError(
            f"no nn.Linear weight of {type(model).__name__} is 2:4 ({len(linears)} layers); "
            "train with structure='2:4' and squash() the model first"
        )
    devices = sorted({str(m.weight.device) for _, m in todo})
    if any(m.weight.device.type != "cuda" for _, m in todo):
        raise RuntimeError(
            f"to_semi_structured: 2:4 sparse kernels (torch.sparse.to_sparse_semi_structured) "
            f"are CUDA-only; the 2:4 layers are on {', '.join(devices)}"
        )
    bad = sorted(
        {str(m.weight.dtype) for _, m in todo if m.weight.dtype not in SEMI_STRUCTURED_DTYPES}
    )
    if bad:
        raise TypeError(
            f"to_semi_structured: 2:4 layers must be float16 or bfloat16, got {', '.join(bad)}; "
            "call model.half() or model.to(torch.bfloat16) first"
        )
    for _, m in todo:
        sparse = torch.sparse.to_sparse_semi_structured(m.weight.detach())
        m.weight = nn.Parameter(sparse, requires_grad=False)
    return verdict


def to_block_sparse_inference(
    model: nn.Module,
    blocksize: tuple[int, int],
    *,
    batch_size: int = 1,
    mode: str = "measure",
    margin: float = 0.05,
    repeats: int = 20,
    warmup: int = 3,
) -> list[LayerDecision]:
    """Swap block-sparse ``nn.Linear`` layers for BSR layers where that is measured faster.

    Each plain ``nn.Linear`` whose shape divides into ``blocksize`` and whose weight has zeros
    is timed dense vs :class:`~sparsetrain.sparse.blocks.BlockSparseInferenceLinear` at
    ``batch_size`` on this machine (its own weights, interleaved, medians); it is converted in
    place only if ``bsr_ms <= (1 - margin) * dense_ms`` (``mode="always"``: every such layer).
    The decisions are the table of ``execution="auto"`` (print with ``format_decisions``).

    Args:
        model: A squashed model (no method attached), e.g. trained with
            ``structure="block:RxC"``.
        blocksize: ``(R, C)`` of the BSR blocks (the training structure's).
        batch_size: The serving batch size to measure at.
        mode: ``"measure"`` or ``"always"``.
        margin: Relative speed-up required.
        repeats: Timed rounds per layer.
        warmup: Untimed rounds first.

    Returns:
        One :class:`LayerDecision` per plain Linear layer (``choice`` ``"sparse"`` = BSR).

    Raises:
        ValueError: A method is attached, or ``mode`` or ``blocksize`` is bad.
    """
    if mode not in INFERENCE_MODES:
        raise ValueError(f"unknown mode {mode!r}; valid: {', '.join(INFERENCE_MODES)}")
    ok = (
        isinstance(blocksize, tuple | list)
        and len(blocksize) == 2
        and all(isinstance(v, int) and v >= 1 for v in blocksize)
    )
    if not ok:
        raise ValueError(f"blocksize must be a pair of ints >= 1, got {blocksize!r}")
    r, c = blocksize
    nan = float("nan")
    decisions = []
    for name, m in _plain_linears(model, "to_block_sparse_inference"):
        shape = (m.out_features, m.in_features)
        density = float((m.weight != 0).sum()) / m.weight.numel()
        if shape[0] % r or shape[1] % c or density >= 1.0:
            decisions.append(LayerDecision(name, shape, density, "dense", nan, nan))
            continue
        dense_ms, bsr_ms = (nan, nan)
        if mode == "measure":
            dense_ms, bsr_ms = bench_block_layer(
                m, (r, c), batch_size, repeats=repeats, warmup=warmup
            )
        faster = mode == "always" or bsr_ms <= (1.0 - margin) * dense_ms
        if faster:
            parent_name, _, attr = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, attr, BlockSparseInferenceLinear(m.weight, m.bias, (r, c)))
        choice = "sparse" if faster else "dense"
        decisions.append(LayerDecision(name, shape, density, choice, dense_ms, bsr_ms))
    return decisions
