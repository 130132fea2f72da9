"""Multi-layer perceptrons: LeNet-300-100 and the CIFAR-10 MLP of the Fantastic Weights study.

References:
    LeCun et al. 1998, "Gradient-based learning applied to document recognition" (LeNet-300-100);
    Nowak et al. 2023, https://arxiv.org/abs/2306.12230 (MLP 3072-1024-512-10).

Layers use PyTorch's default initialisation, as the reference code does.
"""

from __future__ import annotations

import itertools
import math
from collections import OrderedDict
from collections.abc import Sequence

from torch import nn

from sparsetrain.models._registry import register_model


class MLP(nn.Sequential):
    """Flatten, then ``fc1 → ReLU → … → fcN``: ReLU between layers, logits out.

    Parameters are named ``fc1.weight``, ``fc1.bias``, …, so the last layer is ``fc{N}``.

    Args:
        in_features: Flattened input size.
        num_classes: Output size.
        hidden_sizes: Widths of the hidden layers, first to last (empty: a linear model).
        bias: Whether the linear layers have biases.

    >>> import torch
    >>> MLP(784, 10, hidden_sizes=(300, 100))(torch.zeros(2, 1, 28, 28)).shape
    torch.Size([2, 10])
    """

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        hidden_sizes: Sequence[int] = (300, 100),
        bias: bool = True,
    ) -> None:
        sizes = [in_features, *hidden_sizes, num_classes]
        if not all(isinstance(s, int) and s > 0 for s in sizes[1:-1]):
            raise ValueError(f"hidden_sizes must be positive ints, got {tuple(hidden_sizes)!r}")
        layers: OrderedDict[str, nn.Module] = OrderedDict(flatten=nn.Flatten())
        for i, (fan_in, fan_out) in enumerate(itertools.pairwise(sizes), start=1):
            layers[f"fc{i}"] = nn.Linear(fan_in, fan_out, bias=bias)
            if i < len(sizes) - 1:
                layers[f"relu{i}"] = nn.ReLU()
        super().__init__(layers)


@register_model("mlp", description="MLP with configurable hidden sizes (default 300-100)")
def mlp(
    *,
    num_classes: int,
    input_shape: tuple[int, ...],
    hidden_sizes: Sequence[int] = (300, 100),
    bias: bool = True,
) -> MLP:
    """An MLP over the flattened input; the default is LeNet-300-100."""
    return MLP(math.prod(input_shape), num_classes, tuple(hidden_sizes), bias)


@register_model("lenet300_100", description="LeNet-300-100: input-300-100-classes MLP (ReLU)")
def lenet300_100(*, num_classes: int, input_shape: tuple[int, ...]) -> MLP:
    """LeNet-300-100 (266,610 parameters for 784 inputs and 10 classes)."""
    return MLP(math.prod(input_shape), num_classes, (300, 100))


@register_model("mlp_cifar", description="Fantastic Weights' CIFAR-10 MLP: 3072-1024-512-classes")
def mlp_cifar(*, num_classes: int, input_shape: tuple[int, ...]) -> MLP:
    """The MLP of the Fantastic Weights DST study: input-1024-512-classes, ReLU, biases."""
    return MLP(math.prod(input_shape), num_classes, (1024, 512))
