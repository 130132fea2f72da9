"""Export: plain models, sparse inference layers and compressed checkpoints.

Lifecycle: ``attach`` → train → :func:`squash` (plain ``nn.Module``, original parameter names,
zeros at pruned positions, nothing of sparsetrain left) → optionally
:func:`to_sparse_inference` (CSR Linear layers only where measured faster) and
:func:`save_compressed` / :func:`load_compressed` (safetensors, bitmask, CSR or N:M ranks per
tensor; the format is specified in ``sparsetrain.export.compressed``). Structured models:
:func:`to_semi_structured` (2:4 Linear weights on CUDA sparse tensor cores) and
:func:`to_block_sparse_inference` (BSR Linear layers where measured faster).

>>> import torch
>>> from torch import nn
>>> import sparsetrain
>>> model = nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4))
>>> opt = torch.optim.SGD(model.parameters(), lr=0.1)
>>> method = sparsetrain.create_method("static", sparsity=0.9, total_steps=10).attach(model, opt)
>>> model = squash(method)
>>> sparsetrain.attached_method(model) is None
True
"""

from sparsetrain.export._squash import squash, to_sparse_inference
from sparsetrain.export._structured import to_block_sparse_inference, to_semi_structured
from sparsetrain.export.compressed import FORMAT_VERSION, load_compressed, save_compressed
from sparsetrain.sparse.bench import LayerDecision, format_decisions

__all__ = [
    "FORMAT_VERSION",
    "LayerDecision",
    "format_decisions",
    "load_compressed",
    "save_compressed",
    "squash",
    "to_block_sparse_inference",
    "to_semi_structured",
    "to_sparse_inference",
]
