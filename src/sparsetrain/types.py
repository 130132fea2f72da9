"""Shared type aliases for sparsetrain.

Kept in one module so that every layer of the package (masking, criteria, distributions,
schedules, methods) speaks the same vocabulary.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch

MaskDict = dict[str, torch.Tensor]
"""Fully qualified parameter name (``"layer1.0.conv1.weight"``) to a ``bool`` mask."""

SparsityDict = dict[str, float]
"""Fully qualified parameter name to a sparsity (fraction of zeros) in ``[0, 1]``."""

ShapeDict = Mapping[str, tuple[int, ...]]
"""Fully qualified parameter name to the tensor's shape."""

ScoreFn = Callable[..., torch.Tensor]
"""A pruning or growth criterion: tensors in, a score tensor of the weight's shape out."""

ScalarSchedule = Callable[[int], float]
"""A function of the optimizer step (number of completed steps) returning a scalar."""
