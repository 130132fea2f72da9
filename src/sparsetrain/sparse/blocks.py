"""Block-sparse (BSR) inference Linear layers, and timing one against its dense original.

A weight whose pruned entries form whole ``R x C`` blocks (``structure="block:RxC"``) is stored
as PyTorch's BSR layout (``Tensor.to_sparse_bsr``): the live blocks, their block-column indices
and block-row pointers. PyTorch multiplies BSR by dense on the CPU and on CUDA; whether that is
faster than the dense GEMM depends on the shape, the density, the block size and the batch, so
:func:`~sparsetrain.export.to_block_sparse_inference` measures each layer before converting it.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from sparsetrain.sparse.bench import time_interleaved


def _bsr(weight: torch.Tensor, blocksize: tuple[int, int]) -> torch.Tensor:
    with warnings.catch_warnings():  # "BSR support is in beta": said once in our docs instead
        warnings.simplefilter("ignore", UserWarning)
        return weight.to_sparse_bsr(blocksize)


class BlockSparseInferenceLinear(nn.Module):
    """Inference-only Linear on a BSR weight: y = x Wᵀ + b with only the live blocks stored.

    Blocks holding any nonzero entry are stored (whole), others skipped; all tensors are
    buffers (``crow_indices``, ``col_indices``, ``blocks``, ``bias``), so the module has no
    parameters and its output never requires grad.

    Args:
        weight: Dense ``(out, in)`` weight; ``out`` and ``in`` divisible by the block shape.
        bias: Optional bias (``out``).
        blocksize: ``(R, C)``.
    """

    def __init__(
        self,
        weight: torch.Tensor,
        bias: torch.Tensor | None = None,
        blocksize: tuple[int, int] = (4, 4),
    ) -> None:
        super().__init__()
        if weight.dim() != 2:
            raise ValueError(f"weight must be 2-D (out, in), got shape {tuple(weight.shape)}")
        r, c = blocksize
        if weight.shape[0] % r or weight.shape[1] % c:
            raise ValueError(
                f"weight of shape {tuple(weight.shape)} cannot be cut into {r}x{c} blocks"
            )
        self.out_features, self.in_features = weight.shape
        self.blocksize = (int(r), int(c))
        w = _bsr(weight.detach(), self.blocksize)
        self.register_buffer("crow_indices", w.crow_indices().clone())
        self.register_buffer("col_indices", w.col_indices().clone())
        self.register_buffer("blocks", w.values().clone())
        self.register_buffer("bias", None if bias is None else bias.detach().clone())
        self._cache: torch.Tensor | None = None

    @property
    def nnz(self) -> int:
        """Stored entries (live blocks × block size)."""
        return self.blocks.numel()

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_cache"] = None
        return state

    def _weight(self) -> torch.Tensor:
        w = self._cache
        if w is None or w.values().data_ptr() != self.blocks.data_ptr():
            size = (self.out_features, self.in_features)
            w = torch.sparse_bsr_tensor(
                self.crow_indices, self.col_indices, self.blocks, size, check_invariants=False
            )
            self._cache = w
        return w

    def to_dense(self) -> torch.Tensor:
        """The dense ``(out, in)`` weight."""
        return self._weight().to_dense()

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.in_features:
            raise ValueError(
                f"input has {x.shape[-1]} features, the layer expects {self.in_features}"
            )
        lead = x.shape[:-1]
        y = (self._weight() @ x.reshape(-1, self.in_features).t()).t()
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*lead, self.out_features)

    def extra_repr(self) -> str:
        density = self.nnz / (self.out_features * self.in_features)
        r, c = self.blocksize
        return (
            f"in={self.in_features}, out={self.out_features}, blocks={r}x{c}, density={density:.4f}"
        )


def bench_block_layer(
    layer: nn.Linear,
    blocksize: tuple[int, int],
    batch_size: int,
    *,
    repeats: int = 20,
    warmup: int = 3,
    seed: int = 0,
) -> tuple[float, float]:
    """Median ms of a no-grad forward of ``layer`` dense and as BSR, interleaved."""
    sparse = BlockSparseInferenceLinear(layer.weight, layer.bias, blocksize)
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch_size, layer.in_features, generator=gen, dtype=layer.weight.dtype)
    w, b = layer.weight.detach(), None if layer.bias is None else layer.bias.detach()

    def dense() -> None:
        with torch.no_grad():
            F.linear(x, w, b)

    t = time_interleaved({"dense": dense, "sparse": lambda: sparse(x)}, repeats, warmup)
    return t["dense"], t["sparse"]
