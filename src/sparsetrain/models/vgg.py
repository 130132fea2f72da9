"""VGG-16 and VGG-19 with BatchNorm, CIFAR style.

References:
    Simonyan & Zisserman 2015, "Very Deep Convolutional Networks for Large-Scale Image
    Recognition", https://arxiv.org/abs/1409.1556.

As in the Fantastic Weights CIFAR-100 setting (Nowak et al. 2023): 3x3 convs without biases, each
followed by BatchNorm and ReLU, 2x2 max-pools between the first four blocks, then global average
pooling (for 32x32 inputs: average-pool 2 over the last 2x2 map) and one linear layer. The
fifth max-pool of the ImageNet VGG is dropped; the parameter count is the same. Initialisation as
:func:`~sparsetrain.models.resnet.kaiming_init`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from sparsetrain.models._registry import expect_rank, register_model
from sparsetrain.models.resnet import kaiming_init

# Output channels per conv; "M" is a 2x2 max-pool.
VGG_CONFIGS: dict[str, tuple[int | str, ...]] = {
    "vgg16": (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512),
    "vgg19": (
        *(64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M"),
        *(512, 512, 512, 512, "M", 512, 512, 512, 512),
    ),
}


class VGG(nn.Module):
    """VGG with BatchNorm: ``features`` (conv-BN-ReLU and max-pools), global avg-pool, ``fc``.

    Args:
        config: Output channels per conv layer, ``"M"`` for a 2x2 max-pool.
        in_channels: Input channels.
        num_classes: Output size.
    """

    def __init__(self, config: Sequence[int | str], in_channels: int, num_classes: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_channels
        for v in config:
            if v == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                out = int(v)
                layers += [
                    nn.Conv2d(channels, out, 3, padding=1, bias=False),
                    nn.BatchNorm2d(out),
                    nn.ReLU(inplace=True),
                ]
                channels = out
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(channels, num_classes)
        kaiming_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, num_classes)`` for images ``(B, C, H, W)``."""
        x = self.features(x)  # (B, 512, H / 16, W / 16)
        return self.fc(x.mean(dim=(2, 3)))


def _vgg(name: str, num_classes: int, input_shape: tuple[int, ...]) -> VGG:
    expect_rank(name, input_shape, 3, "(3, 32, 32)")
    if min(input_shape[1:]) < 16:
        raise ValueError(f"{name} needs images of at least 16x16, got {input_shape[1:]}")
    return VGG(VGG_CONFIGS[name], input_shape[0], num_classes)


@register_model(
    "vgg16", description="VGG-16 with BatchNorm, CIFAR style (avg-pool + fc)", channels_last=True
)
def vgg16(*, num_classes: int, input_shape: tuple[int, ...]) -> VGG:
    """VGG-16-BN (13 convs) for CIFAR-sized inputs (Fantastic Weights' CIFAR-100 model)."""
    return _vgg("vgg16", num_classes, input_shape)


@register_model(
    "vgg19", description="VGG-19 with BatchNorm, CIFAR style (avg-pool + fc)", channels_last=True
)
def vgg19(*, num_classes: int, input_shape: tuple[int, ...]) -> VGG:
    """VGG-19-BN (16 convs) for CIFAR-sized inputs."""
    return _vgg("vgg19", num_classes, input_shape)
